"""The job lists of benchmarks/gpu/sweep.py: the issue-17 budget plot and training-recipe ablation.

Every job is the `small` suite's byte-level run (4 layers x 256, windows of 128 bytes, batch 32, lr 1e-3 with 100
warm-up steps, EMA 0.995, 1,200 steps = 4.9M tokens) with a family and a few overrides.
- budget: an AR judge trained apart (seed 1) first; then AR, MDLM, BD3-LM (block 4), the best non-block discrete
  family of `bench small` (D3PM with the embedding-distance transition) and D3PM-absorbing, 9,600 steps (39M
  tokens) at a constant learning rate after warm-up, scored every 600 steps, so one run gives the budgets 2.5M,
  4.9M, 9.8M, 19.7M and 39M tokens.
- ablation: MDLM's recipe one change at a time at the `small` budget, 3 seeds each, plus D3PM-absorbing with and
  without its hybrid cross-entropy term (the comparison the issue asks to explain), the hybrid term's weight,
  BD3-LM and SEDD-absorb with and without it, and recipe 2 itself; ablation-bpe: the main rows at 4k BPE.
Both plans were measured before recipe 2 became the default (train/recipes.py): every job pins process.recipe=1,
except the rows that name a recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from textdiffusion.bench.runs import run_config
from textdiffusion.bench.suites import get_suite
from textdiffusion.train.config import Config


@dataclass(frozen=True)
class Job:
    name: str
    plan: str
    family: str  # a family of the `small` suite
    variant: str
    seed: int = 0
    overrides: tuple[str, ...] = ()
    samples: bool = False  # write samples for judging
    sampler: dict = field(default_factory=dict)
    tokenization: str = "byte"  # a tokenization of the `small` suite: byte or bpe4096


def job_config(job: Job, out_dir: Path, device: str, extra: list[str] | None = None) -> Config:
    suite = get_suite("small")
    tok = next(t for t in suite.tokenizations if t.name == job.tokenization)
    return run_config(suite, tok, suite.family(job.family), out_dir.parent,
                      [*job.overrides, f"train.seed={job.seed}", f"run.out_dir={out_dir}", f"train.device={device}",
                       "run.progress=false", "run.sample_every=0", *(extra or [])])


BUDGET_STEPS, BUDGET_EVERY = 9600, 600
BUDGET_FAMILIES = {"ar": {}, "mdlm": {"steps": 128}, "bd3-4": {"steps": 4}, "d3pm-embedding": {"steps": 128},
                   "d3pm-absorbing": {"steps": 128}}

ABLATION = {  # variant -> (family, overrides)
    "mdlm (small recipe)": ("mdlm", ()),
    "hybrid CE, lambda 0.01": ("mdlm", ("process.ce_lambda=0.01",)),
    "hybrid CE, lambda 0.1": ("mdlm", ("process.ce_lambda=0.1",)),
    # D3PM's loss is T (L_{t-1} + lambda CE) with T = 1,000, lambda = 0.01: the CE term's weight next to the NELBO
    # is T lambda = 10, not 0.01 (processes/d3pm.py); this row gives MDLM that weight
    "hybrid CE, lambda 10 (D3PM's T x lambda)": ("mdlm", ("process.ce_lambda=10",)),
    "flat weighting": ("mdlm", ("process.loss_weighting=flat",)),
    "MD4 cosine schedule": ("mdlm", ("process.schedule=md4-cosine",)),
    "cosine schedule": ("mdlm", ("process.schedule=cosine",)),
    "time conditioning": ("mdlm", ("model.time_conditioning=true",)),
    "no antithetic t": ("mdlm", ("process.antithetic=false",)),
    "no EMA": ("mdlm", ("train.ema_decay=0",)),
    "EMA 0.999": ("mdlm", ("train.ema_decay=0.999",)),
    "lr 2e-3": ("mdlm", ("train.lr=2e-3",)),
    "lr 5e-4": ("mdlm", ("train.lr=5e-4",)),
    "warm-up 500": ("mdlm", ("train.warmup_steps=500",)),
    "batch 64 (600 steps)": ("mdlm", ("train.batch_size=64", "train.steps=600")),
    "batch 16 (2,400 steps)": ("mdlm", ("train.batch_size=16", "train.steps=2400")),
    "hybrid CE, lambda 1": ("mdlm", ("process.ce_lambda=1",)),
    "hybrid CE, lambda 3": ("mdlm", ("process.ce_lambda=3",)),
    "hybrid CE, lambda 30": ("mdlm", ("process.ce_lambda=30",)),
    "cosine schedule and hybrid CE, lambda 10": ("mdlm", ("process.schedule=cosine", "process.ce_lambda=10")),
    "bd3-4 (small recipe)": ("bd3-4", ()),
    "bd3-4, hybrid CE, lambda 10": ("bd3-4", ("process.ce_lambda=10",)),
    "bd3-4, flat weighting": ("bd3-4", ("process.loss_weighting=flat",)),
    "recipe 2 (the default since 2026-11-27)": ("mdlm", ("process.recipe=2",)),
    "bd3-4, recipe 2": ("bd3-4", ("process.recipe=2",)),
    "sedd-absorb (small recipe)": ("sedd-absorb", ()),
    "sedd-absorb, hybrid CE, lambda 10": ("sedd-absorb", ("process.ce_lambda=10",)),
    # SEDD's score-entropy loss already holds the normaliser sum_y exp(g_y): does another weight suit it better?
    "sedd-absorb, hybrid CE, lambda 3": ("sedd-absorb", ("process.ce_lambda=3",)),
    "sedd-absorb, hybrid CE, lambda 30": ("sedd-absorb", ("process.ce_lambda=30",)),
    "d3pm-absorbing (lambda 0.01)": ("d3pm-absorbing", ()),
    "d3pm-absorbing, lambda 0": ("d3pm-absorbing", ("process.hybrid_lambda=0",)),
}
SEEDS = (0, 1, 2)
# the same question at the suite's 4k BPE (600 steps, 2.5M tokens), where MDLM's gap to AR and D3PM was largest
ABLATION_BPE = {
    "bpe4096 mdlm (small recipe)": ("mdlm", ()),
    "bpe4096 hybrid CE, lambda 10": ("mdlm", ("process.ce_lambda=10",)),
    "bpe4096 flat weighting": ("mdlm", ("process.loss_weighting=flat",)),
    "bpe4096 d3pm-absorbing (lambda 0.01)": ("d3pm-absorbing", ()),
}


def _pinned(overrides: tuple[str, ...]) -> tuple[str, ...]:
    """A row's overrides on top of recipe 1, unless the row names a recipe itself."""
    return overrides if any(o.startswith("process.recipe=") for o in overrides) else ("process.recipe=1", *overrides)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-").replace("--", "-")


PLANS: dict[str, list[Job]] = {
    # first: a byte-level AR judge trained apart (seed 1, saved every 1,200 steps) that generates nothing, to judge
    # the budget runs' samples
    "budget": [Job("budget-judge", "budget", "ar", "judge (AR, seed 1)", 1,
                   (f"train.steps={BUDGET_STEPS}", "train.min_lr_ratio=1.0", f"run.eval_every={BUDGET_EVERY}",
                    "run.eval_batches=16", "run.save_every=1200"))] + [Job(f"budget-{fam}", "budget", fam, fam, 0,
                   _pinned((f"train.steps={BUDGET_STEPS}", "train.min_lr_ratio=1.0", f"run.eval_every={BUDGET_EVERY}",
                        "run.eval_batches=16", "run.save_every=1200")), True, sampler)
               for fam, sampler in BUDGET_FAMILIES.items()],
    # seed 0 of every variant first, so a deadline leaves whole rows with fewer seeds rather than missing rows
    # every row changes one thing from the papers' recipe (process.recipe=1, train/recipes.py), except "recipe 2"
    "ablation": [Job(f"ablation-{_slug(variant)}-s{seed}", "ablation", fam, variant, seed,
                     (*_pinned(overrides), "run.eval_every=100000", "run.save_every=100000"))
                 for seed in SEEDS for variant, (fam, overrides) in ABLATION.items()],
    "ablation-bpe": [Job(f"ablation-{_slug(variant)}-s{seed}", "ablation-bpe", fam, variant, seed,
                         (*_pinned(overrides), "run.eval_every=100000", "run.save_every=100000"),
                         tokenization="bpe4096")
                     for seed in SEEDS for variant, (fam, overrides) in ABLATION_BPE.items()],
}
