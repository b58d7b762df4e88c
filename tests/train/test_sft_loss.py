"""LLaDA's SFT loss (train/sft.py) on a tiny vocabulary: exact at fixed noise, and its expectation over the
process's own noise equals the closed form

    E[L_row] = (1/A) sum_{M ⊆ reply, M ≠ ∅} CE(M) [ int_{t_min}^1 t^{|M|-1} (1-t)^{A-|M|} dt
                                                    + t_min^|M| (1-t_min)^{A-|M|} ]

(log-linear schedule: a reply token is masked with probability t, weight 1/t; s < t_min is read at t_min with
weight 1/t_min), with CE(M) = sum_{l in M} -log p(x0_l | prompt and reply with M masked) from the table itself.
"""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from textdiffusion.processes import MaskedDiffusion
from textdiffusion.train.sft import sft_loss

N_VALUES, MASK = 3, 3


@pytest.fixture(scope="module")
def table_model(masked_exact):
    """table_model(length, seed): a random table of logits (`masked_exact.TableDenoiser`) over 3 values."""

    def build(length: int, seed: int) -> torch.nn.Module:
        model = masked_exact.TableDenoiser.random(N_VALUES, length, seed=seed, scale=1.5)
        model.cfg = SimpleNamespace(time_conditioning=False, seq_len=length)
        return model

    return build


def cross_entropy(model: torch.nn.Module, x0: list[int], masked: set[int]) -> float:
    """sum over masked positions of -log p(x0_l | x0 with `masked` replaced by [MASK]), [MASK] excluded (SUBS)."""
    ids = torch.tensor([[MASK if i in masked else v for i, v in enumerate(x0)]])
    logp = torch.log_softmax(model(ids)[0, :, :N_VALUES].double(), -1)
    return -sum(float(logp[i, x0[i]]) for i in masked)


def test_fixed_noise_prompt_is_clean_and_each_row_is_divided_by_its_reply_length(spy, table_model):
    model = spy(table_model(4, seed=0))
    process = MaskedDiffusion(vocab_size=N_VALUES + 1, mask_id=MASK)
    x0 = torch.tensor([[1, 0, 2, 2], [2, 1, 0, 1]])
    reply = torch.tensor([[False, True, True, True], [False, False, True, True]])  # A = 3 and 2
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    u = torch.tensor([[1.0, 0.9, 0.1, 0.8], [1.0, 1.0, 0.5, 0.2]])  # masked iff u >= 1 - t; u = 1 on prompts
    out = sft_loss(process, model, x0, {"t": t, "u": u}, reply)
    seen = model.seen[0]
    assert torch.equal(seen[:, 0], x0[:, 0]) and seen[1, 1] == x0[1, 1]  # prompt tokens never masked
    masked = [{1, 3}, {2}]  # row 0: u >= 0.7 at 1 and 3; row 1: u >= 0.3 at 2 (not the prompt's 0 and 1)
    assert [set((seen[b] == MASK).nonzero().flatten().tolist()) for b in range(2)] == masked
    expected = [cross_entropy(model.inner, x0[b].tolist(), masked[b]) / float(t[b]) / int(reply[b].sum())
                for b in range(2)]
    assert out.n_tokens == 2
    assert math.isclose(float(out.total), sum(expected), rel_tol=1e-5)
    assert math.isclose(float(out.mean), sum(expected) / 2, rel_tol=1e-5)


def exact_expectation(model: torch.nn.Module, x0: list[int], prompt: int, t_min: float) -> float:
    reply = list(range(prompt, len(x0)))
    a = len(reply)
    total = 0.0
    for m in range(1, a + 1):
        # int_{t_min}^1 t^{m-1} (1-t)^{a-m} dt, by the binomial expansion of (1-t)^{a-m}
        integral = sum(math.comb(a - m, k) * (-1) ** k * (1 - t_min ** (k + m)) / (k + m) for k in range(a - m + 1))
        weight = integral + t_min**m * (1 - t_min) ** (a - m)
        for subset in itertools.combinations(reply, m):
            total += weight * cross_entropy(model, x0, set(subset))
    return total / a


def test_expectation_over_the_process_noise_is_the_closed_form(table_model):
    model = table_model(4, seed=3)
    process = MaskedDiffusion(vocab_size=N_VALUES + 1, mask_id=MASK, t_min=0.05)
    x0 = [2, 0, 1, 1]
    n = 40_000
    rows = torch.tensor([x0]).repeat(n, 1)
    reply = torch.tensor([[False, True, True, True]]).repeat(n, 1)
    noise = process.train_noise(rows, torch.Generator().manual_seed(0))
    per_row = process.nelbo_per_sequence(model, rows, noise, reply).double() / 3
    assert math.isclose(float(sft_loss(process, model, rows, noise, reply).mean), float(per_row.mean()), rel_tol=1e-5)
    expected = exact_expectation(model, x0, 1, process.t_min)
    stderr = float(per_row.std()) / math.sqrt(n)  # conservative: the batch's t are stratified (antithetic)
    assert abs(float(per_row.mean()) - expected) < 5 * stderr, (float(per_row.mean()), expected, stderr)
    # the closed form is sharp enough to see a wrong normalisation (by the whole row instead of the reply)
    assert abs(expected * 3 / 4 - expected) > 10 * stderr
