"""Every request is bounded before its work starts (text per request, /v1/score's tokens x t_samples, the body's
bytes), /v1/score stops at the time limit and when its client leaves, and the event loop never tokenizes."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.serve.engine import Limits

NAME = "tiny"  # the model name of serve/conftest.py's tiny_server
TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_score_past_its_time_limit_is_stopped(slow_pipe, tiny_server):
    pipe, slow = slow_pipe(delay=0.01)
    with tiny_server(pipe, limits=Limits(max_seconds=0.2)) as (url, app):
        response = httpx.post(f"{url}/v1/score", json={"input": "To be, or not to be " * 5, "t_samples": 256},
                              timeout=30)
        assert response.status_code == 504, response.text
        assert response.json()["error"]["type"] == "timeout"
        record = app.state.engine.history[-1]
        assert record.status == "timeout" and slow.calls < 100  # not its 256 forward passes


def test_score_whose_client_leaves_is_cancelled(slow_pipe, tiny_server):
    pipe, slow = slow_pipe(delay=0.01)
    with tiny_server(pipe) as (url, app):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/score", json={"input": "To be, or not to be " * 5, "t_samples": 256}, timeout=0.3)
        wait_for(lambda: len(app.state.engine.history) == 1)
        assert app.state.engine.history[0].status == "cancelled"
        calls = slow.calls
        time.sleep(0.1)
        assert slow.calls == calls < 100  # no forward pass after the cancel


def test_work_past_the_limits_is_refused_before_it_starts(tmp_path, tiny_pipe, tiny_server):
    pipe = tiny_pipe()
    folder = pipe.save_pretrained(tmp_path / "chat-model")
    (folder / "tokenizer_config.json").write_text('{"chat_template": ' + json.dumps(TEMPLATE) + "}")
    limits = Limits(max_score_work=1000, max_input_chars=50, max_score_chars=1000)
    with tiny_server(pipe, model_dir=folder, limits=limits) as (url, app):
        def refused(path: str, body: dict, words: str) -> None:
            response = httpx.post(f"{url}{path}", json=body, timeout=30)
            assert response.status_code == 400, response.text
            assert words in response.json()["error"]["message"]

        refused("/v1/score", {"input": "x" * 100, "t_samples": 32}, "3,200 token-draws")
        refused("/v1/completions", {"model": NAME, "prompt": "x" * 51}, "limit of 50")
        refused("/v1/infill", {"prompt": "x" * 45 + " [MASK]x5"}, "limit of 50")
        messages = [{"role": "user", "content": "x" * 10}] * 6  # 60 characters in all
        refused("/v1/chat/completions", {"model": NAME, "messages": messages}, "messages holds 60 characters")
        rendered = [{"role": "user", "content": "x" * 10}] * 4  # 40, and 60 with the template's role markers
        refused("/v1/chat/completions", {"model": NAME, "messages": rendered}, "the chat template made a prompt")
        assert len(app.state.engine.history) == 1  # only the score request reached a worker (to count tokens)
        # a body far past what the limits admit is refused unread (256 messages of 1,000 characters)
        messages = [{"role": "user", "content": "x" * 1000}] * 256
        response = httpx.post(f"{url}/v1/chat/completions", json={"model": NAME, "messages": messages}, timeout=30)
        assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
        body = json.dumps({"model": NAME, "messages": messages}).encode()
        chunks = (body[i:i + 8192] for i in range(0, len(body), 8192))  # no Content-Length: counted as it comes
        response = httpx.post(f"{url}/v1/chat/completions", content=chunks, timeout=30,
                              headers={"content-type": "application/json"})
        assert response.status_code == 413 and response.headers["connection"] == "close"
        ok = httpx.post(f"{url}/v1/score", json={"input": "x" * 100, "t_samples": 8}, timeout=30)
        assert ok.status_code == 200 and ok.json()["data"][0]["tokens"] == 100


class SlowTokenizer:
    """The tiny model's tokenizer, taking `delay` seconds to encode a text that holds SLOW."""

    def __init__(self, inner, delay: float):
        self.inner, self.delay = inner, delay

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def encode(self, text: str, *args, **kwargs):
        if "SLOW" in text:
            time.sleep(self.delay)
        return self.inner.encode(text, *args, **kwargs)


def test_the_event_loop_never_tokenizes(tiny_pipe, tiny_server):
    base = tiny_pipe()
    pipe = Pipeline(base.model, base.process, SlowTokenizer(base.tokenizer, 2.0), {})
    with tiny_server(pipe) as (url, app):
        results = []
        slow = threading.Thread(target=lambda: results.append(httpx.post(
            f"{url}/v1/completions", json={"model": NAME, "prompt": "SLOW", "max_tokens": 4, "steps": 2}, timeout=30)))
        slow.start()
        time.sleep(0.3)  # the slow request is being tokenized now
        start = time.monotonic()
        assert httpx.get(f"{url}/health", timeout=30).status_code == 200
        assert time.monotonic() - start < 1.0  # answered while the prompt was tokenized
        slow.join(timeout=30)
        assert results[0].status_code == 200
