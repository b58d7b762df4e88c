"""DUO (uniform-state) checkpoints on our SEDD uniform-graph process: the implied score's denoising score entropy
equals DUO's own ELBO integrand term by term, and the loader runs generate / score on a tiny folder."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.core.errors import UserError
from textdiffusion.interop import kuleshov
from textdiffusion.models.dit import KuleshovDiT, KuleshovDiTConfig, UniformMeanToScore
from textdiffusion.processes.sedd import SEDD

EPS = 1e-3


def duo_integrand(p: torch.Tensor, x0: int, xt: int, t: float) -> float:
    """DUO's continuous-time NELBO integrand for one token (its `nll_per_token`), from the formula:
    p = predicted x0 distribution [V]; alpha = 1 - (1 - eps) t; xbar = V alpha p + 1 - alpha."""
    v = p.numel()
    alpha = 1 - (1 - EPS) * t
    dalpha = -(1 - EPS)
    xbar = v * alpha * p + (1 - alpha)
    xbar_true_xt = (1 - alpha) + (v * alpha if xt == x0 else 0.0)
    term1 = v * (1 / xbar_true_xt - 1 / xbar[xt])
    c = (1 - alpha) / (v * alpha + 1 - alpha)
    spread = torch.log(xbar).sum() - v * torch.log(xbar[xt])
    if xt == x0:
        term2 = -c * spread + (v - 1) * c * math.log(c)
    else:
        term2 = (-spread - v * alpha / (1 - alpha) * (torch.log(xbar[x0]) - torch.log(xbar[xt]))
                 - math.log(c) / c)
    return float(dalpha / (v * alpha) * (term1 - term2))


def tiny_duo(vocab: int = 7) -> KuleshovDiT:
    torch.manual_seed(0)
    dit = KuleshovDiT(KuleshovDiTConfig(vocab_size=vocab, seq_len=6, d_model=8, n_layers=1, n_heads=2, cond_dim=8,
                                        time_conditioning=True, time_input="duo"))
    for p in dit.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return dit


@pytest.mark.parametrize("t", [0.05, 0.4, 0.93])
def test_score_entropy_of_the_implied_score_is_duos_elbo(t):
    vocab = 7
    dit = tiny_duo(vocab)
    model = UniformMeanToScore(dit, out_dtype=torch.float64)
    process = SEDD(vocab + 1, vocab, graph="uniform", noise="loglinear", eps=EPS)
    g = torch.Generator().manual_seed(1)
    xt = torch.randint(0, vocab, (4, 6), generator=g)
    x0 = torch.where(torch.rand(4, 6, generator=g) < 0.5, xt, torch.randint(0, vocab, (4, 6), generator=g))
    tt = torch.full((4,), t, dtype=torch.float64)
    with torch.no_grad():
        ours = process.score_entropy(process.model_output(model, xt, tt), xt, x0, tt)
        probs = torch.softmax(dit(xt, tt.float()).double(), -1)
    for b in range(4):
        for pos in range(6):
            ref = duo_integrand(probs[b, pos], int(x0[b, pos]), int(xt[b, pos]), t)
            assert float(ours[b, pos]) == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_a_perfect_prediction_has_zero_loss():
    vocab, t = 7, 0.3
    process = SEDD(vocab + 1, vocab, graph="uniform", noise="loglinear", eps=EPS)
    x0 = torch.tensor([[1, 4, 2]])
    xt = torch.tensor([[1, 5, 0]])
    p = torch.nn.functional.one_hot(x0, vocab).double()[0]
    alpha = 1 - (1 - EPS) * t
    xbar = torch.log(vocab * alpha * p + 1 - alpha)
    ls = xbar - xbar.gather(-1, xt[0][:, None])
    ls = torch.cat([ls, torch.full((3, 1), float("-inf"), dtype=torch.float64)], -1)[None]
    se = process.score_entropy(process.graph.parameterise(ls, xt), xt, x0, torch.tensor([t], dtype=torch.float64))
    assert torch.allclose(se, torch.zeros_like(se), atol=1e-9)
    assert all(abs(duo_integrand(p[i], int(x0[0, i]), int(xt[0, i]), t)) < 1e-9 for i in range(3))


def test_duo_folder_loads_and_runs(tmp_path, kuleshov_dit):
    dit = kuleshov_dit
    cfg = {"model_type": "duo", "hidden_dim": dit.D, "cond_dim": dit.COND, "n_blocks": dit.N_LAYERS, "n_heads": dit.H,
           "model_length": dit.L, "vocab_size": 50258, "time_conditioning": True}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    save_file(kuleshov_dit.their_state(uniform=True), str(tmp_path / "model.safetensors"))
    loaded = kuleshov.load(tmp_path, torch.device("cpu"))
    assert isinstance(loaded.model, UniformMeanToScore) and isinstance(loaded.process, SEDD)
    assert loaded.process.graph_name == "uniform" and loaded.tokenizer.mask_id == 50258
    assert loaded.tokenizer.pad_id == 50257 and loaded.tokenizer.vocab_size == 50259
    pipe = Pipeline(loaded.model, loaded.process, loaded.tokenizer, loaded.config)
    for sampler in ("sedd", "sedd_analytic"):
        out = pipe.generate(num_samples=2, steps=4, seed=0, sampler=sampler)
        assert out.ids.shape == (2, kuleshov_dit.L) and (out.ids < 50258).all()
    assert math.isfinite(pipe.score("Hello world", t_samples=2)[0].nats_per_token)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "time_conditioning": False}))
    with pytest.raises(UserError, match="time-conditioned"):
        kuleshov.load(tmp_path, torch.device("cpu"))
