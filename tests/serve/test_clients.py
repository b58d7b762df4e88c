"""Third-party clients, unmodified, against the real server: LangChain's OpenAI and ChatOpenAI (which send
neutral penalties, n and logprobs with every request) and lm-eval's local-completions and
local-chat-completions models running a tiny offline generation task through lm-eval's own CLI."""

from __future__ import annotations

import json
import sys

import httpx
import pytest

TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")
DOCS = [{"context": "to be or", "target": " not"}, {"context": "the night", "target": " is"},
        {"context": "a", "target": "b"}]


@pytest.fixture(scope="module")
def server(tiny_server):
    with tiny_server(chat_template=TEMPLATE) as (url, _):
        yield url


def test_langchain_openai_completions(server, model_name):
    langchain_openai = pytest.importorskip("langchain_openai", reason="pip install langchain-openai")
    llm = langchain_openai.OpenAI(base_url=f"{server}/v1", api_key="x", model=model_name, max_tokens=8, seed=3,
                                  max_retries=0)
    text = llm.invoke("To be")
    assert isinstance(text, str) and len(text) <= 8  # bytes: a stray one decodes to U+FFFD


def test_langchain_chat_openai(server, model_name):
    langchain_openai = pytest.importorskip("langchain_openai", reason="pip install langchain-openai")
    chat = langchain_openai.ChatOpenAI(base_url=f"{server}/v1", api_key="x", model=model_name, max_tokens=6,
                                       seed=3, max_retries=0)
    reply = chat.invoke("hello")
    assert isinstance(reply.content, str) and len(reply.content) <= 6
    assert reply.response_metadata["finish_reason"] in ("stop", "length")


def test_langchain_non_neutral_penalty_is_a_clear_error(server, model_name):
    langchain_openai = pytest.importorskip("langchain_openai", reason="pip install langchain-openai")
    import openai

    llm = langchain_openai.OpenAI(base_url=f"{server}/v1", api_key="x", model=model_name, max_tokens=8,
                                  presence_penalty=0.5, max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        llm.invoke("To be")
    assert err.value.status_code == 400 and err.value.param == "presence_penalty"
    assert "presence_penalty=0.5 is not supported" in err.value.message


def write_task(tmp_path) -> str:
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (folder / "td_serve_gen.yaml").write_text(
        f"task: td_serve_gen\ndataset_path: json\ntest_split: test\n"
        f"dataset_kwargs:\n  data_files:\n    test: {folder / 'docs.jsonl'}\n"
        "output_type: generate_until\ndoc_to_text: '{{context}}'\ndoc_to_target: '{{target}}'\n"
        "generation_kwargs:\n  until: ['\\n\\n']\n  max_gen_toks: 6\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")
    return str(folder)


def replies(samples: list[dict]) -> dict[str, str]:
    return {s["doc"]["context"]: s["resps"][0][0] for s in samples}


def expected(url: str, model_name: str, route: str) -> dict[str, str]:
    """What the server answers to the requests lm-eval makes (greedy: the same text every time)."""
    out = {}
    for doc in DOCS:
        body = {"model": model_name, "max_tokens": 6, "temperature": 0, "stop": ["\n\n"], "seed": 1234}
        if route == "completions":
            body["prompt"] = [doc["context"]]
        else:
            body["messages"] = [{"role": "user", "content": doc["context"]}]
        choice = httpx.post(f"{url}/v1/{route}", json=body, timeout=30).json()["choices"][0]
        out[doc["context"]] = choice["text"] if route == "completions" else choice["message"]["content"]
    return out


def lm_eval_ready(monkeypatch) -> None:
    pytest.importorskip("lm_eval", reason="pip install lm-eval")
    for module in ("requests", "aiohttp", "tenacity"):  # lm-eval's `api` extra
        pytest.importorskip(module, reason="lm-eval's api models need: pip install 'lm-eval[api]'")
    for name, value in {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": "x"}.items():
        monkeypatch.setenv(name, value)


def model_args(model_name: str, url: str) -> str:
    return f"model={model_name},base_url={url},tokenizer_backend=none,tokenized_requests=False,max_retries=1"


def test_lm_eval_cli_local_completions_writes_results(server, model_name, tmp_path, monkeypatch):
    """lm-eval's own CLI, as `lm-eval run ...` runs it, in this process (its imports take seconds; indexing
    its built-in tasks, which the CLI always does, takes most of this test's ~10 s)."""
    lm_eval_ready(monkeypatch)
    from lm_eval._cli import HarnessCLI

    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", [
        "lm-eval", "run", "--model", "local-completions", "--tasks", "td_serve_gen", "--include_path",
        write_task(tmp_path), "--output_path", str(out), "--log_samples",
        "--model_args", model_args(model_name, f"{server}/v1/completions")])
    cli = HarnessCLI()
    cli.execute(cli.parse_args())
    results = sorted(out.rglob("results_*.json"))
    assert results
    scores = json.loads(results[-1].read_text())["results"]["td_serve_gen"]
    assert 0.0 <= scores["exact_match,none"] <= 1.0
    samples = [json.loads(line) for path in out.rglob("samples_td_serve_gen_*.jsonl")
               for line in path.read_text().splitlines()]
    assert replies(samples) == expected(server, model_name, "completions")


def test_lm_eval_local_chat_completions(server, model_name, tmp_path, monkeypatch):
    """The chat model through lm-eval's evaluator (only our task indexed: the CLI test covers the CLI)."""
    lm_eval_ready(monkeypatch)
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks = TaskManager(include_path=write_task(tmp_path), include_defaults=False)
    out = lm_eval.simple_evaluate(model="local-chat-completions",
                                  model_args=model_args(model_name, f"{server}/v1/chat/completions"),
                                  tasks=["td_serve_gen"], task_manager=tasks, apply_chat_template=True,
                                  log_samples=True)
    assert 0.0 <= out["results"]["td_serve_gen"]["exact_match,none"] <= 1.0
    assert replies(out["samples"]["td_serve_gen"]) == expected(server, model_name, "chat/completions")
