"""Build a small multiple-choice lm-eval task from held-out Shakespeare (the shipped model's validation plays).

Each item: the 3 lines of dialogue before a line (context), then 4 choices for the next line: the true line and
3 distractors drawn from other places in the held-out plays, with lengths within 25% of the true line's (so
length alone does not give the answer). Chance is 25%. Usage: python benchmarks/lm_eval_shakespeare.py OUT_DIR [N]
"""

import json
import random
import sys
from pathlib import Path

from textdiffusion.data.corpus import iter_documents, plan_split


def dialogue_lines(text: str) -> list[list[str]]:
    """Runs of consecutive spoken lines (no blank line between), without speaker names or stage directions."""
    runs, run = [], []
    for raw in text.splitlines():
        line = raw.strip()
        speech = (line and not line.isupper() and not line.startswith(("[", "Enter", "Exit", "Exeunt", "SCENE", "ACT"))
                  and not line.endswith(".") or (line and line[0].islower()))
        if line and not line.isupper() and speech and 20 <= len(line) <= 70:
            run.append(line)
        else:
            if len(run) >= 4:
                runs.append(run)
            run = []
    return runs


def main(out: Path, n: int = 200, seed: int = 0) -> None:
    plan = plan_split("shakespeare", 0.05, 0)  # the shipped model's split (config.json: val_fraction, split_seed)
    runs = [r for doc in iter_documents("shakespeare", "validation", plan=plan) for r in dialogue_lines(doc)]
    pool = [line for r in runs for line in r]
    rng = random.Random(seed)
    items = []
    candidates = [(r, i) for r in runs for i in range(3, len(r))]
    rng.shuffle(candidates)
    for run, i in candidates:
        true = run[i]
        near = [x for x in pool if x != true and 0.75 * len(true) <= len(x) <= 1.25 * len(true)]
        if len(near) < 3:
            continue
        choices = [true, *rng.sample(near, 3)]
        rng.shuffle(choices)
        items.append({"context": "\n".join(run[i - 3:i]), "choices": choices, "label": choices.index(true)})
        if len(items) == n:
            break
    out.mkdir(parents=True, exist_ok=True)
    (out / "shakespeare_next_line.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    (out / "shakespeare_next_line.yaml").write_text(
        "task: shakespeare_next_line\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {out / 'shakespeare_next_line.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{context}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\n"
        "target_delimiter: \"\\n\"\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n")
    print(f"{len(items)} items from {len(runs)} dialogue runs in the held-out plays")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 200)
