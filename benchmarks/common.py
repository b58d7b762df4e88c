"""Shared helpers for the benchmark scripts: machine description, markdown tables, recording results.

Results go two places when a script runs with --write: a dated section appended to BENCHMARKS.md at
the repository root, and the raw numbers as JSON in benchmarks/results/<name>-<UTC time>.json.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from textdiffusion.bench.report import cpu_model

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
MD_HEADER = ("# Benchmarks\n\nSpeed measurements written by the scripts in `benchmarks/` (see benchmarks/README.md).\n"
             "Each section gives the exact command, the machine and the UTC date; raw numbers are in "
             "`benchmarks/results/`.\n")


def cpu_bf16_isa() -> str:
    """Which bf16 instructions the CPU has (decides whether bf16 autocast can be faster than fp32)."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    found = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return "+".join(found) if found else "none"


def machine_info(device: str | torch.device) -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    info: dict[str, Any] = {
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "cpus_usable": usable, "bf16_isa": cpu_bf16_isa(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "device": str(device),
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def machine_line(device: str | torch.device) -> str:
    m = machine_info(device)
    where = f"{m['gpu']} (cuda)" if "gpu" in m else m["device"]
    return (f"{m['cpu']}, {m['cpus_usable']} usable cores of {m['cpu_count']}, bf16 ISA: {m['bf16_isa']}; "
            f"torch {m['torch']} with {m['torch_threads']} threads; Python {m['python']}; device {where}")


def command_line() -> str:
    """The command as typed, with the thread-count variables that were set in front of it."""
    env = [f"{k}={os.environ[k]}" for k in THREAD_VARS if k in os.environ]
    script = os.path.relpath(sys.argv[0], REPO_ROOT) if Path(sys.argv[0]).is_file() else sys.argv[0]
    return shlex.join([*env, "python", script, *sys.argv[1:]])


def fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) >= 0.01 else f"{value:.2e}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines)


def timed(fn: Callable[[], Any], repeats: int, keep: Callable[[list[float]], float] = min) -> float:
    """Seconds of fn() over `repeats` calls after one warm-up: the fastest (default) or e.g. statistics.median."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return keep(times)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def record(name: str, title: str, table: str, payload: dict[str, Any], device: str | torch.device,
           notes: str = "") -> tuple[Path, Path]:
    """Append a dated section to BENCHMARKS.md and write the JSON; returns (markdown path, JSON path)."""
    now = utc_now()
    command, machine = command_line(), machine_line(device)
    section = f"\n## {title} ({now.isoformat().replace('+00:00', 'Z')})\n\n"
    section += f"Command: `{command}`\n\nMachine: {machine}\n\n{table}\n"
    if notes:
        section += f"\n{notes.strip()}\n"
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.is_file() else MD_HEADER
    BENCHMARKS_MD.write_text(text.rstrip("\n") + "\n" + section)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem, n = f"{name}-{now.strftime('%Y-%m-%dT%H%M%SZ')}", 1
    out = RESULTS_DIR / f"{stem}.json"
    while out.exists():  # two runs in the same second
        n += 1
        out = RESULTS_DIR / f"{stem}-{n}.json"
    full = {"name": name, "date_utc": now.isoformat(), "command": command, "machine": machine_info(device),
            **payload}
    out.write_text(json.dumps(full, indent=2) + "\n")
    return BENCHMARKS_MD, out
