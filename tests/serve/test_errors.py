"""No user input makes a 500: options that name the pipeline's own arguments and a chat template that fails on the
messages are 400s. A real 500 is a whole response with Connection: close, and the client's next request works.
A request past its time limit is a 504 of type `timeout`, which the openai client retries."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.serve.engine import Limits

NAME = "tiny"  # the model name of serve/conftest.py's tiny_server


@pytest.fixture(scope="module")
def server(tiny_server):
    with tiny_server() as (url, app):
        yield url, app


@pytest.mark.parametrize("key", ["seed", "prompt", "length", "num_samples", "progress", "sampler", "on_step",
                                 "return_frames", "x", "text", "eos_id"])
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/infill"])
def test_options_that_name_pipeline_arguments_are_400(server, key, path):
    body = {"model": NAME, "max_tokens": 4, "steps": 2, "options": {key: 1}}
    if path == "/v1/infill":
        body = {"prompt": "a [MASK]x3 b", "steps": 2, "options": {key: 1}}
    with httpx.Client(timeout=30) as client:
        response = client.post(f"{server[0]}{path}", json=body)
        assert response.status_code == 400, response.text
        err = response.json()["error"]
        assert err["type"] == "invalid_request_error" and f"has no option {key}" in err["message"]
        assert client.get(f"{server[0]}/health").status_code == 200  # the same connection still works


def test_a_chat_template_that_fails_on_the_messages_is_400(tmp_path, tiny_pipe, tiny_server):
    """Jinja's sandbox raises OverflowError for range() past 100,000; a template error is a UserError."""
    pipe = tiny_pipe()
    folder = pipe.save_pretrained(tmp_path / "chat-model")
    template = ("{% for i in range(messages[0]['content'] | int) %}.{% endfor %}"
                "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>")
    (folder / "tokenizer_config.json").write_text('{"chat_template": ' + json.dumps(template) + "}")
    with tiny_server(pipe, model_dir=folder) as (url, _):
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
        for content in ("100000000000000000000", "99999999"):
            with pytest.raises(openai.BadRequestError) as err:
                c.chat.completions.create(model=NAME, messages=[{"role": "user", "content": content}], max_tokens=4)
            assert err.value.status_code == 400 and err.value.body["type"] == "invalid_request_error"
        out = c.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "3"}], max_tokens=4,
                                        extra_body={"steps": 2})
        assert out.usage.prompt_tokens == len("...<user>3\n<assistant>")


class Broken(torch.nn.Module):
    """A model whose forward fails: a bug on the server's side."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.cfg = inner, inner.cfg

    def forward(self, *args, **kwargs):
        raise RuntimeError("boom")


def test_a_500_is_a_whole_response_and_the_next_request_works(tiny_pipe, tiny_server):
    base = tiny_pipe()
    with tiny_server(Pipeline(Broken(base.model), base.process, base.tokenizer, {})) as (url, app):
        with httpx.Client(timeout=30) as client:  # keep-alive: one connection while the server allows it
            for _ in range(2):
                response = client.post(f"{url}/v1/completions", json={"model": NAME, "max_tokens": 4, "steps": 2})
                assert response.status_code == 500
                assert response.json()["error"] == {"message": "internal error: RuntimeError", "type": "server_error",
                                                    "param": None, "code": "internal_error"}
                assert response.headers["connection"] == "close"
                assert client.get(f"{url}/health").json()["status"] == "ok"  # a new connection, answered
        metrics = httpx.get(f"{url}/metrics").text
        assert 'textdiffusion_requests_total{route="/v1/completions",status="500"} 2.0' in metrics


def test_a_request_out_of_time_is_a_504_that_the_openai_client_retries(slow_pipe, tiny_server):
    pipe, slow = slow_pipe(delay=0.01)
    with tiny_server(pipe, limits=Limits(max_seconds=0.2, max_steps=1000)) as (url, app):
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=1, timeout=30)
        with pytest.raises(openai.InternalServerError) as err:
            c.completions.create(model=NAME, prompt="a", max_tokens=40, extra_body={"steps": 1000,
                                                                                    "options": {"cache": False}})
        assert err.value.status_code == 504
        assert err.value.body["type"] == "timeout" and err.value.body["code"] == "time_limit_exceeded"
        assert [r.status for r in app.state.engine.history] == ["timeout", "timeout"]  # tried, then retried
