"""The official openai client, unchanged, against the server: completions plain and streamed, chat with and
without a chat template, models, stop sequences; infill and score over raw HTTP."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture(scope="module")
def server(tiny_server):
    with tiny_server() as (url, app):
        yield url, app


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)


def test_models_lists_the_served_model(server, model_name):
    models = client(server[0]).models.list().data
    assert [m.id for m in models] == [model_name]
    assert "ancestral" in models[0].model_extra["samplers"]


def test_completion_plain_and_streamed_agree(server, model_name):
    c = client(server[0])
    args = dict(model=model_name, prompt="To be", max_tokens=12, seed=7,
                extra_body={"steps": 6, "sampler": "ancestral"})
    plain = c.completions.create(**args)
    assert len(plain.choices) == 1 and plain.choices[0].finish_reason == "length"
    assert plain.usage.prompt_tokens == 5 and plain.usage.completion_tokens == 12
    assert plain.model_extra["diffusion"]["seed"] == 7
    again = c.completions.create(**args)
    assert again.choices[0].text == plain.choices[0].text  # the seed fixes the sample

    chunks = list(c.completions.create(**args, stream=True))
    streamed = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert streamed == plain.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_denoise_stream_shows_every_step(server, model_name):
    c = client(server[0])
    steps = 5
    chunks = list(c.completions.create(model=model_name, prompt="Hi", max_tokens=10, seed=3, stream=True,
                                       extra_body={"steps": steps, "stream_mode": "denoise"}))
    frames = [ch.choices[0].model_extra["diffusion"] for ch in chunks if ch.choices and ch.choices[0].model_extra.get(
        "diffusion")]
    assert [f["step"] for f in frames] == list(range(steps + 1))  # the all-[MASK] start, then each step
    assert frames[0]["tokens"] == ["▒"] * 10 and frames[-1]["t"] == 0.0
    assert "▒" not in frames[-1]["tokens"]
    revealed = set()
    for f in frames[1:]:
        revealed |= set(f["changed"])
    assert revealed == set(range(10))  # the changed positions cover the whole canvas
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    plain = c.completions.create(model=model_name, prompt="Hi", max_tokens=10, seed=3, extra_body={"steps": steps})
    assert text == plain.choices[0].text  # denoise mode streams the same final text as append mode


def test_append_stream_sends_only_final_text(server, model_name):
    """Every delta of an append stream is a prefix of the final text: nothing sent is taken back."""
    deltas = []
    with httpx.stream("POST", f"{server[0]}/v1/completions", timeout=30,
                      json={"model": model_name, "prompt": "", "max_tokens": 20, "seed": 1, "steps": 20,
                            "stream": True, "stream_mode": "append"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                deltas.append(json.loads(line[6:])["choices"][0]["text"])
    plain = httpx.post(f"{server[0]}/v1/completions", timeout=30,
                       json={"model": model_name, "max_tokens": 20, "seed": 1, "steps": 20}).json()
    assert "".join(deltas) == plain["choices"][0]["text"]
    assert sum(1 for d in deltas if d) > 1  # text arrived before the end, as its prefix was revealed


def test_n_and_stop_sequences(server, model_name):
    c = client(server[0])
    out = c.completions.create(model=model_name, prompt="a", max_tokens=30, n=3, seed=5, extra_body={"steps": 8})
    assert [ch.index for ch in out.choices] == [0, 1, 2]
    text = out.choices[0].text
    stop = text[4:6]  # a stop sequence that surely occurs
    assert stop
    cut = c.completions.create(model=model_name, prompt="a", max_tokens=30, n=3, seed=5, stop=[stop],
                               extra_body={"steps": 8})
    assert cut.choices[0].text == text[: text.find(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = list(c.completions.create(model=model_name, prompt="a", max_tokens=30, n=3, seed=5, stop=stop,
                                         stream=True, extra_body={"steps": 8}))
    first = "".join(ch.text for chunk in streamed for ch in chunk.choices if ch.index == 0)
    assert first == cut.choices[0].text


def test_chat_without_template_is_a_clear_400(server, model_name):
    with pytest.raises(openai.BadRequestError) as err:
        client(server[0]).chat.completions.create(model=model_name, messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 400
    assert err.value.body["code"] == "no_chat_template" and "/v1/completions" in err.value.body["message"]


def test_chat_with_a_template(tmp_path, model_name, tiny_pipe, tiny_server):
    pipe = tiny_pipe()
    folder = pipe.save_pretrained(tmp_path / "chat-model")
    (folder / "tokenizer_config.json").write_text('{"chat_template": ' + json.dumps(TEMPLATE) + "}")
    with tiny_server(pipe, model_dir=folder) as (url, _):
        c = client(url)
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
        out = c.chat.completions.create(model=model_name, messages=messages, max_tokens=8, seed=2,
                                        extra_body={"steps": 4})
        assert out.choices[0].message.role == "assistant" and len(out.choices[0].message.content) > 0
        prompt = "<system>Be brief.\n<user>hi\n<assistant>"
        assert out.usage.prompt_tokens == len(prompt.encode())  # the template's rendering was the prompt
        plain = c.completions.create(model=model_name, prompt=prompt, max_tokens=8, seed=2, extra_body={"steps": 4})
        assert out.choices[0].message.content == plain.choices[0].text
        chunks = list(c.chat.completions.create(model=model_name, messages=messages, max_tokens=8, seed=2, stream=True,
                                                extra_body={"steps": 4}))
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == plain.choices[0].text


def test_infill_and_score_over_http(server):
    url = server[0]
    body = {"prompt": "The [MASK]x5 of the night", "seed": 0, "steps": 5, "n": 2}
    out = httpx.post(f"{url}/v1/infill", json=body, timeout=30).json()
    assert len(out["choices"]) == 2
    for choice in out["choices"]:
        fill = choice["fills"][0]
        assert choice["text"] == f"The {fill} of the night"
    scored = httpx.post(f"{url}/v1/score", json={"input": ["To be, or not to be", "abc"], "t_samples": 2},
                        timeout=30).json()
    assert [d["index"] for d in scored["data"]] == [0, 1]
    assert scored["data"][0]["tokens"] == 19 and scored["data"][0]["nats_per_token"] > 0


def test_health_and_prometheus_metrics(server, model_name):
    url = server[0]
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    httpx.post(f"{url}/v1/completions", json={"model": model_name, "max_tokens": 5, "steps": 3, "seed": 0}, timeout=30)
    response = httpx.get(f"{url}/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    lines = {line.split()[0]: float(line.split()[1]) for line in response.text.splitlines()
             if line and not line.startswith("#")}
    assert lines['textdiffusion_requests_total{route="/v1/completions",status="200"}'] >= 1
    assert lines['textdiffusion_jobs_total{status="done"}'] >= 1
    assert lines["textdiffusion_forward_passes_total"] >= 1 and lines["textdiffusion_generated_tokens_total"] >= 5
    assert "textdiffusion_running" in lines and "textdiffusion_queued" in lines


def test_completion_tokens_count_the_text_returned(server, model_name):
    """A stop sequence that ends the text early also ends what usage counts."""
    c = client(server[0])
    full = c.completions.create(model=model_name, prompt="a", max_tokens=30, n=3, seed=5, extra_body={"steps": 8})
    text = full.choices[0].text
    assert full.usage.completion_tokens == 90 and full.usage.total_tokens == 91
    cut = c.completions.create(model=model_name, prompt="a", max_tokens=30, n=3, seed=5, stop=[text[4:6]],
                               extra_body={"steps": 8})
    texts = [choice.text for choice in cut.choices]
    # byte tokens: a character takes at least one, and no more than its UTF-8 bytes (U+FFFD stands for one)
    assert sum(map(len, texts)) <= cut.usage.completion_tokens <= sum(len(t.encode()) for t in texts)
    assert cut.choices[0].finish_reason == "stop" and cut.usage.completion_tokens < 90
    assert cut.usage.total_tokens == cut.usage.prompt_tokens + cut.usage.completion_tokens


def test_models_retrieve(server, model_name):
    c = client(server[0])
    model = c.models.retrieve(model_name)
    assert model.id == model_name and model.object == "model" and "ancestral" in model.model_extra["samplers"]
    with pytest.raises(openai.NotFoundError) as err:
        c.models.retrieve("gpt-4o")
    assert err.value.body["code"] == "model_not_found"


def test_chat_roles_agree_with_the_schema(tmp_path, model_name, tiny_pipe, tiny_server):
    """developer is read as system; tool is refused by the schema, naming the field."""
    pipe = tiny_pipe()
    folder = pipe.save_pretrained(tmp_path / "chat-model")
    (folder / "tokenizer_config.json").write_text('{"chat_template": ' + json.dumps(TEMPLATE) + "}")
    with tiny_server(pipe, model_dir=folder) as (url, _):
        c = client(url)
        args = dict(model=model_name, max_tokens=6, seed=1, extra_body={"steps": 3})
        developer = c.chat.completions.create(messages=[{"role": "developer", "content": "Be brief."},
                                                        {"role": "user", "content": "hi"}], **args)
        system = c.chat.completions.create(messages=[{"role": "system", "content": "Be brief."},
                                                     {"role": "user", "content": "hi"}], **args)
        assert developer.choices[0].message.content == system.choices[0].message.content
        assert developer.usage.prompt_tokens == len("<system>Be brief.\n<user>hi\n<assistant>")
        with pytest.raises(openai.BadRequestError) as err:
            c.chat.completions.create(messages=[{"role": "user", "content": "hi"},
                                                {"role": "tool", "content": "42", "tool_call_id": "x"}], **args)
        assert err.value.body["param"].startswith("messages.1")


def test_openapi_documents_the_statuses_sent(server):
    schema = httpx.get(f"{server[0]}/openapi.json").json()
    assert "422" not in json.dumps(schema["paths"]) and "HTTPValidationError" not in json.dumps(schema)
    for path in ("/v1/completions", "/v1/chat/completions", "/v1/infill", "/v1/score"):
        responses = schema["paths"][path]["post"]["responses"]
        assert {"200", "400", "404", "429", "504"} <= set(responses), path
        error = responses["400"]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/ErrorResponse"}
    assert set(schema["paths"]["/v1/models/{model}"]["get"]["responses"]) == {"200", "404"}
