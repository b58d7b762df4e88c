"""Measure every trained model of a suite: likelihood, infilling, and generation per sampler setting.

Generation quality is judged by one judge per tokenization (the suite's AR judge, trained apart from the
AR baseline and generating nothing, unless another judge is named; bench/judges.py keeps every judge off
the texts its own model wrote), with unigram entropy always beside judge perplexity, MAUVE against held-out
text where a featurizer is available, and the same judge's numbers on real validation text as the
reference. Further judges (`extra_judges`, and the suite's neutral ones such as SmolLM2 where installed)
score the same texts beside it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import torch

from ..api.pipeline import Pipeline
from ..eval.diversity import diversity_report
from ..eval.infill import evaluate_infill
from ..eval.judge import Judge
from ..eval.mauve import mauve_from_features
from ..train.trainer import validation_chunks
from .judges import EXCLUDED, extra_judges, generated_by, main_judge, mauve_featurizer
from .measure import MeasureRequest, MeasureResult, measure_in_subprocess
from .runs import ensure_trained, run_config
from .suites import Suite


def read_curve(run_folder: Path) -> list[dict]:
    """Training loss and validation rows of a run's metrics.jsonl."""
    path = run_folder / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    keep = ("step", "tokens", "loss", "val_nelbo", "val_stderr", "tokens_per_s")
    return [{k: r[k] for k in keep if k in r} for r in rows if "loss" in r or "val_nelbo" in r]


def request(suite: Suite, folder: Path, setting, device: str) -> MeasureRequest:
    """How the suite times and samples one setting of one model."""
    return MeasureRequest(model=str(folder), sampler=setting.sampler, options=dict(setting.options),
                          num_samples=suite.num_samples, batch=suite.sample_batch, seed=0, device=device,
                          precision="auto", single_samples=suite.single_samples, min_timing_s=suite.min_timing_s)


def timing_row(suite: Suite, setting, m: MeasureResult) -> dict:
    """A sample row's setting, passes, speed and memory (its quality numbers are added by the caller)."""
    return {"setting": setting.name(), "sampler": setting.sampler, "options": setting.options,
            "nfe_per_batch": m.nfe / math.ceil(suite.num_samples / suite.sample_batch),
            "tokens_per_s": m.tokens_per_s, "seconds_per_sample": m.seconds_per_sample,
            "single_tokens_per_s": m.single_tokens_per_s, "timing_repeats": m.timing_repeats,
            "peak_memory_mb": m.peak_memory_mb, "memory_kind": m.memory_kind}


def judge_texts(judge: Judge, texts: list[str]) -> dict:
    scored = judge.score(texts)
    return {"judge": judge.name, "judge_ppl": scored.perplexity, "judge_nats_per_token": scored.nats_per_token,
            "judge_tokens": sum(scored.n_tokens), **diversity_report(scored.token_ids)}


def judge_all(judge: Judge, others: list[Judge], texts: list[str], own: tuple[str, ...] = ()) -> dict:
    """The main judge's numbers, with each extra judge's under `other_judges` (by judge name); the judges
    named in `own` generated these texts and score nothing (EXCLUDED)."""
    return {**judge_texts(judge, texts),
            "other_judges": {j.name: dict(EXCLUDED) if j.name in own else judge_texts(j, texts) for j in others}}


def mauve_score(featurize, p_features: torch.Tensor | None, texts: list[str]) -> float:
    """MAUVE of `texts` against the held-out texts' features (nan without a featurizer)."""
    if featurize is None or p_features is None:
        return math.nan
    return mauve_from_features(p_features, featurize(texts)).mauve


def evaluate_tokenization(suite: Suite, tok, root: Path, overrides: list[str], judge_spec: str | None,
                          device: str, families: list[str] | None, log=print,
                          extra_judge_specs: tuple[str, ...] = ()) -> dict:
    fams = [f for f in suite.families if (families is None or f.name in families) and f.runs_with(tok.name)]
    configs = {f.name: run_config(suite, tok, f, root, overrides) for f in fams}
    folders = {}
    for name, cfg in configs.items():
        log(f"[{suite.name}/{tok.name}/{name}] training")
        folders[name] = ensure_trained(cfg, log)
    pipes = {name: Pipeline.from_pretrained(folder, device=device, precision="auto")
             for name, folder in folders.items()}
    first = next(iter(configs))
    val = validation_chunks(configs[first], pipes[first].tokenizer, suite.val_chunks)
    judge, judge_info = main_judge(suite, tok, root, overrides, judge_spec, device, folders, log)
    others = extra_judges(suite, extra_judge_specs, device, log, main=judge_spec)
    own = {name: tuple(j.name for j in others if name in generated_by(j, {name: folders[name]})) for name in folders}
    featurize = mauve_featurizer(suite, [judge, *others], device, log)
    tokenizer = pipes[first].tokenizer
    n = suite.num_samples
    texts = [tokenizer.decode(row.tolist(), mask_char=None) for row in val[: 2 * n]]
    reference_texts, second_half = texts[:n], texts[n:]
    p_features = featurize(reference_texts) if featurize is not None and len(reference_texts) >= 2 else None
    out = {"tokenization": tok.name, "note": tok.note, "vocab_size": tokenizer.vocab_size,
           "seq_len": int(val.shape[1]), "val_chunks": int(len(val)), "judge": judge_info,
           "mauve_features": suite.mauve_features if p_features is not None else None,
           "reference": judge_all(judge, others, reference_texts), "models": {}}
    # MAUVE of other held-out text against the reference texts: the ceiling at this sample size
    out["reference"]["mauve"] = mauve_score(featurize, p_features, second_half) if len(second_half) >= 2 else math.nan
    log(f"[{suite.name}/{tok.name}] judge {judge.name} ({judge_info['kind']}): validation text ppl "
        f"{out['reference']['judge_ppl']:.2f}, entropy {out['reference']['unigram_entropy']:.3f}, "
        f"MAUVE of other held-out text {out['reference']['mauve']:.3f}")
    workdir = root / suite.name / tok.name / "measure"
    for fam in fams:
        name, pipe = fam.name, pipes[fam.name]
        stored = json.loads((folders[name] / "config.json").read_text())
        bound = getattr(pipe.process, "bound", True)  # edit models (DiffusER, Edit Flows) bound no likelihood
        lik = pipe.likelihood(val, t_samples=suite.t_samples, seed=0, batch_size=suite.sample_batch) if bound else None
        row = {"process": stored["process"], "params": sum(p.numel() for p in pipe.model.parameters()),
               "trained": stored.get("trained", {}), "likelihood": asdict(lik) if lik else None,
               "curve": read_curve(folders[name].parent), "infill": [], "samples": []}
        log(f"[{suite.name}/{tok.name}/{name}] " + ("no likelihood bound: generation only" if lik is None else
            f"test NLL {lik.nats_per_token:.4f} nats/token "
            f"({'exact' if lik.exact else f'bound, {lik.t_samples} t-samples'})"))
        examples = val[: suite.infill_examples]
        if bound and not fam.infills:
            log(f"    no infilling: {name} fills no gap")
        for span in suite.infill_spans if bound and fam.infills else ():
            res = evaluate_infill(pipe, examples, span, seed=0, t_samples=suite.t_samples,
                                  batch_size=suite.sample_batch, **fam.infill)
            row["infill"].append({"span": span, "nll": res.nll.nats_per_token, "nll_stderr": res.nll.stderr,
                                  "exact": res.nll.exact, "accuracy": res.accuracy, "examples": res.n_examples,
                                  "sampler": res.sampler, "sampler_options": fam.infill})
            log(f"    infill span {span}: NLL {res.nll.nats_per_token:.3f}, accuracy {res.accuracy:.3f}")
        for setting in fam.settings:
            m = measure_in_subprocess(request(suite, folders[name], setting, device), workdir)
            judged = {**judge_all(judge, others, m.texts, own[name]),
                      "mauve": mauve_score(featurize, p_features, m.texts)}
            row["samples"].append({**timing_row(suite, setting, m), **judged, "example": m.texts[0][:300]})
            single = f" ({m.single_tokens_per_s:.0f} one at a time)" if m.single_tokens_per_s else ""
            extra = "".join(f"; {n}: ppl {j['judge_ppl']:.2f}, entropy {j['unigram_entropy']:.3f}"
                            for n, j in judged["other_judges"].items())
            log(f"    {setting.name():28s} {m.tokens_per_s:9.0f} tok/s{single}  judge ppl {judged['judge_ppl']:8.2f}  "
                f"entropy {judged['unigram_entropy']:.3f}  MAUVE {judged['mauve']:.3f}{extra}")
        out["models"][name] = row
    if "ar" in out["models"] and len(out["models"]) > 1:  # AR was timed first: again now, to show the drift
        kv = next(f for f in fams if f.name == "ar").settings[0]
        m = measure_in_subprocess(request(suite, folders["ar"], kv, device), workdir)
        out["models"]["ar"]["timing_end"] = {"setting": kv.name(), "tokens_per_s": m.tokens_per_s,
                                             "single_tokens_per_s": m.single_tokens_per_s}
        log(f"    {kv.name()} timed again after the last family: {m.tokens_per_s:.0f} tok/s")
    del pipes
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out
