"""SDTT distillation (train/distill.py) against the teacher's exact two-step law, enumerated on a tiny vocabulary."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from torch import nn

from textdiffusion.core.errors import UserError
from textdiffusion.processes.masked import MaskedDiffusion, subs_log_probs
from textdiffusion.train.distill import (
    SDTTObjective,
    distill,
    distill_kl,
    grid_alphas,
    reveal_probability,
    round_steps,
    two_step_target,
)

V, MASK, L = 3, 3, 3  # three real tokens and [MASK]
PROCESS = MaskedDiffusion(vocab_size=V + 1, mask_id=MASK)


class Table(nn.Module):
    """A teacher whose logits at each position depend on every token of x_t (and not on t)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(0.7 * torch.randn(L, V + 1, L, V + 1, generator=gen), requires_grad=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        return self.w[torch.arange(L)[None], x].sum(1)  # [B, L, V + 1]


def teacher_probs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return PROCESS.log_probs(model, x[None], torch.zeros(1)).double().exp()[0]


def setting(student_steps: int = 2, j: int = 2):
    t = torch.tensor([j / student_steps], dtype=torch.float64)
    alpha_t, alpha_m, alpha_s = grid_alphas(PROCESS, t, torch.full_like(t, 1 / (2 * student_steps)))
    return t, reveal_probability(alpha_t, alpha_m), reveal_probability(alpha_m, alpha_s)


def middle_states(xt: torch.Tensor, p1: torch.Tensor, a1: float):
    """Every x_m after the teacher's first step from x_t, with its probability."""
    options = [[MASK, *range(V)] if int(v) == MASK else [int(v)] for v in xt]
    for z in itertools.product(*options):
        prob = 1.0
        for i, v in enumerate(z):
            if int(xt[i]) == MASK:
                prob *= (1 - a1) if v == MASK else a1 * float(p1[i, v])
        yield torch.tensor(z), prob


def exact_two_step_law(model: nn.Module, xt: torch.Tensor, a1: float, a2: float) -> torch.Tensor:
    """Law of each revealed value after the teacher's two ancestral steps, by enumeration, [L, V + 1]."""
    p1 = teacher_probs(model, xt)
    law = torch.zeros(L, V + 1, dtype=torch.float64)
    for z, prob in middle_states(xt, p1, a1):
        p2 = teacher_probs(model, z)
        for i in range(L):
            if int(xt[i]) != MASK:
                continue
            if int(z[i]) == MASK:  # revealed at the second step with probability a2, value ~ p2
                law[i] += prob * a2 * p2[i]
            else:  # revealed at the first step
                law[i, z[i]] += prob
    return law / law.sum(-1, keepdim=True).clamp_min(1e-300)


XT = torch.tensor([MASK, 1, MASK])


def test_the_estimated_target_averages_to_the_exact_two_step_law():
    model = Table()
    t, a1, a2 = setting()
    exact = exact_two_step_law(model, XT, float(a1), float(a2))
    p1 = teacher_probs(model, XT)
    mean = torch.zeros(L, V + 1, dtype=torch.float64)
    for z, prob in middle_states(XT, p1, float(a1)):
        target = two_step_target(p1[None], teacher_probs(model, z)[None], (z == MASK)[None], a1, a2)[0]
        mean += prob * target
    masked = XT == MASK
    assert torch.allclose(mean[masked], exact[masked], atol=1e-12)
    assert torch.allclose(exact[masked].sum(-1), torch.ones(2, dtype=torch.float64))
    assert not torch.allclose(exact[masked], p1[masked], atol=0.005)  # two steps differ from the teacher's one


def test_the_sampled_teacher_trajectory_matches_the_exact_law_in_expectation():
    model, n = Table(), 40_000
    t, a1, a2 = setting()
    objective = SDTTObjective(PROCESS, model, student_steps=2)
    gen = torch.Generator().manual_seed(0)
    xt = XT.repeat(n, 1)
    noise = {"u_reveal": torch.rand(xt.shape, dtype=torch.float64, generator=gen),
             "u_value": torch.rand(xt.shape, dtype=torch.float64, generator=gen)}
    mean = objective.teacher_target(xt, t.repeat(n), noise).mean(0)
    exact = exact_two_step_law(model, XT, float(a1), float(a2))
    masked = XT == MASK
    assert torch.allclose(mean[masked], exact[masked], atol=0.01)


def test_a_student_equal_to_the_exact_law_has_zero_loss_and_zero_expected_gradient():
    model = Table()
    t, a1, a2 = setting()
    exact = exact_two_step_law(model, XT, float(a1), float(a2))
    masked = (XT == MASK)[None]
    logits = torch.where(exact > 0, exact.clamp_min(1e-300).log(), torch.full_like(exact, -1e9))
    student = nn.Parameter(logits[None].clone())
    kl = distill_kl(exact[None], subs_log_probs(student, XT[None], MASK), masked)
    assert float(kl.detach()) == pytest.approx(0, abs=1e-12)
    p1 = teacher_probs(model, XT)
    expected = sum(prob * distill_kl(two_step_target(p1[None], teacher_probs(model, z)[None], (z == MASK)[None],
                                                     a1, a2), subs_log_probs(student, XT[None], MASK), masked)
                   for z, prob in middle_states(XT, p1, float(a1)))
    (grad,) = torch.autograd.grad(expected, student)
    assert grad.abs().max() < 1e-10
    # the teacher's one-step prediction is not the answer: a student equal to it gets a gradient
    one_step = nn.Parameter(PROCESS.log_probs(model, XT[None], torch.zeros(1)).double().detach().clone())
    (grad,) = torch.autograd.grad(distill_kl(exact[None], subs_log_probs(one_step, XT[None], MASK), masked), one_step)
    assert grad.abs().max() > 1e-3


def test_the_student_grid_and_the_round_plan():
    objective = SDTTObjective(PROCESS, Table(), student_steps=4)
    noise = objective.train_noise(torch.zeros(64, L, dtype=torch.long), torch.Generator().manual_seed(0))
    assert set((noise["t"] * 4).round().tolist()) == {1.0, 2.0, 3.0, 4.0}  # the student's sampling times
    assert round_steps(64, 3) == [32, 16, 8]
    with pytest.raises(UserError, match="multiple of 8"):
        round_steps(20, 3)
    with pytest.raises(UserError, match="at least 1 round"):
        round_steps(8, 0)


def test_distill_runs_rounds_that_load_and_sample(tmp_path, capsys):
    from textdiffusion.api.pipeline import Pipeline
    from textdiffusion.train.config import Config
    from textdiffusion.train.trainer import Trainer

    cfg = Config.from_dict({"data": {"source": "shakespeare", "tokenizer": "byte", "seq_len": 16},
                            "model": {"d_model": 32, "n_layers": 1, "n_heads": 2},
                            "train": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "ema_decay": 0.0,
                                      "precision": "fp32"},
                            "run": {"out_dir": str(tmp_path / "teacher"), "log_every": 1, "eval_every": 0,
                                    "eval_batches": 1, "save_every": 2, "progress": False}})
    teacher = Trainer(cfg).run()
    capsys.readouterr()
    logs: list[str] = []
    folders = distill(tmp_path / "teacher", tmp_path / "student", teacher_steps=4, rounds=2,
                      overrides=["train.steps=2", "train.lr=0.01"], log=logs.append)
    printed = capsys.readouterr().out  # the log names the loss it trains: SDTT's KL, not the recipe's
    assert "objective: SDTT, the KL from the teacher's 4-step output law to the student's 2-step one" in printed
    assert "cross-entropy" not in printed
    assert folders == [tmp_path / "student" / f"round-{r}" / "checkpoint" for r in (1, 2)]
    rows = [json.loads(line) for line in (tmp_path / "student" / "round-2" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("teacher_steps") == 2 and r.get("student_steps") == 1 for r in rows)
    assert all(r["loss"] >= -1e-6 for r in rows if "loss" in r)
    before = Pipeline.from_pretrained(teacher).model.state_dict()
    after = Pipeline.from_pretrained(folders[-1]).model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the student moved
    out = Pipeline.from_pretrained(folders[-1]).generate(num_samples=2, steps=1, seed=0)
    assert out.ids.shape == (2, 16) and out.nfe == 1
    distill(tmp_path / "teacher", tmp_path / "student", teacher_steps=4, rounds=2,
            overrides=["train.steps=2", "train.lr=0.01"], log=logs.append)  # finished rounds are kept
    assert sum("done already" in line for line in logs) == 2


def test_distill_command_errors_are_one_line(tmp_path, capsys):
    from textdiffusion.cli import main

    assert main(["distill", "--out", str(tmp_path / "s"), "--teacher-steps", "20", "--rounds", "3"]) == 2
    assert "multiple of 8" in capsys.readouterr().err
    (tmp_path / "ar").mkdir()
    (tmp_path / "ar" / "config.json").write_text(json.dumps({"format": "textdiffusion",
                                                             "process": {"name": "autoregressive"}}))
    assert main(["distill", "--from", str(tmp_path / "ar"), "--out", str(tmp_path / "s")]) == 2
    assert "SDTT distils masked diffusion" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
