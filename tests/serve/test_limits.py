"""Bad input gets a clear 4xx in OpenAI's error JSON; a full queue gets 429 with Retry-After; a client that
goes away, or a request past its time limit, stops its sampler between two steps."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from textdiffusion.serve.engine import Limits

NAME = "tiny"  # the model name of serve/conftest.py's tiny_server (its `model_name` fixture)


@pytest.fixture(scope="module")
def server(tiny_server):
    with tiny_server(limits=Limits(max_steps=64, max_n=4, max_length=200, max_score_chars=100)) as (url, app):
        yield url, app


def error(url: str, path: str, body, status: int = 400) -> dict:
    response = httpx.post(f"{url}{path}", timeout=30, **({"content": body} if isinstance(body, str) else
                                                          {"json": body}))
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()["error"]


@pytest.mark.parametrize("body, param, words", [
    ({"model": NAME, "temperature": -1}, "temperature", "greater than or equal to 0"),
    ({"model": NAME, "top_p": 0}, "top_p", "greater than 0"),
    ({"model": NAME, "steps": 0}, "steps", "greater than or equal to 1"),
    ({"model": NAME, "n": "two"}, "n", "integer"),
    ({"model": NAME, "stream_mode": "fast"}, "stream_mode", "'append' or 'denoise'"),
    ({"model": NAME, "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ({"model": NAME, "options": {"Bad-Key": 1}}, "options.Bad-Key.[key]", "pattern"),
    ({"model": NAME, "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"model": NAME, "model_path": "/etc/passwd"}, "model_path", "unknown field"),
    ({"model": NAME, "logprobs": 3}, "logprobs", "not supported"),
    ({"prompt": "hi"}, "model", "required"),
])
def test_bad_fields_name_the_field(server, body, param, words):
    err = error(server[0], "/v1/completions", body)
    assert err["param"] == param and words in err["message"] and err["type"] == "invalid_request_error"


@pytest.mark.parametrize("body, words", [
    ({"model": NAME, "steps": 65}, "limit of 64"),
    ({"model": NAME, "n": 5}, "limit of 4 samples"),
    ({"model": NAME, "max_tokens": 100}, "at most 48 fit"),
    ({"model": NAME, "sampler": "block"}, "block diffusion"),
    ({"model": NAME, "sampler": "nope"}, "unknown sampler"),
    ({"model": NAME, "options": {"bogus": 1}}, "has no option bogus"),
    ({"model": NAME, "options": {"bogus": 1}, "stream": True}, "has no option bogus"),  # 400 before streaming
    ({"model": NAME, "sampler": "confidence", "options": {"remasking": "sideways"}}, "remasking"),
])
def test_limits_and_sampler_complaints_are_400(server, body, words):
    assert words in error(server[0], "/v1/completions", body)["message"]


def test_other_errors(server):
    url = server[0]
    assert error(url, "/v1/completions", "{not json")["message"].startswith("body")
    err = error(url, "/v1/completions", {"model": "../../etc/passwd"}, 404)
    assert err["code"] == "model_not_found" and NAME in err["message"]  # a model is a name, never a path
    assert "no gap" in error(url, "/v1/infill", {"prompt": "no gaps here"})["message"]
    assert "malformed gap" in error(url, "/v1/infill", {"prompt": "a [MASK]x b"})["message"]
    assert "more than the model's 48" in error(url, "/v1/infill", {"prompt": "a [MASK]x60"})["message"]
    assert "limit of 100 per request" in error(url, "/v1/score", {"input": ["a" * 60, "b" * 41]})["message"]
    assert "no route" in error(url, "/v1/nothing", {}, 404)["message"]
    assert httpx.get(f"{url}/v1/completions").status_code == 405


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_full_queue_is_429_with_retry_after(slow_pipe, tiny_server):
    pipe, slow = slow_pipe()
    slow.gate.clear()  # every forward waits: requests stay running or queued
    with tiny_server(pipe, limits=Limits(max_running=1, max_queue=1)) as (url, app):
        engine = app.state.engine
        body = {"model": NAME, "max_tokens": 8, "steps": 4, "seed": 0}
        results = []
        threads = [threading.Thread(target=lambda: results.append(httpx.post(f"{url}/v1/completions", json=body,
                                                                             timeout=30))) for _ in range(2)]
        for thread in threads:
            thread.start()
            time.sleep(0.05)
        wait_for(lambda: engine.running == 1 and engine.queued == 1)
        refused = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "queue_full"
        slow.gate.set()
        for thread in threads:
            thread.join(timeout=30)
        assert [r.status_code for r in results] == [200, 200]
        assert "textdiffusion_rejected_total 1.0" in httpx.get(f"{url}/metrics").text


def test_client_disconnect_stops_the_sampler(slow_pipe, tiny_server):
    pipe, slow = slow_pipe(delay=0.01)
    with tiny_server(pipe) as (url, app):
        body = {"model": NAME, "max_tokens": 40, "steps": 1000, "seed": 0, "stream": True, "stream_mode": "denoise",
                "options": {"cache": False}}
        app.state.engine.limits.max_steps = 1000
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as response:
            frames = []
            for line in response.iter_lines():
                if line.startswith("data:"):
                    frames.append(line)
                if len(frames) == 3:
                    break  # leave after three frames: the connection closes
        wait_for(lambda: len(app.state.engine.history) == 1)
        record = app.state.engine.history[0]
        assert record.status == "cancelled"
        assert 3 <= record.frames < 200  # stopped early, not after its 1000 steps
        calls = slow.calls
        time.sleep(0.1)
        assert slow.calls == calls  # no forward pass after the cancel


def test_plain_request_past_its_time_limit_is_stopped(slow_pipe, tiny_server):
    pipe, slow = slow_pipe(delay=0.01)
    with tiny_server(pipe, limits=Limits(max_seconds=0.2)) as (url, app):
        app.state.engine.limits.max_steps = 1000
        err = error(url, "/v1/completions", {"model": NAME, "max_tokens": 40, "steps": 1000,
                                             "options": {"cache": False}}, status=504)
        assert err["code"] == "time_limit_exceeded" and err["type"] == "timeout"
        record = app.state.engine.history[-1]
        assert record.status == "timeout" and record.frames < 200


def test_plain_request_whose_client_gives_up_is_cancelled(slow_pipe, tiny_server):
    pipe, slow = slow_pipe(delay=0.01)
    with tiny_server(pipe) as (url, app):
        app.state.engine.limits.max_steps = 1000
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
            httpx.post(f"{url}/v1/completions", timeout=0.3,
                       json={"model": NAME, "max_tokens": 40, "steps": 1000, "options": {"cache": False}})
        wait_for(lambda: len(app.state.engine.history) == 1)
        record = app.state.engine.history[0]
        assert record.status == "cancelled" and record.frames < 200
