"""Edit Flows on a tiny vocabulary, by enumeration: the Bayes-optimal edit rates (the minimiser of the Bregman loss)
generate the marginal path p_t (Kolmogorov forward equation), the loss's gradient vanishes exactly there, the
training examples follow p_t, and Euler sampling with those rates ends at the data distribution."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import numpy as np
import pytest
import torch

from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.processes import build_process
from textdiffusion.processes.edit_flow import DEL, EPS, INS, SUB, aligned_pair, apply_edit, bregman_loss, edit_targets
from textdiffusion.samplers.edit_flow import EditFlowConfig, edit_flow_sample, integrate

V, MASK = 2, 2  # tokens 0 and 1; the model vocabulary adds [MASK]
DATA = {(0,): 0.3, (1, 0): 0.5, (1, 1, 0): 0.2}


def coupling(source: str) -> list[tuple[float, tuple[int, ...], tuple[int, ...]]]:
    """(probability, x0, x1): x0 empty, or uniform random tokens as long as x1."""
    if source == "empty":
        return [(p, (), x1) for x1, p in DATA.items()]
    return [(p / V ** len(x1), x0, x1) for x1, p in DATA.items() for x0 in itertools.product(range(V), repeat=len(x1))]


def enumerate_path(process, source: str, t: float):
    """p_t(x), the Bayes-optimal rate of each edit from x (E[kappa'/(1-kappa) 1{edit} | x_t = x]) and the weighted
    training examples (probability, x_t, targets), all exact."""
    kappa, w = process.kappa(t), process.rate_scale(t)
    marginal: dict = defaultdict(float)
    flux: dict = defaultdict(lambda: defaultdict(float))
    examples = []
    for p, x0, x1 in coupling(source):
        z0, z1 = aligned_pair(x0, x1)
        for flips in itertools.product([False, True], repeat=len(z0)):
            prob = p * math.prod(kappa if f else 1 - kappa for f in flips)
            zt = [b if f else a for a, b, f in zip(z0, z1, flips)]
            x = tuple(v for v in zt if v != EPS)
            targets = edit_targets(zt, z1)
            marginal[x] += prob
            for e in targets:
                flux[x][e] += prob * w
            examples.append((prob, x, targets))
    rates = {x: {e: f / marginal[x] for e, f in edits.items()} for x, edits in flux.items() if marginal[x] > 0}
    return marginal, rates, examples


@pytest.mark.parametrize("source", ["empty", "random"])
@pytest.mark.parametrize("t", [0.2, 0.55, 0.9])
def test_bayes_rates_generate_the_marginal_path(source, t):
    process = build_process("edit_flow", vocab_size=V + 1, mask_id=MASK, source=source, power=2.0)
    p, rates, _ = enumerate_path(process, source, t)
    dt = 1e-5
    ahead, _, _ = enumerate_path(process, source, t + dt)
    behind, _, _ = enumerate_path(process, source, t - dt)
    inflow: dict = defaultdict(float)
    for x, edits in rates.items():
        for (kind, pos, tok), rate in edits.items():
            inflow[tuple(apply_edit(x, kind, pos, tok))] += p[x] * rate
    states = set(p) | set(ahead) | set(behind) | set(inflow)
    assert len(states) > 5
    for x in states:
        dpdt = (ahead.get(x, 0.0) - behind.get(x, 0.0)) / (2 * dt)
        outflow = p.get(x, 0.0) * sum(rates.get(x, {}).values())
        assert inflow[x] - outflow == pytest.approx(dpdt, abs=1e-6), x  # dp/dt = in - out


def _table(x: tuple[int, ...], rates: dict, value: float | None = None):
    """Log-rate tensors of one canvas [start] + x holding the given rates (e^-30 where there is none)."""
    n = len(x) + 1
    log_ins, log_del, log_sub = (torch.full(s, -30.0, dtype=torch.float64) for s in ((n, V), (n,), (n, V)))
    for (kind, pos, tok), r in rates.items():
        r = math.log(r if value is None else value)
        if kind == INS:
            log_ins[pos, tok] = r
        elif kind == DEL:
            log_del[pos] = r
        else:
            log_sub[pos, tok] = r
    return log_ins, log_del, log_sub


def test_bregman_loss_is_minimised_by_the_bayes_rates():
    process = build_process("edit_flow", vocab_size=V + 1, mask_id=MASK, source="random", power=2.0)
    t = 0.6
    p, rates, examples = enumerate_path(process, "random", t)
    tables = {x: [v.requires_grad_() for v in _table(x, rates.get(x, {}))] for x in p}

    def expected_loss(tables):
        total = 0.0
        for prob, x, targets in examples:
            log_ins, log_del, log_sub = tables[x]
            canvas = torch.tensor([[MASK, *x]])
            valid = torch.ones_like(canvas, dtype=torch.bool)
            loss = bregman_loss(log_ins[None], log_del[None], log_sub[None], canvas, valid, [targets],
                                torch.tensor([process.rate_scale(t)], dtype=torch.float64))
            total = total + prob * loss[0]
        return total

    best = expected_loss(tables)
    best.backward()
    for x, edits in rates.items():
        log_ins, log_del, log_sub = tables[x]
        for kind, pos, tok in edits:
            g = log_ins.grad[pos, tok] if kind == INS else log_del.grad[pos] if kind == DEL else log_sub.grad[pos, tok]
            assert abs(float(g)) < 1e-9  # d/d log r of p(x) r - p(x) R log r is p(x)(r - R) = 0
    for scale in (0.5, 2.0):
        worse = {x: [v.detach() for v in _table(x, {e: r * scale for e, r in rates.get(x, {}).items()})] for x in p}
        assert float(expected_loss(worse)) > float(best.detach()) + 1e-6


def test_training_examples_follow_the_marginal_path():
    process = build_process("edit_flow", vocab_size=V + 1, mask_id=MASK, source="empty", power=2.0, crop=False)
    t = 0.5
    counts: dict = defaultdict(int)
    n = 4000
    for seed in range(n):  # x1 = (1, 1, 0): the chunk's first L - 1 tokens
        x, targets = process.example([1, 1, 0, MASK], t, seed)
        counts[tuple(x)] += 1
        z_left = 3 - len(x)
        assert len(targets) == z_left and all(k == INS for k, _, _ in targets)
    kappa = process.kappa(t)
    # x_t keeps each of the 3 tokens with probability kappa: P(len k) = C(3, k) kappa^k (1 - kappa)^(3 - k)
    for k in range(4):
        got = sum(c for x, c in counts.items() if len(x) == k) / n
        assert got == pytest.approx(math.comb(3, k) * kappa**k * (1 - kappa) ** (3 - k), abs=0.03)


def test_euler_sampling_with_the_bayes_rates_reaches_the_data():
    process = build_process("edit_flow", vocab_size=V + 1, mask_id=MASK, source="empty", power=2.0)

    def oracle(seqs, t):
        n = max(len(s) for s in seqs) + 1
        out = [torch.full((len(seqs),) + s, -30.0, dtype=torch.float64) for s in ((n, V), (n,), (n, V))]
        _, rates, _ = enumerate_path(process, "empty", t)
        for b, s in enumerate(seqs):
            for (kind, pos, tok), r in rates.get(tuple(s), {}).items():
                if r <= 0:
                    continue
                if kind == INS:
                    out[0][b, pos, tok] = math.log(r)
                elif kind == DEL:
                    out[1][b, pos] = math.log(r)
                else:
                    out[2][b, pos, tok] = math.log(r)
        return tuple(out)

    gen = torch.Generator().manual_seed(0)
    n = 800
    finals = integrate(oracle, [[] for _ in range(n)], steps=40, t_max=0.999, max_len=8, generator=gen)
    for x1, prob in DATA.items():  # 3.5 standard errors at n = 800
        assert sum(tuple(f) == x1 for f in finals) / n == pytest.approx(prob, abs=0.06)
    # Euler applies a step's edits together, so a few runs leave the support (an O(h) error of the sampler)
    assert sum(tuple(f) not in DATA for f in finals) / n < 0.05


def test_model_loss_and_sampler_run():
    process = build_process("edit_flow", vocab_size=V + 1, mask_id=MASK, source="random")
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=V + 1, seq_len=8, d_model=16, n_heads=2, n_layers=1,
                                    time_conditioning=True, **process.model_fields()))
    x0 = torch.tensor([[0, 1, 1, 0, 1, 0, 0, 1]] * 3)
    loss = process.loss(model, x0, process.sample_noise(x0, torch.Generator().manual_seed(1)))
    loss.total.backward()
    assert torch.isfinite(loss.total) and model.tag_head.weight.grad.abs().sum() > 0
    out = edit_flow_sample(model.eval(), process, torch.full((2, 4), MASK), EditFlowConfig(steps=5),
                           generator=torch.Generator().manual_seed(0), record_frames=True)
    assert out.nfe == 10 and len(out.frames) == 6 and out.frames[-1].edits is not None
    assert np.all(out.ids.numpy() >= 0)
    assert {SUB, DEL, INS} == {2, 1, 0}


def test_integration_from_t_start_covers_t_start_to_one():
    """Editing a text close to data starts late: `steps` equal Euler steps over [t_start, 1], rates read at
    their left ends (capped at t_max)."""
    seen = []

    def rates(seqs, t):
        seen.append(t)
        n = max(len(s) for s in seqs) + 1
        return tuple(torch.full((len(seqs),) + s, -60.0, dtype=torch.float64) for s in ((n, V), (n,), (n, V)))

    out = integrate(rates, [[0, 1]], steps=4, t_max=0.8, max_len=8, t_start=0.5,
                    generator=torch.Generator().manual_seed(0))
    assert seen == [0.5, 0.625, 0.75, 0.8] and out == [[0, 1]]  # rates of e^-60: nothing fires
