"""lm-evaluation-harness: the "textdiffusion" model run by lm-eval's own evaluator and CLI on tiny local tasks
(YAML + JSONL written here, offline), with its numbers checked against independent computations."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.core.errors import UserError
from textdiffusion.data.tokenizers import ByteTokenizer
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.processes import Autoregressive, MaskedDiffusion

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

lm_eval = pytest.importorskip("lm_eval")
from textdiffusion.eval.lm_eval import TextDiffusionLM  # noqa: E402  (registers "textdiffusion")

DOCS = [{"context": "to be or not to", "choices": ["be", "xq"], "label": 0},  # lm-eval puts " " before a choice
        {"context": "the night is", "choices": ["zzk", "dark"], "label": 1},
        {"context": "a", "choices": ["b", "c", "d"], "label": 2}]


def save_model(folder, causal: bool, greedy_byte: int | None = None):
    tok = ByteTokenizer()
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, seq_len=32, d_model=32, n_layers=1, n_heads=2,
                                    causal=causal))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    if greedy_byte is not None:  # every position predicts `greedy_byte` by a wide margin
        with torch.no_grad():
            model.norm.weight.zero_()
            model.norm.bias.zero_()
            model.norm.bias[0] = 1.0
            model.head.weight.zero_()
            model.head.weight[greedy_byte, 0] = 20.0
    process = (Autoregressive if causal else MaskedDiffusion)(vocab_size=tok.vocab_size, mask_id=tok.mask_id)
    Pipeline(model, process, tok, {}).save_pretrained(folder)
    return folder


def write_tasks(tmp_path):
    data = tmp_path / "tasks"
    data.mkdir()
    (data / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (data / "gen.jsonl").write_text(json.dumps({"context": "xy", "target": "aaaa"}) + "\n")
    (data / "text.jsonl").write_text(json.dumps({"text": "to be or not to be, that is the question. " * 2}) + "\n")
    common = "dataset_path: json\ntest_split: test\n"
    (data / "td_mc.yaml").write_text(
        f"task: td_mc\n{common}dataset_kwargs:\n  data_files:\n    test: {data / 'mc.jsonl'}\n"
        "output_type: multiple_choice\ndoc_to_text: '{{context}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{label}}'\nmetric_list:\n  - metric: acc\n")
    (data / "td_gen.yaml").write_text(
        f"task: td_gen\n{common}dataset_kwargs:\n  data_files:\n    test: {data / 'gen.jsonl'}\n"
        "output_type: generate_until\ndoc_to_text: '{{context}}'\ndoc_to_target: '{{target}}'\n"
        "generation_kwargs:\n  until: ['aaaaa']\n  max_gen_toks: 6\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")
    (data / "td_roll.yaml").write_text(
        f"task: td_roll\n{common}dataset_kwargs:\n  data_files:\n    test: {data / 'text.jsonl'}\n"
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n")
    return data


def exact_ar_loglik(pipe: Pipeline, context: list[int], continuation: list[int]) -> float:
    """log p(continuation | context) of our causal model written out: it reads [START]=[MASK] then the tokens,
    and never predicts START; the log-softmax of each next token, summed (no textdiffusion scoring code)."""
    ids = (context + continuation)[-pipe.seq_len:]
    n_ctx = len(ids) - len(continuation)
    start = pipe.tokenizer.mask_id
    with torch.no_grad():
        logits = pipe.model(torch.tensor([start] + ids[:-1])[None]).double()[0]
    logits[:, start] = float("-inf")
    logp = torch.log_softmax(logits, -1)
    return sum(float(logp[i, ids[i]]) for i in range(n_ctx, len(ids)))


def test_evaluator_on_a_local_task_matches_exact_ar_likelihoods(tmp_path):
    from lm_eval.tasks import TaskManager

    folder = save_model(tmp_path / "ar", causal=True)
    tasks = write_tasks(tmp_path)
    out = lm_eval.simple_evaluate(model="textdiffusion", model_args=f"path={folder},device=cpu",
                                  tasks=["td_mc", "td_roll"], task_manager=TaskManager(include_path=str(tasks)),
                                  log_samples=True)
    pipe = Pipeline.from_pretrained(folder, device="cpu")
    expected = []
    for doc, sample in zip(DOCS, sorted(out["samples"]["td_mc"], key=lambda s: s["doc_id"]), strict=True):
        enc = pipe.tokenizer.encode
        exact = [exact_ar_loglik(pipe, enc(doc["context"]), enc(" " + c)) for c in doc["choices"]]
        got = [r[0][0] for r in sample["resps"]]
        assert got == pytest.approx(exact, abs=1e-4)
        expected.append(float(max(range(len(exact)), key=exact.__getitem__) == doc["label"]))
    assert out["results"]["td_mc"]["acc,none"] == pytest.approx(sum(expected) / len(expected))
    # rolling: lm-eval's disjoint windows of 32 bytes; for AR their sum is the exact log-likelihood of the text
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    text = json.loads((tasks / "text.jsonl").read_text())["text"]
    windows = get_rolling_token_windows(pipe.tokenizer.encode(text), pipe.tokenizer.eos_id, 32, 1)
    total = sum(exact_ar_loglik(pipe, *make_disjoint_window(w)) for w in windows)
    roll = out["samples"]["td_roll"][0]["resps"][0][0]
    assert roll == pytest.approx(total, abs=1e-3)
    assert out["results"]["td_roll"]["word_perplexity,none"] == pytest.approx(
        math.exp(-total / len(re.split(r"\s+", text))))  # lm-eval's word count


def test_masked_loglikelihood_is_the_conditional_bound(tmp_path):
    folder = save_model(tmp_path / "mdlm", causal=False)
    lm = TextDiffusionLM(path=str(folder), t_samples=8, seed=3, device="cpu")
    ctx, cont = lm._encode_pair("to be or not to ", "be")
    assert cont == list(b" be")  # the context's trailing space moves to the continuation
    value, greedy = lm.score_ids(ctx, cont, seed=3)
    ids = torch.tensor(ctx + cont)[None].repeat(8, 1)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, len(ctx):] = True
    bound = lm.pipe.likelihood(ids, t_samples=1, seed=3, batch_size=8, loss_mask=mask)
    assert value == pytest.approx(-bound.nats_per_token * 3) and isinstance(greedy, bool)
    # the bound only ever sees the context clean: changing a context token changes the score, not the count
    other, _ = lm.score_ids([ctx[0] ^ 1] + ctx[1:], cont, seed=3)
    assert other != value and value < 0
    with pytest.raises(UserError, match="does not fit"):
        lm.score_ids(ctx, [65] * 40, seed=0)
    # mask_tail: the rest of the 32-token window is [MASK] (unscored, never revealed)
    tailed = TextDiffusionLM(path=str(folder), t_samples=8, seed=3, device="cpu", mask_tail=True)
    padded = torch.tensor(ctx + cont + [tailed.tok.mask_id] * (32 - len(ctx) - 3))[None].repeat(8, 1)
    scored = torch.zeros_like(padded, dtype=torch.bool)
    scored[:, len(ctx):len(ctx) + 3] = True
    bound = lm.pipe.likelihood(padded, t_samples=1, seed=3, batch_size=8, loss_mask=scored)
    assert tailed.score_ids(ctx, cont, seed=3)[0] == pytest.approx(-bound.nats_per_token * 3)


def test_generate_until_honours_stops_and_max_gen_toks(tmp_path):
    folder = save_model(tmp_path / "greedy", causal=False, greedy_byte=ord("a"))
    lm = TextDiffusionLM(path=str(folder), device="cpu", steps=8)
    assert lm._generate("xy", {"until": ["b"], "max_gen_toks": 5, "do_sample": False}, 0) == "aaaaa"
    assert lm._generate("xy", {"until": ["aaa"], "max_gen_toks": 5}, 0) == ""
    assert lm._generate("xy", {"until": "q", "max_gen_toks": 100, "temperature": 0.0}, 0) == "a" * 31
    # any sampler, options from model_args
    lm2 = TextDiffusionLM(path=str(folder), device="cpu", sampler="confidence", steps=4)
    assert lm2._generate("xy", {"until": [], "max_gen_toks": 4}, 0) == "aaaa"


def test_cli_runs_the_registered_model(tmp_path):
    folder = save_model(tmp_path / "greedy", causal=False, greedy_byte=ord("a"))
    tasks = write_tasks(tmp_path)
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "textdiffusion.eval.lm_eval", "--model", "textdiffusion",
         "--model_args", f"path={folder},steps=8", "--device", "cpu", "--tasks", "td_gen", "--include_path", str(tasks),
         "--output_path", str(tmp_path / "out"), "--log_samples"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    assert results["results"]["td_gen"]["exact_match,none"] == 0.0  # "aaaaaa" cut at the stop "aaaaa" -> ""
    sample = json.loads(next((tmp_path / "out").rglob("samples_td_gen_*.jsonl")).read_text().splitlines()[0])
    assert sample["resps"] == [[""]]


def test_registering_ours_keeps_lm_evals_own_models():
    """lm-eval loads its built-in models only into an empty registry: registering ours first must not hide them
    (a fresh interpreter, so no earlier import has loaded them)."""
    code = ("import textdiffusion.eval.lm_eval as ours\n"
            "from lm_eval.api.registry import get_model\n"
            "assert get_model('textdiffusion') is ours.TextDiffusionLM\n"
            "print(get_model('local-completions').__name__, get_model('hf').__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["LocalCompletionsAPI", "HFLM"]
