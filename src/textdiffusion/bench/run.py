"""Run a suite end to end: train what is missing, measure everything, write the table, JSON and plots."""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
from pathlib import Path

import torch

from ..core.checks import resolve_device
from ..core.errors import UserError
from .evaluate import evaluate_tokenization
from .report import machine, plot, suite_markdown, write_markdown_section
from .runs import ensure_trained, run_config
from .suites import get_suite


def run_suite(name: str, runs: Path, results_dir: Path, markdown: Path | None, command: str,
              judge: str | None = None, device: str = "cpu", families: list[str] | None = None,
              tokenizations: list[str] | None = None, overrides: list[str] | None = None, log=print,
              extra_judges: tuple[str, ...] = (), settings: list[str] | None = None) -> dict:
    suite = pick_settings(get_suite(name), families, settings)
    resolve_device(device)  # before minutes of training, not after
    toks = check_selection(suite, families, tokenizations)
    start = time.perf_counter()
    results = {"suite": suite.name, "description": suite.description, "date": datetime.date.today().isoformat(),
               "command": command, "machine": machine(), "torch": torch.__version__, "judge": judge or "ar",
               "extra_judges": list(extra_judges),
               "tokenizations": []}
    for tok in toks:
        results["tokenizations"].append(
            evaluate_tokenization(suite, tok, runs, overrides or [], judge, device, families, log, extra_judges))
    results["wall_minutes"] = (time.perf_counter() - start) / 60
    results_dir.mkdir(parents=True, exist_ok=True)
    results["json"] = str(results_dir / f"bench-{suite.name}.json")
    if (families is not None or tokenizations is not None) and Path(results["json"]).is_file():
        results = merge_results(json.loads(Path(results["json"]).read_text()), results, suite)
    results["plots"] = [str(p) for p in plot(results, results_dir)]
    Path(results["json"]).write_text(json.dumps(results, indent=1))
    body = suite_markdown(results)
    if markdown is not None:
        write_markdown_section(markdown, suite.name, body)
    log(body)
    return results


def train_suite(name: str, runs: Path, families: list[str] | None = None, tokenizations: list[str] | None = None,
                overrides: list[str] | None = None, log=print) -> list[Path]:
    """Train (or resume) the suite's missing models and measure nothing: for a long queue of
    trainings on a busy machine, with the measurements taken later on a quiet one."""
    suite = get_suite(name)
    folders = []
    for tok in check_selection(suite, families, tokenizations):
        for fam in suite.families:
            if (families is None or fam.name in families) and fam.runs_with(tok.name):
                log(f"[{suite.name}/{tok.name}/{fam.name}] training")
                folders.append(ensure_trained(run_config(suite, tok, fam, runs, overrides or []), log))
    return folders


def check_selection(suite, families: list[str] | None, tokenizations: list[str] | None) -> list:
    """The suite's tokenizations that --tokenization picks, each with some family that --family picks."""
    for given, known, option in ((families, [f.name for f in suite.families], "--family"),
                                 (tokenizations, [t.name for t in suite.tokenizations], "--tokenization")):
        unknown = [n for n in given or [] if n not in known]
        if unknown:
            raise UserError(f"suite {suite.name!r} has no {option.strip('-')} {', '.join(map(repr, unknown))}: "
                            f"choose {option} from {', '.join(known)}")
    toks = [t for t in suite.tokenizations if (tokenizations is None or t.name in tokenizations)
            and any((families is None or f.name in families) and f.runs_with(t.name) for f in suite.families)]
    if not toks:
        raise UserError(f"no family of suite {suite.name!r} that --family picks runs with a tokenization that "
                        "--tokenization picks: drop one of them")
    return toks


def pick_settings(suite, families: list[str] | None, settings: list[str] | None):
    """The suite with only the sampler settings named in `settings` (None: all of them). Every family that
    --family picks must keep at least one: a family left with none would train and measure nothing."""
    if not settings:
        return suite
    kept = []
    for fam in suite.families:
        chosen = tuple(s for s in fam.settings if s.name() in settings)
        if not chosen and (families is None or fam.name in families):
            raise UserError(f"--setting names none of family {fam.name!r}'s settings: choose from "
                            f"{', '.join(repr(s.name()) for s in fam.settings)}, or leave it out with --family")
        kept.append(dataclasses.replace(fam, settings=chosen))
    known = {s.name() for fam in suite.families for s in fam.settings}
    unknown = [n for n in settings if n not in known]
    if unknown:
        raise UserError(f"suite {suite.name!r} has no sampler setting {', '.join(map(repr, unknown))}: the names "
                        "are those of the table's setting column")
    return dataclasses.replace(suite, families=tuple(kept))


def _merge_samples(name: str, old: dict | None, new: dict, suite) -> dict:
    """A family's new row, keeping the old row's sampler settings that the rerun did not measure (a --setting
    rerun) while the suite's family still has them, in the suite's order."""
    fam = next((f for f in suite.families if f.name == name), None)
    if not old or fam is None or "samples" not in old or "samples" not in new:
        return new
    names = [s.name() for s in fam.settings]
    measured = {s["setting"] for s in new["samples"]}
    samples = new["samples"] + [s for s in old["samples"] if s["setting"] not in measured and s["setting"] in names]
    samples.sort(key=lambda s: names.index(s["setting"]) if s["setting"] in names else len(names))
    return {**new, "samples": samples}


def merge_results(old: dict, new: dict, suite) -> dict:
    """A partial run (some families or tokenizations) updates the suite's stored results: what it
    measured replaces the old rows, everything else is kept, in the suite's order."""
    by_tok = {t["tokenization"]: t for t in old.get("tokenizations", [])}
    for tok in new["tokenizations"]:
        kept = by_tok.get(tok["tokenization"], {}).get("models", {})
        rerun = {name: _merge_samples(name, kept.get(name), row, suite) for name, row in tok["models"].items()}
        models = {**kept, **rerun}
        order = [f.name for f in suite.families]
        tok["models"] = dict(sorted(models.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99))
        by_tok[tok["tokenization"]] = tok
    order = [t.name for t in suite.tokenizations]
    merged = dict(new)
    # the section stays the first run's (its command, date, machine and wall time); each partial rerun is listed
    for key in ("command", "date", "machine", "wall_minutes"):
        if key in old:
            merged[key] = old[key]
    merged["tokenizations"] = sorted(by_tok.values(), key=lambda t: order.index(t["tokenization"])
                                     if t["tokenization"] in order else 99)
    rerun = {key: new[key] for key in ("date", "command", "wall_minutes", "machine") if key in new}
    merged["partial_runs"] = [*old.get("partial_runs", []), rerun]
    return merged
