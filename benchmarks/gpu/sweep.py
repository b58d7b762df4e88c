"""Many small trainings of the `small` suite's byte-level backbone at once on one GPU, for the issue-17 ablation
table and budget plot (benchmarks/gpu/plans.py lists the jobs).

    python3 benchmarks/gpu/sweep.py budget ablation --out DIR [--parallel 12] [--deadline-s 420] [--stop-s 480]

A job is one `Trainer` run in its own process (a 4 x 256 model leaves an H100 mostly idle, so several run side by
side); jobs start in the plan's order and none starts after the deadline. After training, each job scores a fixed
set of 512 validation windows (the same windows and the same noise draws for every job: paired comparisons) with the
EMA weights, 4 draws of t per window, and budget jobs write 32 samples for judging elsewhere. DIR/results.json
gathers every job's metrics rows, final score and samples; a job that failed or was not started says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plans import PLANS, Job, job_config  # noqa: E402  (benchmarks/gpu/plans.py)

FINAL_WINDOWS, FINAL_T_SAMPLES, NUM_SAMPLES = 512, 4, 32


def run_job(job: Job, root: Path, device: str, extra: list[str] | None = None) -> dict:
    """Train one job, then score and (budget jobs) sample it; returns what results.json keeps."""
    import torch

    from textdiffusion.processes.likelihood import nelbo
    from textdiffusion.train.setup import validation_chunks
    from textdiffusion.train.trainer import Trainer

    cfg = job_config(job, root / job.name, device, extra)
    start = time.perf_counter()
    trainer = Trainer(cfg)
    trainer.run()
    out: dict = {"train_seconds": time.perf_counter() - start, "tokens": trainer.tokens_seen}
    val = validation_chunks(cfg, trainer.tok, FINAL_WINDOWS, trainer.split)
    model = trainer.inference_model()
    with trainer._autocast():
        res = nelbo(model, trainer.process, val, t_samples=FINAL_T_SAMPLES, batch_size=128, seed=1234)
    out.update(final_nelbo=res.nats_per_token, final_stderr=res.stderr, final_windows=int(val.shape[0]))
    if job.samples:
        from textdiffusion.api.pipeline import Pipeline

        pipe = Pipeline.from_pretrained(root / job.name, device=device)
        gen = pipe.generate(num_samples=NUM_SAMPLES, seed=0, progress=False, **job.sampler)
        out["samples"] = gen.texts
        del pipe
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def worker(job_name: str, root: Path, device: str, extra: list[str]) -> None:
    job = next(j for jobs in PLANS.values() for j in jobs if j.name == job_name)
    result_file = root / job.name / "result.json"
    try:
        result = run_job(job, root, device, extra)
    except BaseException as exc:  # noqa: BLE001 -- recorded in results.json, never lost
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(result))


def gather(job: Job, root: Path, state: str) -> dict:
    folder = root / job.name
    row: dict = {"name": job.name, "plan": job.plan, "variant": job.variant, "seed": job.seed,
                 "overrides": job.overrides, "state": state}
    metrics = folder / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        row["evals"] = [r for r in rows if "val_nelbo" in r or "val_loss" in r]
        row["last_train"] = next((r for r in reversed(rows) if "loss" in r), None)
    result = folder / "result.json"
    if result.is_file():
        row.update(json.loads(result.read_text()))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("plans", nargs="*", help=f"which job lists to run, in this order: {', '.join(PLANS)}")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--parallel", type=int, default=12, help="jobs running at once (default 12)")
    ap.add_argument("--deadline-s", type=float, default=420.0, help="no job starts after this many seconds")
    ap.add_argument("--stop-s", type=float, default=0.0,
                    help="stop jobs still running after this many seconds (0: never); their scored steps are kept")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--limit", type=int, default=0, help="run only the first N jobs (a smoke test)")
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help="run only the jobs whose name contains NAME (repeatable)")
    ap.add_argument("--threads", type=int, default=1, help="OMP threads per job (default 1: many jobs share a GPU)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an override for every job, after the plan's (a smoke test: --set train.steps=4)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.out, args.device, args.set)
    unknown = [p for p in args.plans if p not in PLANS]
    if unknown or not args.plans:
        ap.error(f"name one or more plans of: {', '.join(PLANS)}")
    jobs = [j for name in args.plans for j in PLANS[name]]
    jobs = [j for j in jobs if not args.only or any(o in j.name for o in args.only)]
    jobs = jobs[:args.limit] if args.limit else jobs
    args.out.mkdir(parents=True, exist_ok=True)
    start, running, states = time.monotonic(), {}, {j.name: "not started (deadline)" for j in jobs}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    queue = list(jobs)
    while queue or running:
        while queue and len(running) < args.parallel and time.monotonic() - start < args.deadline_s:
            job = queue.pop(0)
            log = (args.out / f"{job.name}.log").open("w")
            running[job.name] = (subprocess.Popen([sys.executable, __file__, "--worker", job.name, "--out",
                                                   str(args.out), "--device", args.device,
                                                   *[f"--set={o}" for o in args.set]],
                                                  stdout=log, stderr=subprocess.STDOUT, env=env), job)
            states[job.name] = "running"
            print(f"[{time.monotonic() - start:6.0f} s] start {job.name}", flush=True)
        if queue and time.monotonic() - start >= args.deadline_s:
            queue.clear()
        if args.stop_s and time.monotonic() - start >= args.stop_s:
            for name, (proc, _job) in running.items():
                proc.terminate()
                proc.wait()
                states[name] = "stopped (time limit)"
            running.clear()
        for name, (proc, _job) in list(running.items()):
            if proc.poll() is not None:
                states[name] = "finished" if proc.returncode == 0 else f"exit {proc.returncode}"
                print(f"[{time.monotonic() - start:6.0f} s] {states[name]} {name}", flush=True)
                del running[name]
        time.sleep(1.0)
    results = [gather(j, args.out, states[j.name]) for j in jobs]
    (args.out / "results.json").write_text(json.dumps({"wall_s": time.monotonic() - start, "jobs": results}))
    done = [r for r in results if "final_nelbo" in r]
    print(f"\n{len(done)} of {len(jobs)} jobs finished in {time.monotonic() - start:.0f} s", flush=True)
    for r in done:
        print(f"  {r['name']:<40} {r['final_nelbo']:.4f} ± {r['final_stderr']:.4f}  ({r['train_seconds']:.0f} s)")
    for r in results:
        if "error" in r:
            print(f"  {r['name']}: {r['error']}")


if __name__ == "__main__":
    main()
