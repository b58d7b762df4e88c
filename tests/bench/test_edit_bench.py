"""The edit families in the bench (issue 16.5): DiffusER and Edit Flows train, generate and are judged beside the
AR baseline; having no likelihood bound, their rows carry no test NLL and no infilling columns."""

from __future__ import annotations

import math

import pytest
from td_fixtures.bench_suites import tiny_suite

from textdiffusion.bench import suites
from textdiffusion.bench.run import run_suite

pytestmark = pytest.mark.slow

EDIT_SUITE = tiny_suite("edit-test", "a test-sized suite with the edit families",
                        (suites.AR, *suites.edit_families((2,), (3,))), steps=2)


def test_the_registered_suites_carry_both_edit_families():
    for name in ("quick", "small"):
        fams = {f.name: f for f in suites.SUITES[name].families}
        assert fams["diffuser"].process == {"name": "diffuser"} and fams["edit-flow"].process == {"name": "edit_flow"}
        assert {s.sampler for s in fams["diffuser"].settings} == {"edit"}
        assert {s.sampler for s in fams["edit-flow"].settings} == {"edit_flow"}


def test_edit_families_generate_in_the_bench(monkeypatch, tmp_path):
    monkeypatch.setitem(suites.SUITES, "edit-test", EDIT_SUITE)
    md = tmp_path / "BENCHMARKS.md"
    results = run_suite("edit-test", tmp_path / "runs", tmp_path / "results", md, "bench edit-test", log=lambda _: None)
    [tok] = results["tokenizations"]
    ar = tok["models"]["ar"]
    assert ar["likelihood"]["exact"] and [r["span"] for r in ar["infill"]] == [2]
    for name, setting, nfe in (("diffuser", "edit(steps=2)", 4), ("edit-flow", "edit_flow(steps=3)", 6)):
        m = tok["models"][name]
        assert m["likelihood"] is None and m["infill"] == []  # no bound: generation rows only
        assert m["trained"]["tokens_seen"] == ar["trained"]["tokens_seen"] == 2 * 2 * 16  # the same budget
        [s] = m["samples"]
        assert s["setting"] == setting and s["nfe_per_batch"] == nfe and s["tokens_per_s"] > 0
        assert math.isfinite(s["judge_ppl"]) and s["judge_ppl"] > 1
    text = md.read_text()
    assert "| diffuser | edit(steps=2) |" in text and "| edit-flow | edit_flow(steps=3) |" in text
    assert "n/a (no bound)" in text and "diffuser / AR test perplexity" not in text
