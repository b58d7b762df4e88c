"""The benchmark report's arithmetic: the headline ratio at matched quality, and merging partial reruns."""

from __future__ import annotations

from textdiffusion.bench import suites
from textdiffusion.bench.report import headline, suite_markdown, timing_drift
from textdiffusion.bench.run import merge_results


def sample(setting: str, tps: float, ppl: float, entropy: float, single: float | None = None, **options) -> dict:
    return {"setting": setting, "sampler": setting.split("(")[0], "options": options, "tokens_per_s": tps,
            "single_tokens_per_s": single, "judge_ppl": ppl, "unigram_entropy": entropy}


def tok(*diffusion: dict) -> dict:
    ar = [sample("ar (KV cache)", 1000, 10.0, 3.0, 200, cache=True),
          sample("ar (no cache)", 100, 10.0, 3.0, cache=False)]
    return {"models": {"ar": {"samples": ar}, "mdlm": {"samples": list(diffusion)}}}


def test_headline_takes_the_fastest_setting_within_both_tolerances():
    t = tok(sample("fast but bad", 5000, 11.5, 3.0, 900),  # ppl 15% over AR's
            sample("fast, low entropy", 4000, 10.0, 2.9, 800),  # entropy 3.3% under
            sample("matched", 2500, 10.9, 3.05, 600),  # within 10% / 2%
            sample("matched, slow", 1500, 10.2, 3.0, 300))
    assert "2.50x AR's tokens/s at matched quality" in headline(t) and "mdlm matched:" in headline(t)
    assert "3.00x AR's tokens/s" in headline(t, "single_tokens_per_s")  # 600 / 200, one sequence at a time


def test_headline_without_a_match_names_the_closest_and_the_fastest():
    t = tok(sample("a", 5000, 30.0, 3.0), sample("b", 3000, 20.0, 3.01), sample("greedy", 4000, 11.0, 2.0))
    text = headline(t)
    assert "no diffusion setting matches" in text
    assert "Closest at AR's entropy: mdlm b, judge ppl 20.00 (2.00x AR's) at 3.00x" in text
    assert "fastest: mdlm a, 5.00x" in text
    # the best at AR's entropy among the settings at least 1x / 2x as fast as AR (b is both; a is worse)
    assert "at AR's entropy and >= 2x its tokens/s: mdlm b, judge ppl 20.00 (2.00x AR's)" in text
    slow = headline(tok(sample("b", 1500, 20.0, 3.01), sample("c", 900, 12.0, 3.0), sample("d", 3000, 40.0, 3.0)))
    assert "at AR's entropy and >= 1x its tokens/s: mdlm b, judge ppl 20.00" in slow
    assert "at AR's entropy and >= 2x its tokens/s: mdlm d, judge ppl 40.00 (4.00x AR's)" in slow
    assert "none at AR's entropy" not in slow
    assert "none at AR's entropy and >= 2x its tokens/s" in headline(tok(sample("c", 900, 12.0, 3.0)))
    # the likeliest setting is named too, with what it costs in entropy (2.0 vs AR's 3.0: -33%)
    assert "closest in judge ppl: mdlm greedy, 11.00 (1.10x AR's) at -33% entropy and 4.00x AR's tokens/s" in text
    assert headline(t, "single_tokens_per_s") is None  # no single-sequence numbers were measured


def test_merge_keeps_unmeasured_rows_in_suite_order():
    old = {"tokenizations": [{"tokenization": "byte", "models": {"ar": {"x": 1}, "mdlm": {"x": 2}}},
                             {"tokenization": "bpe4096", "models": {"ar": {"x": 3}}}]}
    new = {"date": "d", "command": "c", "wall_minutes": 1.0, "machine": "m2",
           "tokenizations": [{"tokenization": "byte", "models": {"bd3-4": {"x": 4}, "mdlm": {"x": 5}}}]}
    merged = merge_results({**old, "command": "full", "date": "d0", "machine": "m1", "wall_minutes": 50.0},
                           new, suites.SUITES["small"])
    byte, bpe = merged["tokenizations"]
    assert list(byte["models"]) == ["ar", "mdlm", "bd3-4"] and byte["models"]["mdlm"] == {"x": 5}
    assert bpe["models"] == {"ar": {"x": 3}}
    # the section keeps the full run's command; the rerun is listed with its own, and its machine where it differs
    assert (merged["command"], merged["date"], merged["wall_minutes"]) == ("full", "d0", 50.0)
    assert merged["partial_runs"] == [{"date": "d", "command": "c", "wall_minutes": 1.0, "machine": "m2"}]
    header = {"suite": "small", "description": "x", "torch": "t", "json": "j", "tokenizations": []}
    text = suite_markdown({**merged, **header})
    assert "- command: `full`" in text and "partial rerun on d: `c` (1.0 min; m2)" in text


def test_a_setting_rerun_keeps_the_familys_other_settings():
    ancestral = [sample(f"ancestral(steps={n})", 100, 10.0, 3.0) for n in (32, 128, 512)]
    old = {"tokenizations": [{"tokenization": "byte", "models": {"mdlm": {"x": 1, "samples": ancestral},
                                                                "ar": {"samples": [sample("gone", 1, 1.0, 1.0)]}}}]}
    again = sample("ancestral(steps=128)", 200, 9.0, 3.0)
    new = {"tokenizations": [{"tokenization": "byte", "models": {"mdlm": {"x": 2, "samples": [again]},
                                                                "ar": {"samples": []}}}]}
    merged = merge_results(old, new, suites.SUITES["small"])["tokenizations"][0]["models"]
    assert merged["mdlm"]["x"] == 2 and merged["mdlm"]["samples"] == [ancestral[0], again, ancestral[2]]
    assert merged["ar"]["samples"] == []  # a setting the suite no longer has is not carried over


def with_judge(s: dict, name: str, ppl: float, entropy: float) -> dict:
    return {**s, "other_judges": {name: {"judge_ppl": ppl, "unigram_entropy": entropy}}}


def test_headline_under_an_extra_judge_uses_that_judges_numbers_only():
    # The main judge favours AR (nothing matches); the neutral judge rates "b" as good as AR.
    t = tok(with_judge(sample("a", 5000, 30.0, 3.0), "neutral", 80.0, 4.0),
            with_judge(sample("b", 3000, 20.0, 3.01), "neutral", 52.0, 4.05))
    ar = t["models"]["ar"]["samples"]
    ar[0] = with_judge(ar[0], "neutral", 50.0, 4.0)
    assert "no diffusion setting matches" in headline(t)
    text = headline(t, judge="neutral")
    assert "headline (batched, judged by neutral): 3.00x AR's tokens/s at matched quality" in text
    assert "judge ppl 52.00, entropy 4.050" in text and "AR with KV cache: 1,000 tok/s, judge ppl 50.00" in text
    # a judge that scored nothing matches nothing (its numbers are missing, not zero)
    assert "no diffusion setting matches" in headline(t, judge="absent")


def test_report_table_has_a_column_pair_per_extra_judge():
    from textdiffusion.bench.report import tokenization_markdown

    def full(s: dict) -> dict:
        return {**s, "nfe_per_batch": 4, "seconds_per_sample": 0.1, "peak_memory_mb": 1.0,
                "distinct_4": 0.9, "repetition_4": 0.0}

    t = tok(full(with_judge(sample("b", 3000, 20.0, 3.01), "neutral", 52.0, 4.05)))
    for m in t["models"].values():
        m.update(likelihood={"nats_per_token": 1.0, "stderr": 0.1, "exact": m is t["models"]["ar"]},
                 infill=[], params=1, trained={})
    t["models"]["ar"]["samples"] = [full(with_judge(s, "neutral", 50.0, 4.0)) for s in t["models"]["ar"]["samples"]]
    t.update(tokenization="byte", note="n", vocab_size=260, seq_len=8, val_chunks=2,
             reference={"judge": "ar-byte", "num_samples": 4, "judge_ppl": 12.0, "unigram_entropy": 3.1,
                        "distinct_4": 0.8, "repetition_4": 0.01,
                        "other_judges": {"neutral": {"judge_ppl": 49.0, "unigram_entropy": 4.1}}})
    text = tokenization_markdown(t)
    assert "| judge ppl | entropy | MAUVE | distinct-4 | repetition-4 | neutral ppl | neutral entropy |" in text
    assert "| 12.00 | 3.100 | n/a | 0.800 | 0.010 | 49.00 | 4.100 |" in text  # the reference row (no MAUVE)
    assert "| mdlm | b |" in text and "| 52.00 | 4.050 |" in text
    assert "headline (batched, judged by neutral): 3.00x" in text


def test_timing_drift_compares_ar_timed_first_and_last():
    t = tok(sample("b", 3000, 20.0, 3.01))
    assert timing_drift(t) is None  # AR was not timed again (it ran alone, or before this was recorded)
    t["models"]["ar"]["timing_end"] = {"setting": "ar (KV cache)", "tokens_per_s": 900, "single_tokens_per_s": 230}
    text = timing_drift(t)
    assert "1,000 -> 900 tok/s batched (-10%)" in text and "200 -> 230 tok/s one sequence at a time (+15%)" in text
