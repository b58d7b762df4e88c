"""Control table (issue 15.2): success and fluency of guided generation, Diffusion-LM vs the MDLM baseline.

python3 benchmarks/continuous/control.py DLM_DIR DLM_CLASSIFIER MDLM_DIR MDLM_CLASSIFIER OUT.json [n] [steps] [families]
(families: "diffusion-lm,mdlm" by default; one of them runs that family's rows alone; a 9th argument keeps only the
controls whose name contains it)

Controls: contains " love"; [EOS] at position L/2 = 64 and none before (length); the verse/prose classifier asked for
prose (the minority class of the corpus). Diffusion-LM: unguided, then a sweep of the fluency weight lambda and
the Adagrad step size (3 Adagrad steps per denoising step); MDLM: unguided, then the Taylor tilt at two strengths
gamma. Every setting draws n samples at seed 0 with `steps` denoising steps. Fluency: perplexity under
SmolLM2-135M-Instruct, which generated none of the texts (each text cut at its first [EOS]), with the unigram
entropy of its tokens; success: the control's own check on the ids (the rule for the attribute).
"""
import json
import sys
import time

from textdiffusion import Pipeline
from textdiffusion.eval.diversity import diversity_report
from textdiffusion.eval.judge import load_judge
from textdiffusion.guidance import Attribute, AttributeClassifier, Contains, Guidance, Length, tilted, verse_or_prose

dlm_dir, dlm_cls, mdlm_dir, mdlm_cls, out_path = sys.argv[1:6]
n = int(sys.argv[6]) if len(sys.argv) > 6 else 16
steps = int(sys.argv[7]) if len(sys.argv) > 7 else 32
families = sys.argv[8].split(",") if len(sys.argv) > 8 else ["diffusion-lm", "mdlm"]
only = sys.argv[9] if len(sys.argv) > 9 else ""
t0 = time.perf_counter()
judge = load_judge("smollm2")
print(f"judge loaded in {time.perf_counter() - t0:.0f}s", flush=True)


def controls(pipe, classifier_dir):
    tok = pipe.tokenizer
    eos_at = pipe.seq_len // 2
    classifier = AttributeClassifier.load(classifier_dir)
    return {'contains " love"': Contains(tok.encode(" love")), "length: [EOS] at L/2": Length(eos_at, tok.eos_id),
            "attribute: prose": Attribute(classifier, "prose", lambda ids: tok.decode(ids, mask_char=None),
                                          verse_or_prose)}


rows = []


def run(family, pipe, setting, checks, cut_at_eos=False, **options):
    """n samples with these options, judged once; one row per control in `checks` (its success rate). The judge
    reads each text without its special tokens, or up to its first [EOS] (`cut_at_eos`, the length control);
    empty texts are left out of the judge's average."""
    start = time.perf_counter()
    out = pipe.generate(num_samples=n, steps=steps, seed=0, **options)
    seconds = time.perf_counter() - start
    texts = [pipe.tokenizer.decode(row.tolist(), mask_char=None, stop_at_eos=cut_at_eos) for row in out.ids]
    scored = judge.score([t for t in texts if t.strip()] or ["."])
    for name, control in checks.items():
        row = {"family": family, "control": name, "setting": setting, "judged": len([t for t in texts if t.strip()]),
               "success": float(control.satisfied(out.ids).float().mean()), "judge_ppl": scored.perplexity,
               "entropy": diversity_report(scored.token_ids)["unigram_entropy"], "nfe": out.nfe,
               "seconds": seconds, "example": texts[0][:160]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    with open(out_path, "w") as fh:
        json.dump(rows, fh, indent=1)


if "diffusion-lm" in families:
    dlm = Pipeline.from_pretrained(dlm_dir)
    dlm_controls = controls(dlm, dlm_cls)
    run("diffusion-lm", dlm, "unguided", dlm_controls)
    sweep = [(0.01, 0.1), (0.01, 0.05), (0.01, 0.02), (1.0, 0.02)]
    for name, control in dlm_controls.items():
        if only not in name:
            continue
        for fluency, lr in sweep:
            run("diffusion-lm", dlm, f"lambda={fluency}, lr={lr}, 3 Adagrad steps", {name: control},
                cut_at_eos=name.startswith("length"), guidance=Guidance([control], fluency=fluency, lr=lr, steps=3))
if "mdlm" in families:
    mdlm = Pipeline.from_pretrained(mdlm_dir)
    mdlm_controls = controls(mdlm, mdlm_cls)
    run("mdlm", mdlm, "unguided", mdlm_controls)
    for name, control in mdlm_controls.items():
        if only not in name:
            continue
        for gamma in (3.0, 30.0):
            guided = Pipeline(tilted(mdlm.model, Guidance([control]), mdlm.process.mask_id, gamma), mdlm.process,
                              mdlm.tokenizer, mdlm.config)
            run("mdlm", guided, f"Taylor tilt, gamma={gamma}", {name: control}, cut_at_eos=name.startswith("length"))
