"""The autoregressive baseline: exact chain-rule likelihood, KV cache == recomputation, sampling law."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.core.errors import UserError
from textdiffusion.core.precision import resolve_precision
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.processes import Autoregressive, build_process
from textdiffusion.processes.autoregressive import shift_right
from textdiffusion.processes.likelihood import nelbo
from textdiffusion.samplers import ARConfig, ar_sample

V, MASK = 6, 5  # tokens 0..4 and [MASK] (the start token)


def tiny(causal: bool = True, seq_len: int = 8, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(vocab_size=V, seq_len=seq_len, d_model=32, n_layers=2, n_heads=2, causal=causal))
    with torch.no_grad():  # larger logits than the default init, so distributions are far from uniform
        model.head.weight.mul_(40)
    return model.eval()


@torch.no_grad()
def prefix_log_probs(model: Transformer, x0: torch.Tensor) -> torch.Tensor:
    """log p(x_l | x_<l) by running the model on each prefix alone: no future token can leak in."""
    inputs = shift_right(x0, MASK)
    out = []
    for l in range(x0.shape[1]):
        logits = model(inputs[:, : l + 1])[:, -1].double()
        logits[:, MASK] = float("-inf")
        out.append(torch.log_softmax(logits, -1).gather(-1, x0[:, l : l + 1])[:, 0])
    return torch.stack(out, 1)


@torch.no_grad()
def test_nll_is_the_chain_rule_over_prefixes():
    model, process = tiny(), Autoregressive(V, MASK)
    x0 = torch.randint(0, MASK, (3, 8))
    expected = -prefix_log_probs(model, x0).sum(1)
    got = process.nelbo_per_sequence(model, x0, process.sample_noise(x0))
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=0)
    # loss_mask: only the scored positions count, each still conditioned on everything before it
    mask = torch.zeros_like(x0, dtype=torch.bool)
    mask[:, 3:6] = True
    got = process.nelbo_per_sequence(model, x0, {}, mask)
    torch.testing.assert_close(got.double(), -prefix_log_probs(model, x0)[:, 3:6].sum(1), atol=1e-4, rtol=0)


def test_a_future_token_does_not_change_the_past():
    model, process = tiny(), Autoregressive(V, MASK)
    x0 = torch.randint(0, MASK, (1, 8))
    changed = x0.clone()
    changed[0, -1] = (x0[0, -1] + 1) % MASK
    a, b = process.log_probs(model, x0), process.log_probs(model, changed)
    torch.testing.assert_close(a[:, :-1], b[:, :-1])
    assert not torch.allclose(a[:, -1], b[:, -1])


def test_likelihood_of_an_exact_process_is_evaluated_once_and_flagged():
    model, process = tiny(), Autoregressive(V, MASK)
    chunks = torch.randint(0, MASK, (5, 8))
    res = nelbo(model, process, chunks, t_samples=7, batch_size=2)
    assert res.exact and res.t_samples == 1 and res.n_tokens == 40
    expected = -prefix_log_probs(model, chunks).sum() / 40
    assert res.nats_per_token == pytest.approx(float(expected), abs=1e-5)


def test_kv_cache_equals_full_forward_for_a_causal_model():
    model = tiny()
    ids = torch.randint(0, V, (2, 8))
    full = model(ids)
    cache = model.new_cache()
    parts = [model(ids[:, a:b], cache=cache) for a, b in [(0, 3), (3, 4), (4, 8)]]
    assert cache.length == 8
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_of_a_bidirectional_model_is_block_causal():
    """Cached blocks are attended to in full; new tokens see the cache and each other (BD3-LM's mask)."""
    model = tiny(causal=False)
    ids = torch.randint(0, V, (2, 8))
    blocks = torch.arange(8) // 4
    block_causal = blocks[:, None] >= blocks[None, :]
    full = model(ids, attn_mask=block_causal)
    cache = model.new_cache()
    first = model(ids[:, :4], cache=cache)
    peek = model(ids[:, 4:], cache=cache, commit=False)  # a block still being denoised is not stored
    assert cache.length == 4
    second = model(ids[:, 4:], cache=cache)
    torch.testing.assert_close(first, full[:, :4], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(peek, full[:, 4:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(second, full[:, 4:], atol=1e-5, rtol=1e-5)


def test_cache_refuses_to_run_past_the_model_length():
    model = tiny()
    cache = model.new_cache()
    model(torch.zeros(1, 6, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="longer than the model"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)


def sample(model, x, seed, **options):
    gen = torch.Generator().manual_seed(seed)
    return ar_sample(model, Autoregressive(V, MASK), x, ARConfig(**options), generator=gen)


def test_cached_and_uncached_sampling_draw_the_same_tokens():
    model = tiny()
    x = torch.full((6, 8), MASK)
    x[:, 0] = 2
    x[:, 5] = 4  # a fixed token inside the generated span: read, never replaced
    cached, plain = sample(model, x, 3), sample(model, x, 3, cache=False)
    assert torch.equal(cached.ids, plain.ids)
    assert (cached.ids[:, 0] == 2).all() and (cached.ids[:, 5] == 4).all()
    assert not (cached.ids == MASK).any()
    assert cached.nfe == plain.nfe == 6  # one pass per generated position


def test_greedy_follows_the_argmax_chain():
    model = tiny()
    out = sample(model, torch.full((1, 5), MASK), 0, temperature=0.0).ids
    inputs = shift_right(out, MASK)
    for l in range(5):
        logits = model(inputs[:, : l + 1])[0, -1]
        logits[MASK] = float("-inf")
        assert int(logits.argmax()) == int(out[0, l])


def test_samples_follow_the_model_joint_distribution():
    """Exact p(x0, x1, x2) by enumeration vs. the empirical law of 6000 samples."""
    model, process = tiny(seq_len=3, seed=1), Autoregressive(V, MASK)
    seqs = torch.tensor(list(itertools.product(range(MASK), repeat=3)))
    with torch.no_grad():
        p = (-process.nelbo_per_sequence(model, seqs, {})).double().exp()
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-4)
    n = 6000
    ids = sample(model, torch.full((n, 3), MASK), 7).ids
    codes = (ids * torch.tensor([MASK**2, MASK, 1])).sum(1)
    empirical = torch.bincount(codes, minlength=MASK**3).double() / n
    tv = 0.5 * (empirical - p).abs().sum()
    assert tv < 0.06, f"total variation {tv:.3f}"
    # the control: the same check rejects a different distribution (a sampler at temperature 2)
    hot = sample(model, torch.full((n, 3), MASK), 7, temperature=2.0).ids
    hot_codes = (hot * torch.tensor([MASK**2, MASK, 1])).sum(1)
    hot_emp = torch.bincount(hot_codes, minlength=MASK**3).double() / n
    assert 0.5 * (hot_emp - p).abs().sum() > 0.1


def test_a_trained_ar_run_loads_as_a_causal_pipeline(tmp_path, byte_tok):
    from textdiffusion.train.config import load_config
    from textdiffusion.train.trainer import train

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"to be or not to be, that is question {i}."}) + "\n"
                              for i in range(200)))
    cfg = load_config("tiny", [f"data.source={corpus}", "process.name=autoregressive", "train.steps=4",
                               f"run.out_dir={tmp_path / 'run'}", "run.progress=false", "run.sample_steps=4"])
    folder = train(cfg)
    stored = json.loads((folder / "config.json").read_text())
    assert stored["model"]["causal"] is True and stored["process"] == {"name": "autoregressive"}
    pipe = Pipeline.from_pretrained(folder, device="cpu")
    assert pipe.model.cfg.causal and pipe.process.default_sampler == "ar"
    out = pipe.generate(num_samples=2, length=20, prompt="to be", seed=0)
    assert all(t.startswith("to be") for t in out.texts) and out.nfe == 20 - len("to be")
    with pytest.raises(UserError, match="no option steps"):
        pipe.generate(steps=10)
    [res] = pipe.score("to be or not to be")
    assert res.exact and res.n_tokens == len("to be or not to be")
    fill = pipe.infill("to be [MASK]x3 not to be", seed=0)  # left context only: the AR infilling baseline
    assert fill.texts[0].startswith("to be ") and fill.texts[0].endswith(" not to be")


def test_process_options_are_checked_when_named():
    with pytest.raises(UserError, match="has no option schedule"):
        build_process("autoregressive", vocab_size=V, mask_id=MASK, required=("schedule",), schedule="cosine")
    process = build_process("autoregressive", vocab_size=V, mask_id=MASK, schedule="cosine")  # shared default
    assert process.causal and process.config() == {}


def test_precision_names_are_checked():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("auto", cpu) in ("fp32", "bf16")
    with pytest.raises(UserError, match="precision must be one of"):
        resolve_precision("fp8", cpu)
