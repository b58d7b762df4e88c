"""Generate with one sampler setting in a fresh process, and report speed and peak memory.

A fresh process per setting keeps timings from disturbing each other and makes peak resident
memory (CPU) or peak allocated memory (CUDA) a number about this setting alone. Run as
`python -m textdiffusion.bench.measure REQUEST.json RESULT.json`.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..core.errors import UserError


@dataclass
class MeasureRequest:
    model: str  # model or checkpoint folder
    sampler: str
    options: dict
    num_samples: int
    batch: int
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    threads: int = 0  # torch threads; 0 leaves PyTorch's default
    single_samples: int = 0  # then this many more, one sequence at a time (latency, batch 1)
    min_timing_s: float = 0.0  # repeat each timed pass (same seeds) until this much time is spent; keep the fastest


@dataclass
class MeasureResult:
    texts: list[str]
    ids: list[list[int]]
    seconds: float  # generation only: no loading, no warm-up
    nfe: int  # forward passes, summed over batches
    tokens_per_s: float
    seconds_per_sample: float
    peak_memory_mb: float  # CUDA: peak allocated; CPU: peak resident set of the whole process
    memory_kind: str
    single_tokens_per_s: float | None = None  # one sequence at a time: what an interactive user waits for
    timing_repeats: int = 1  # passes timed (the batched and the single-sequence ones alike); the fastest is kept


MAX_TIMING_REPEATS = 5


def fastest(timed_pass: Callable[[], float], first: float, min_seconds: float) -> tuple[float, int]:
    """The least time of a pass, repeated until `min_seconds` are spent (at most MAX_TIMING_REPEATS): as
    timeit's advice, the minimum is the time least disturbed by the rest of the machine."""
    timings = [first]
    while sum(timings) < min_seconds and len(timings) < MAX_TIMING_REPEATS:
        timings.append(timed_pass())
    return min(timings), len(timings)


def _peak_rss_mb() -> float:
    # Linux: VmHWM is this process's own high-water mark; ru_maxrss would keep the parent's across exec
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)


def measure(req: MeasureRequest) -> MeasureResult:
    from ..api.pipeline import Pipeline

    if req.threads:
        torch.set_num_threads(req.threads)
    pipe = Pipeline.from_pretrained(req.model, device=req.device, precision=req.precision)
    cuda = pipe.device.type == "cuda"
    pipe.generate(num_samples=1, sampler=req.sampler, seed=req.seed, **req.options)  # warm-up: first-call costs
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    def generate(n: int, seed: int):
        out = pipe.generate(num_samples=n, sampler=req.sampler, seed=seed, **req.options)
        if cuda:
            torch.cuda.synchronize()
        return out

    def batched() -> list:
        return [generate(min(req.batch, req.num_samples - start), req.seed + start)
                for start in range(0, req.num_samples, req.batch)]

    def single() -> list:
        return [generate(1, req.seed + 10_000 + i) for i in range(req.single_samples)]

    def seconds_of(outs: list) -> float:
        return sum(out.seconds for out in outs)

    outs = batched()
    texts = [t for out in outs for t in out.texts]
    ids = [row for out in outs for row in out.ids.tolist()]
    nfe = sum(out.nfe for out in outs)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mb()
    seconds, repeats = fastest(lambda: seconds_of(batched()), seconds_of(outs), req.min_timing_s)
    n_tokens = sum(len(row) for row in ids)
    single_tps = None
    if req.single_samples:
        outs = single()
        single_tokens = sum(out.ids.numel() for out in outs)
        single_seconds, _ = fastest(lambda: seconds_of(single()), seconds_of(outs), req.min_timing_s)
        single_tps = single_tokens / single_seconds
    return MeasureResult(texts, ids, seconds, nfe, n_tokens / max(seconds, 1e-9), seconds / len(texts), peak,
                         "cuda peak allocated" if cuda else "peak RSS", single_tps, repeats)


def measure_in_subprocess(req: MeasureRequest, workdir: Path) -> MeasureResult:
    """Run `measure` in a fresh Python process; its errors come back as UserError."""
    workdir.mkdir(parents=True, exist_ok=True)
    request, result = workdir / "request.json", workdir / "result.json"
    request.write_text(json.dumps(asdict(req)))
    result.unlink(missing_ok=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "textdiffusion.bench.measure", str(request), str(result)],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not result.is_file():
        raise UserError(f"measuring {req.sampler} {req.options} on {req.model} failed "
                        f"(after {time.perf_counter() - start:.0f}s):\n{proc.stderr[-2000:]}")
    return MeasureResult(**json.loads(result.read_text()))


def main(argv: list[str]) -> int:
    request, result = Path(argv[0]), Path(argv[1])
    out = measure(MeasureRequest(**json.loads(request.read_text())))
    tmp = result.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(out)))
    tmp.replace(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
