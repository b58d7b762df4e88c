"""Latent diffusion in the bench (issue 35.4): it trains on the suite's budget (autoencoder, then denoiser),
reports its whole-passage bound as test NLL, has no infilling columns (it fills no gap) and is judged beside AR."""

from __future__ import annotations

import math

import pytest
from td_fixtures.bench_suites import tiny_suite

from textdiffusion.bench import suites
from textdiffusion.bench.run import run_suite

pytestmark = pytest.mark.slow

LATENT_SUITE = tiny_suite("latent-test", "a test-sized suite with the latent family",
                          (suites.AR, suites.latent((2, 3), ae_steps=2)), steps=4)


def test_the_registered_suites_carry_the_latent_family_within_their_budget():
    for name in ("quick", "small"):
        suite = suites.SUITES[name]
        fam = suite.family("latent")
        assert fam.process["name"] == "latent" and not fam.infills
        assert {s.sampler for s in fam.settings} == {"latent"}
        for tok in suite.tokenizations:  # the denoiser gets some of every budget the family runs with
            steps = tok.train.get("steps", suite.base["train"]["steps"])
            assert not fam.runs_with(tok.name) or fam.process["ae_steps"] < steps


def test_latent_family_trains_scores_and_generates_in_the_bench(monkeypatch, tmp_path):
    monkeypatch.setitem(suites.SUITES, "latent-test", LATENT_SUITE)
    md = tmp_path / "BENCHMARKS.md"
    logs: list[str] = []
    results = run_suite("latent-test", tmp_path / "runs", tmp_path / "results", md, "bench latent-test",
                        log=logs.append)
    [tok] = results["tokenizations"]
    ar, lat = tok["models"]["ar"], tok["models"]["latent"]
    assert lat["trained"]["tokens_seen"] == ar["trained"]["tokens_seen"] == 4 * 2 * 16  # the same budget
    assert not lat["likelihood"]["exact"] and math.isfinite(lat["likelihood"]["nats_per_token"])
    assert lat["infill"] == [] and [r["span"] for r in ar["infill"]] == [2]
    assert "    no infilling: latent fills no gap" in logs
    assert [s["setting"] for s in lat["samples"]] == ["latent(steps=2)", "latent(steps=3)", "latent ddim(steps=3)",
                                                      "latent(steps=3, decoder temperature 1)"]
    for s, denoiser_passes in zip(lat["samples"], (2, 3, 3, 3), strict=True):
        assert s["nfe_per_batch"] == denoiser_passes + 16  # then the decoder writes 16 tokens, one pass each
        assert math.isfinite(s["judge_ppl"]) and s["judge_ppl"] > 1 and s["tokens_per_s"] > 0
    text = md.read_text()
    assert "| latent | latent(steps=2) |" in text and "latent / AR test perplexity" in text
