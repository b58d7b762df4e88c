"""Sampling speed of the budget runs of benchmarks/gpu/sweep.py on the GPU, alone on the card, for the issue-17
speed-quality frontier: every sampler setting of the `small` suite for each family, 32 samples in one batch and
2 more one at a time, with the bench's own measuring code (bench/measure.py). The texts are kept for judging
elsewhere (benchmarks/gpu/report.py --frontier).

    python3 benchmarks/gpu/frontier.py SWEEP_DIR OUT.json [--families ar mdlm ...] [--precision bf16]

OUT.json is rewritten after every setting, so a time limit keeps what was measured.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from textdiffusion.bench.measure import MeasureRequest, measure
from textdiffusion.bench.suites import get_suite


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--families", nargs="+", default=["ar", "mdlm", "bd3-4", "d3pm-embedding", "d3pm-absorbing"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--single", type=int, default=2)
    args = ap.parse_args()
    suite, rows = get_suite("small"), []
    for fam in args.families:
        folder = args.sweep_dir / f"budget-{fam}"
        if not (folder / "checkpoint" / "config.json").is_file():
            print(f"{fam}: no checkpoint in {folder}, skipped", flush=True)
            continue
        steps = json.loads((folder / "checkpoint" / "config.json").read_text()).get("trained", {}).get("steps")
        for setting in suite.family(fam).settings:
            start = time.perf_counter()
            req = MeasureRequest(model=str(folder), sampler=setting.sampler, options=setting.options,
                                 num_samples=args.samples, batch=args.samples, device=args.device,
                                 precision=args.precision, single_samples=args.single)
            try:
                res = asdict(measure(req))
                res.pop("ids")
            except Exception as exc:  # one setting's failure must not lose the others
                res = {"error": f"{type(exc).__name__}: {exc}"}
            rows.append({"family": fam, "setting": setting.name(), "trained_steps": steps, **res})
            print(f"{fam} {setting.name()}: {res.get('tokens_per_s', 0):,.0f} tok/s batched, "
                  f"{res.get('single_tokens_per_s') or 0:,.0f} single ({time.perf_counter() - start:.1f} s)"
                  f"{' ' + res['error'] if 'error' in res else ''}", flush=True)
            args.out.write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
