"""vLLM's extra sampling fields over raw HTTP: stop_token_ids, ignore_eos and include_stop_str_in_output change
where the text ends; top_k, min_p, min_tokens and skip_special_tokens=false are refused with a 400 naming them
(their neutral values pass); OpenAI's penalties and logit_bias likewise."""

from __future__ import annotations

import httpx
import pytest
import torch

from textdiffusion.api.pipeline import Pipeline

SCRIPT = "ab"  # then [EOS], then "cd!", then "x" to the end


class ScriptedModel(torch.nn.Module):
    """The tiny model with a bias so large that greedy sampling writes the script: "ab[EOS]cd!xxx..."."""

    def __init__(self, inner: torch.nn.Module, tokens: list[int]):
        super().__init__()
        self.inner, self.cfg = inner, inner.cfg
        bias = torch.zeros(inner.cfg.seq_len, inner.cfg.vocab_size)
        bias[torch.arange(len(tokens)), torch.tensor(tokens)] = 100.0
        self.register_buffer("bias", bias)

    def new_cache(self):
        return self.inner.new_cache()

    def forward(self, *args, **kwargs):
        logits = self.inner(*args, **kwargs)
        return logits + self.bias[: logits.shape[1]].to(logits.dtype)


@pytest.fixture(scope="module")
def server(tiny_server, tiny_pipe):
    base = tiny_pipe()
    tok = base.tokenizer
    tokens = tok.encode("ab") + [tok.eos_id] + tok.encode("cd!")
    tokens += tok.encode("x") * (base.seq_len - len(tokens))
    pipe = Pipeline(ScriptedModel(base.model, tokens), base.process, tok, {})
    with tiny_server(pipe) as (url, _):
        yield url


def complete(url: str, model: str, **fields) -> httpx.Response:
    body = {"model": model, "prompt": "", "max_tokens": 12, "seed": 0, "steps": 4, "temperature": 0, **fields}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=30)


def text_of(response: httpx.Response) -> tuple[str, str]:
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    return choice["text"], choice["finish_reason"]


def test_eos_ends_the_text_unless_ignore_eos(server, model_name):
    assert text_of(complete(server, model_name)) == ("ab", "stop")
    # 12 tokens written, the [EOS] among them dropped from the text
    assert text_of(complete(server, model_name, ignore_eos=True)) == ("abcd!" + "x" * 6, "length")


def test_stop_token_ids_end_the_text_at_the_first_one(server, model_name):
    bang = ord("!")
    assert text_of(complete(server, model_name, ignore_eos=True, stop_token_ids=[bang])) == ("abcd", "stop")
    assert text_of(complete(server, model_name, stop_token_ids=[bang])) == ("ab", "stop")  # [EOS] came first
    usage = complete(server, model_name, ignore_eos=True, stop_token_ids=[bang]).json()["usage"]
    assert usage["completion_tokens"] == 5  # a, b, [EOS] (dropped, but written), c, d


def test_include_stop_str_in_output(server, model_name):
    args = dict(ignore_eos=True, stop=["d!", "zz"])
    assert text_of(complete(server, model_name, **args)) == ("abc", "stop")
    assert text_of(complete(server, model_name, **args, include_stop_str_in_output=True)) == ("abcd!", "stop")
    streamed = []
    with httpx.stream("POST", f"{server}/v1/completions", timeout=30,
                      json={"model": model_name, "prompt": "", "max_tokens": 12, "seed": 0, "steps": 4,
                            "temperature": 0, "stream": True, "include_stop_str_in_output": True,
                            **args}) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                streamed.append(httpx.Response(200, content=line[6:]).json()["choices"][0]["text"])
    assert "".join(streamed) == "abcd!"


def test_neutral_values_pass(server, model_name):
    neutral = dict(top_k=-1, min_p=0.0, min_tokens=0, skip_special_tokens=True, stop_token_ids=[],
                   ignore_eos=False, include_stop_str_in_output=False, frequency_penalty=0.0, presence_penalty=0,
                   logit_bias={}, logprobs=None, n=1)
    assert text_of(complete(server, model_name, **neutral)) == ("ab", "stop")
    assert text_of(complete(server, model_name, top_k=0, min_p=None, min_tokens=None, logit_bias=None)) == (
        "ab", "stop")


@pytest.mark.parametrize("field, value, why", [
    ("top_k", 5, "top_p"), ("min_p", 0.1, "top_p"), ("min_tokens", 3, "at once"),
    ("skip_special_tokens", False, "never returned"), ("presence_penalty", 0.5, "not implemented"),
    ("frequency_penalty", -1.0, "not implemented"), ("logit_bias", {"5": 1.0}, "not implemented")])
def test_non_neutral_values_are_refused_by_name(server, model_name, field, value, why):
    for route, body in (("completions", {"prompt": "a"}), ("chat/completions",
                                                         {"messages": [{"role": "user", "content": "a"}]})):
        response = httpx.post(f"{server}/v1/{route}", json={"model": model_name, field: value, **body}, timeout=30)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == field and field in error["message"] and why in error["message"]


@pytest.mark.parametrize("ids", [[1000], [259]])  # past the byte vocabulary; [MASK]
def test_stop_token_ids_must_be_real_tokens(server, model_name, ids):
    response = complete(server, model_name, stop_token_ids=ids)
    message = response.json()["error"]["message"]
    assert response.status_code == 400 and "stop_token_ids holds" in message and "not [MASK] (259)" in message
