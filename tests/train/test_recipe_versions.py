"""Versioned training recipes (train/recipes.py, issue 17.2): the cross-entropy term in BD3-LM and SEDD-absorb,
checked against values computed from the model's table alone, and the recipe version that keeps old runs'
objective on resume.

Toy: `masked_exact.TableDenoiser` (a random table of logits for every input) over 3 tokens, [MASK] = 3.
- BD3-LM with block size 1 and every token masked: each token sees the clean tokens before it, so the flat term
  is exactly the AR negative log-likelihood read from the table; at t = 1 the log-linear bound weight is 1.
- BD3-LM with one block (B = L) is MDLM, for every recipe.
- SEDD-absorb: g - log N estimates log p_0(y | unmasked), so the term is -log softmax(table row)_{x0} over the
  3 real tokens at the masked positions.
"""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from textdiffusion.bench.runs import ensure_trained
from textdiffusion.core.errors import UserError
from textdiffusion.processes.base import build_process
from textdiffusion.processes.block import BlockDiffusion
from textdiffusion.processes.masked import MaskedDiffusion
from textdiffusion.processes.sedd import SEDD
from textdiffusion.train.config import load_config, load_run_config, upgrade_saved_config
from textdiffusion.train.recipes import CE_LAMBDA, LATEST

N_VALUES = 3  # tiny_exact.N_VALUES (tests/conftest.py)
MASK = N_VALUES
VOCAB = N_VALUES + 1
LENGTH = 3
SEQS = torch.tensor(list(itertools.product(range(N_VALUES), repeat=LENGTH)))  # [27, 3], as analytic.all_sequences
LAMBDA = 0.37


@pytest.fixture(scope="module")
def table(masked_exact) -> torch.nn.Module:
    return masked_exact.TableDenoiser.random(N_VALUES, LENGTH, seed=11)


def _ar_nll(table: torch.nn.Module, seq_index) -> torch.Tensor:
    """sum_l -log p(x_l | x_<l) with x_l and everything after it [MASK], from the table, [27] (seq_index:
    `analytic.seq_index`)."""
    out = torch.zeros(len(SEQS), dtype=torch.float64)
    for pos in range(LENGTH):
        view = SEQS.clone()
        view[:, pos:] = MASK
        logp = torch.log_softmax(table.table[seq_index(view, N_VALUES + 1), pos, :N_VALUES], -1)
        out -= logp.gather(1, SEQS[:, pos:pos + 1])[:, 0]
    return out


@pytest.mark.parametrize("weighting, lam, factor", [("elbo", 0.0, 1.0), ("elbo", LAMBDA, 1 + LAMBDA),
                                                    ("flat", 0.0, 1.0), ("flat", LAMBDA, 1 + LAMBDA)])
def test_block_size_one_fully_masked_is_the_ar_nll_times_the_recipe(table, weighting, lam, factor, analytic,
                                                                    masked_exact):
    proc = BlockDiffusion(VOCAB, MASK, block_size=1, loss_weighting=weighting, ce_lambda=lam)
    noise = {"t": torch.ones(len(SEQS), LENGTH, dtype=torch.float64),  # t = 1: weight 1, every token masked
             "u": torch.ones(len(SEQS), LENGTH, dtype=torch.float64)}
    model = masked_exact.BlockTable(table, block_size=1)
    bound, flat = proc.bound_and_flat(model, SEQS, noise)
    ar = _ar_nll(table, analytic.seq_index)
    torch.testing.assert_close(flat, ar, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bound, ar, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        got = proc.loss(model, SEQS, noise).total
    torch.testing.assert_close(got, factor * ar.sum(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("weighting, lam", [("elbo", 0.0), ("elbo", LAMBDA), ("flat", LAMBDA), ("elbo", CE_LAMBDA)])
def test_one_block_is_mdlm_for_every_recipe(table, weighting, lam, masked_exact):
    gen = torch.Generator().manual_seed(4)
    x0 = SEQS[torch.randint(0, len(SEQS), (64,), generator=gen)]
    block = BlockDiffusion(VOCAB, MASK, block_size=LENGTH, loss_weighting=weighting, ce_lambda=lam)
    masked = MaskedDiffusion(VOCAB, MASK, loss_weighting=weighting, ce_lambda=lam)
    noise = block.sample_noise(x0, gen)  # t [64, 1]: one block
    loss_mask = torch.rand(x0.shape, generator=gen) < 0.8
    for mask in (None, loss_mask):
        with torch.no_grad():
            got = block.loss(masked_exact.BlockTable(table, LENGTH), x0, noise, mask)
            want = masked.loss(table, x0, {"t": noise["t"][:, 0], "u": noise["u"]}, mask)
        torch.testing.assert_close(got.total, want.total, rtol=1e-12, atol=1e-12)
        assert got.n_tokens == want.n_tokens


def test_block_recipe_leaves_the_bound_alone(table, masked_exact):
    gen = torch.Generator().manual_seed(5)
    x0 = SEQS[torch.randint(0, len(SEQS), (32,), generator=gen)]
    plain = BlockDiffusion(VOCAB, MASK, block_size=1)
    noise = plain.sample_noise(x0, gen)
    model = masked_exact.BlockTable(table, 1)
    want = plain.nelbo_per_sequence(model, x0, noise)
    assert torch.equal(plain.loss(model, x0, noise).total, want.sum())  # recipe 1: the bound, bit for bit
    recipe = BlockDiffusion(VOCAB, MASK, block_size=1, ce_lambda=CE_LAMBDA)
    assert torch.equal(recipe.nelbo_per_sequence(model, x0, noise), want)
    assert float(recipe.loss(model, x0, noise).total) > float(want.sum())
    again = build_process("block", vocab_size=VOCAB, mask_id=MASK, **recipe.config())
    assert again.ce_lambda == CE_LAMBDA and again.block_size == 1  # a saved model records the recipe


def _sedd_noise(pattern: torch.Tensor, t: float) -> dict[str, torch.Tensor]:
    """u = 1 masks a position (kept iff u < e^-sigmabar(t) < 1), u = 0 keeps it."""
    shape = pattern.shape
    return {"t": torch.full(shape[:1], t, dtype=torch.float64), "u": pattern.double(),
            "v": torch.zeros(shape, dtype=torch.float64)}


def test_sedd_absorb_term_is_the_implied_clean_token_cross_entropy(table, analytic):
    gen = torch.Generator().manual_seed(6)
    x0 = SEQS[torch.randint(0, len(SEQS), (40,), generator=gen)]
    pattern = torch.rand(x0.shape, generator=gen) < 0.6
    plain, recipe = SEDD(VOCAB, MASK), SEDD(VOCAB, MASK, ce_lambda=LAMBDA)
    noise = {**plain.sample_noise(x0, gen), **_sedd_noise(pattern, 0.4)}  # the bound's own x_{t_min} draws too
    with torch.no_grad():
        extra = recipe.loss(table, x0, noise).total - plain.loss(table, x0, noise).total
    xt = torch.where(pattern, torch.full_like(x0, MASK), x0)
    logp = torch.log_softmax(table.table[analytic.seq_index(xt, N_VALUES + 1)][..., :N_VALUES], -1)
    ce = -(logp.gather(-1, x0[..., None])[..., 0] * pattern).sum()
    assert float(ce) > 1.0
    torch.testing.assert_close(extra.double(), LAMBDA * ce, rtol=1e-10, atol=1e-10)
    assert torch.equal(recipe.nelbo_per_sequence(table, x0, noise), plain.nelbo_per_sequence(table, x0, noise))
    assert recipe.config()["ce_lambda"] == LAMBDA and "ce_lambda" not in plain.config()


def test_sedd_uniform_refuses_the_term():
    with pytest.raises(UserError, match="uniform graph's score implies none"):
        SEDD(VOCAB, MASK, graph="uniform", ce_lambda=1.0)
    with pytest.raises(UserError, match="ce_lambda must be a finite number >= 0"):
        SEDD(VOCAB, MASK, ce_lambda=-1.0)
    assert SEDD(VOCAB, MASK, ce_lambda="1e1").ce_lambda == 10.0  # YAML 1.1's string for 1e1


# ---------------------------------------------------------------------------------------------
# the recipe version


def _built(overrides: list[str]):
    cfg = load_config("tiny", overrides)
    return build_process(cfg.process.name, vocab_size=VOCAB, mask_id=MASK, required=tuple(cfg.process.extra),
                         **cfg.process.options())


@pytest.mark.parametrize("overrides, ce", [
    ([], CE_LAMBDA), (["process.name=block"], CE_LAMBDA), (["process.name=sedd"], CE_LAMBDA),
    (["process.recipe=1"], 0.0), (["process.recipe=1", "process.name=block"], 0.0),
    (["process.recipe=1", "process.name=sedd"], 0.0), (["process.ce_lambda=3"], 3.0),
    (["process.recipe=1", "process.ce_lambda=3"], 3.0), (["process.name=sedd", "process.graph=uniform"], 0.0),
    (["process.name=d3pm", "process.transition=absorbing"], None), (["process.name=masked-spindle"], 0.0),
])
def test_the_latest_recipe_reaches_the_absorbing_families_only(overrides, ce):
    assert LATEST == 2 and load_config("tiny").process.recipe == LATEST
    proc = _built(overrides)
    assert getattr(proc, "ce_lambda", None) == ce


def test_d3pm_keeps_its_own_hybrid_term():
    assert _built(["process.name=d3pm", "process.transition=absorbing"]).hybrid_lambda == \
        _built(["process.name=d3pm", "process.transition=absorbing", "process.recipe=1"]).hybrid_lambda == 0.01


def test_unknown_recipe_is_refused():
    with pytest.raises(UserError, match=r"process.recipe must be one of 1, 2"):
        load_config("tiny", ["process.recipe=3"])


def _write_checkpoint(out_dir, train_config: dict, trained_steps: int = 0) -> None:
    folder = out_dir / "checkpoint"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"train_config": train_config,
                                                    "trained": {"steps": trained_steps}}))


def test_a_run_saved_before_recipes_resumes_with_its_own_objective(tmp_path):
    old = load_config("tiny", ["process.recipe=1"]).to_dict()
    del old["process"]["recipe"]  # what a checkpoint written before 2026-11-27 holds
    _write_checkpoint(tmp_path / "old", old)
    resumed = load_run_config(tmp_path / "old")
    assert resumed.process.recipe == 1
    proc = build_process(resumed.process.name, vocab_size=VOCAB, mask_id=MASK, **resumed.process.options())
    assert proc.ce_lambda == 0.0
    # a run started today records its recipe, so it keeps it when a later recipe becomes the default
    _write_checkpoint(tmp_path / "new", load_config("tiny").to_dict())
    assert load_run_config(tmp_path / "new").process.recipe == LATEST
    # the bench does not reuse an old run as a new-recipe row: it names the difference
    with pytest.raises(UserError, match=r"process.recipe: 1 -> 2"):
        ensure_trained(load_config("tiny", [f"run.out_dir={tmp_path / 'old'}"]))
    assert upgrade_saved_config(old)["process"]["recipe"] == 1
    assert "recipe" not in old["process"]  # the caller's mapping is not modified


def test_bench_reuses_an_old_run_that_no_recipe_changes(tmp_path):
    # an AR (or D3PM) run saved before recipes and the later data/train keys trains the same objective
    # today, so the bench reuses it; an MDLM run of the same age is refused (the test above)
    for name in ("autoregressive", "d3pm"):
        out = tmp_path / name
        cfg = load_config("tiny", [f"process.name={name}", f"run.out_dir={out}"])
        old = cfg.to_dict()
        for section, key in (("process", "recipe"), ("data", "num_workers"), ("train", "parallel"),
                             ("train", "activation_checkpointing")):
            del old[section][key]
        _write_checkpoint(out, old, trained_steps=cfg.train.steps)  # finished: reusing it trains nothing
        assert ensure_trained(cfg, log=lambda _: None) == out / "checkpoint"
    # a later key set to a value other than its old behaviour is still a difference
    with pytest.raises(UserError, match=r"train.parallel: 'ddp' -> 'fsdp'"):
        ensure_trained(load_config("tiny", ["process.name=autoregressive", f"run.out_dir={tmp_path / 'autoregressive'}",
                                            "train.parallel=fsdp"]))


def test_trained_run_records_the_recipe_in_both_configs(tmp_path, capsys):
    from textdiffusion.train.trainer import Trainer

    out = tmp_path / "run"
    folder = Trainer(load_config("tiny", [f"run.out_dir={out}", "train.steps=2", "run.eval_every=0",
                                          "run.sample_every=0", "run.progress=false"])).run()
    saved = json.loads((folder / "config.json").read_text())
    assert saved["train_config"]["process"]["recipe"] == LATEST
    assert saved["process"]["ce_lambda"] == CE_LAMBDA  # what `score` and `sample` rebuild
    assert math.isfinite(json.loads((out / "metrics.jsonl").read_text().splitlines()[-1]).get("loss", 0.0))
    assert ("objective: masked, recipe 2: the bound + 10 x the masked tokens' cross-entropy (so the logged loss is "
            "not a bound; val_nelbo is)") in capsys.readouterr().out


@pytest.mark.parametrize("overrides, line", [
    (["process.recipe=1"], "objective: masked, recipe 1: the bound"),
    (["process.name=block", "process.loss_weighting=flat", "process.ce_lambda=0"],
     "objective: block, recipe 2: the flat-weighted cross-entropy (so the logged loss is not a bound; val_nelbo is)"),
    (["process.name=d3pm"], None),
])
def test_the_objective_line(overrides, line):
    from textdiffusion.train.recipes import describe

    cfg = load_config("tiny", overrides)
    assert describe(cfg.process.recipe, _built(overrides)) == line
