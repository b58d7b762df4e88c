"""`textdiffusion bench` end to end on a suite small enough for a test: trains, measures, writes, replots."""

from __future__ import annotations

import json
import math
import shlex
import sys

import pytest

from textdiffusion.bench import suites
from textdiffusion.bench.judges import weights_fingerprint
from textdiffusion.bench.measure import MAX_TIMING_REPEATS, MeasureRequest, measure
from textdiffusion.bench.report import write_markdown_section
from textdiffusion.bench.run import pick_settings, run_suite
from textdiffusion.cli import main
from textdiffusion.core.errors import UserError

pytestmark = pytest.mark.slow

TEST_SUITE = suites.Suite(
    name="test",
    description="a test-sized suite",
    tokenizations=(suites.BYTE,),
    families=(suites.AR, suites.mdlm((4,)), suites.bd3(4, (2,))),
    base={"data": {"source": "shakespeare", "seq_len": 32, "val_fraction": 0.05},
          "model": {"d_model": 32, "n_layers": 1, "n_heads": 2},
          "train": {"steps": 6, "batch_size": 4, "warmup_steps": 1, "ema_decay": 0.0, "precision": "fp32"},
          "run": {"log_every": 2, "eval_every": 3, "eval_batches": 1, "save_every": 3, "progress": False}},
    num_samples=4, sample_batch=2, val_chunks=8, t_samples=2, infill_spans=(2, 5), infill_examples=4,
    mauve_features="bytes", min_timing_s=1e9,
)


@pytest.fixture
def suite(monkeypatch):
    monkeypatch.setitem(suites.SUITES, "test", TEST_SUITE)
    return TEST_SUITE


def test_suite_trains_measures_and_writes_everything(suite, tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\nolder text that must survive\n")
    logs: list[str] = []
    results = run_suite("test", tmp_path / "runs", tmp_path / "results", md, "bench test", log=logs.append)
    [tok] = results["tokenizations"]
    ar, mdlm = tok["models"]["ar"], tok["models"]["mdlm"]
    # the main judge is the suite's AR judge: trained apart (another seed, twice the steps), never the AR baseline
    byte = tmp_path / "runs" / "test" / "byte"
    assert tok["judge"]["name"] == tok["reference"]["judge"] == "ar-judge-byte"
    assert tok["judge"]["folder"] == str(byte / "judge" / "checkpoint")
    assert weights_fingerprint(byte / "judge" / "checkpoint") != weights_fingerprint(byte / "ar" / "checkpoint")
    judge_cfg = json.loads((byte / "judge" / "checkpoint" / "config.json").read_text())
    assert judge_cfg["trained"]["steps"] == 12 and judge_cfg["train_config"]["train"]["seed"] == 1
    assert all(s["judge"] == "ar-judge-byte" for m in tok["models"].values() for s in m["samples"])
    assert 0 <= tok["reference"]["mauve"] <= 1 and all(0 <= s["mauve"] <= 1 for s in ar["samples"] + mdlm["samples"])
    assert ar["likelihood"]["exact"] and not mdlm["likelihood"]["exact"]
    assert ar["trained"]["tokens_seen"] == mdlm["trained"]["tokens_seen"] == 6 * 4 * 32  # equal budgets
    assert [s["setting"] for s in ar["samples"]] == ["ar (KV cache)", "ar (no cache)"]
    for m in (ar, mdlm):
        assert [r["span"] for r in m["infill"]] == [2, 5]
        for s in m["samples"]:
            assert math.isfinite(s["judge_ppl"]) and s["judge_ppl"] > 1 and s["tokens_per_s"] > 0
            assert 0 <= s["unigram_entropy"] <= math.log(260)
    # KV cache or not, the AR sampler draws the same tokens: identical judged text
    assert ar["samples"][0]["judge_ppl"] == ar["samples"][1]["judge_ppl"]
    assert mdlm["samples"][0]["nfe_per_batch"] <= 4
    assert all(s["timing_repeats"] == MAX_TIMING_REPEATS for m in (ar, mdlm) for s in m["samples"])
    saved = json.loads((tmp_path / "results" / "bench-test.json").read_text())
    assert saved["tokenizations"][0]["models"].keys() == {"ar", "mdlm", "bd3-4"}
    bd3 = tok["models"]["bd3-4"]
    assert bd3["process"]["block_size"] == 4 and not bd3["likelihood"]["exact"]
    assert [s["setting"] for s in bd3["samples"]] == ["block(steps=2)", "block(rule=threshold,threshold=0.9)",
                                                      "block(steps=2,cache=False)"]
    assert bd3["samples"][0]["judge_ppl"] == bd3["samples"][2]["judge_ppl"]  # the block KV cache is exact
    assert {p.split("-")[-1] for p in saved["plots"]} == {"loss.png", "frontier.png"}
    text = md.read_text()
    assert "older text that must survive" in text and text.count("<!-- bench:test:start -->") == 1
    assert "| mdlm | ancestral(steps=4) |" in text and "mdlm / AR test perplexity" in text
    assert "**headline (batched):" in text and "**headline (one sequence at a time):" in text
    # AR, timed first, is timed again after the last family: the drift bounds what a ratio across the run means
    end = ar["timing_end"]
    assert end["setting"] == "ar (KV cache)" and end["tokens_per_s"] > 0 and end["single_tokens_per_s"] > 0
    assert "timing drift: AR with its KV cache, timed first and again after the last family" in text
    # a second run reuses the trained models and replaces the section instead of appending another. It names
    # the judge's folder as an extra judge, which must agree with the main judge (the same model) exactly, as
    # both score each text alone in fp32; and the AR baseline's folder, which must score every row but its own
    again = run_suite("test", tmp_path / "runs", tmp_path / "results", md, "bench test", log=logs.append,
                      extra_judges=(str(byte / "judge"), str(byte / "ar")))
    assert md.read_text().count("<!-- bench:test:start -->") == 1
    [tok] = again["tokenizations"]
    for s in [tok["reference"], *(s for m in tok["models"].values() for s in m["samples"])]:
        other = s["other_judges"]["judge"]
        assert other["judge_ppl"] == s["judge_ppl"]
        assert other["unigram_entropy"] == s["unigram_entropy"]
    for name, m in tok["models"].items():
        for s in m["samples"]:
            by_ar = s["other_judges"]["ar"]
            assert math.isnan(by_ar["judge_ppl"]) == (name == "ar"), name  # the AR baseline never judges its own
    assert "judge ppl | judge entropy | ar ppl | ar entropy |" in md.read_text()
    assert "Judge: ar-judge-byte, an AR model trained apart from the AR baseline" in md.read_text()
    assert (tmp_path / "results" / "bench-test-byte-frontier-ar.png").is_file()  # its own frontier plot
    with pytest.raises(UserError, match="generated the ar rows"):  # nor as the main judge
        run_suite("test", tmp_path / "runs", tmp_path / "results", None, "bench test", judge=str(byte / "ar"),
                  log=logs.append)
    assert any("trained already" in line for line in logs)
    # a partial rerun (one family) updates its rows and keeps the others
    run_suite("test", tmp_path / "runs", tmp_path / "results", md, "bench test --family mdlm", families=["mdlm"],
              log=logs.append)
    saved = json.loads((tmp_path / "results" / "bench-test.json").read_text())
    assert list(saved["tokenizations"][0]["models"]) == ["ar", "mdlm", "bd3-4"]
    assert "partial rerun" in md.read_text() and "| ar | ar (KV cache) |" in md.read_text()
    # timing repeats regenerate with the same seeds: the texts and passes are those of one timing
    req = dict(model=str(byte / "mdlm"), sampler="ancestral", options={"steps": 4}, num_samples=3, batch=2,
               single_samples=2)
    once, repeated = measure(MeasureRequest(**req)), measure(MeasureRequest(**req, min_timing_s=1e9))
    assert (once.timing_repeats, repeated.timing_repeats) == (1, MAX_TIMING_REPEATS)
    assert once.ids == repeated.ids and once.nfe == repeated.nfe and repeated.single_tokens_per_s > 0


def test_train_only_trains_and_measures_nothing(suite, tmp_path):
    args = ["bench", "test", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "r"), "--train-only",
            "--family", "bd3-4"]
    assert main(args) == 0
    assert (tmp_path / "runs" / "test" / "byte" / "bd3-4" / "checkpoint" / "config.json").is_file()
    assert not (tmp_path / "r").exists() and not (tmp_path / "runs" / "test" / "byte" / "ar").exists()


def test_a_changed_config_is_not_silently_reused(suite, tmp_path, capsys):
    args = ["bench", "test", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "r"), "--no-write",
            "--family", "ar"]
    assert main(args) == 0
    assert main([*args, "--set", "train.steps=7"]) == 2
    assert "was trained with a different config" in capsys.readouterr().err


def test_markdown_section_is_replaced_in_place(tmp_path):
    md = tmp_path / "B.md"
    write_markdown_section(md, "quick", "first")
    write_markdown_section(md, "small", "other")
    write_markdown_section(md, "quick", "second")
    text = md.read_text()
    assert "first" not in text and text.index("second") < text.index("other")


def test_unknown_suite_and_family_are_user_errors(suite):
    with pytest.raises(UserError, match="unknown suite"):
        suites.get_suite("huge")
    with pytest.raises(UserError, match="has no family"):
        suite.family("sedd")


def test_setting_picks_the_sampler_settings_measured(suite, tmp_path, capsys, monkeypatch):
    picked = pick_settings(suite, None, ["ar (no cache)", "ancestral(steps=4)", "block(steps=2)"])
    assert [[s.name() for s in f.settings] for f in picked.families] == [["ar (no cache)"], ["ancestral(steps=4)"],
                                                                         ["block(steps=2)"]]
    assert pick_settings(suite, None, None) is suite
    with pytest.raises(UserError, match="names none of family 'bd3-4'"):  # a family left with nothing to measure
        pick_settings(suite, None, ["ar (no cache)", "ancestral(steps=4)"])
    assert pick_settings(suite, ["ar"], ["ar (no cache)"]).family("ar").settings[0].name() == "ar (no cache)"
    with pytest.raises(UserError, match="no sampler setting 'ancestral"):
        pick_settings(suite, ["ar"], ["ar (no cache)", "ancestral(steps=5)"])
    results = run_suite("test", tmp_path / "runs", tmp_path / "results", None, "bench test", families=["ar"],
                        log=lambda _: None, settings=["ar (no cache)"])
    assert [s["setting"] for s in results["tokenizations"][0]["models"]["ar"]["samples"]] == ["ar (no cache)"]
    args = ["bench", "test", "--runs", str(tmp_path / "runs"), "--no-write", "--family", "mdlm", "--setting", "x"]
    assert main(args) == 2 and "names none of family 'mdlm'" in capsys.readouterr().err
    # the command recorded with the results runs again when pasted into a shell: names with spaces are quoted
    args = ["bench", "test", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "cli"), "--no-write",
            "--family", "ar", "--setting", "ar (no cache)"]
    monkeypatch.setattr(sys, "argv", ["textdiffusion", *args])
    assert main(args) == 0
    command = json.loads((tmp_path / "cli" / "bench-test.json").read_text())["command"]
    assert shlex.split(command)[1:] == args
