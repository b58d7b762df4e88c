"""Load test of `textdiffusion serve`: 1 / 8 / 32 / 64 concurrent streaming clients, batching on vs off, for the
ancestral sampler and the cached one (`threshold` with Fast-dLLM's prefix / dual KV caches), plus the cost of one
forward pass against its batch size (what batching can gain at most on this machine).

    python benchmarks/serve_load.py                                   # the shipped model, everything
    python benchmarks/serve_load.py --markdown /tmp/bench_serve.md    # also write the section there
    python benchmarks/serve_load.py --write                           # append to BENCHMARKS.md + JSON
    python benchmarks/serve_load.py --quick                           # a tiny untrained model: checks the script

One server per setting (`python -m textdiffusion serve`, with --no-batching for "off") serves every client count
and sampler in turn. The clients of a round start at once and stream /v1/completions, each with its own seed,
prompt, length (a quarter write half as many tokens: another length, which shares passes under a key mask) and
options; the N clients of a round are the first N of the 64. Checked: every stream ends with [DONE]; its text is
compared with the same request run alone through Pipeline (`mismatched`: a merged pass computes the same
logits up to float rounding, so a near-tie may rarely break the other way). Measured: generated tokens per
second over the round, latency per request (p50 / p99, from sending to [DONE]), and the forward passes the
round ran (from /metrics). The pass-cost table times `model(ids)` in this process, no server: the full length
(the ancestral sampler's pass) and one block over a cached context (the cached sampler's step).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from common import command_line, machine_line, markdown_table, record, timed, utc_now

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.core.precision import inference_context
from textdiffusion.pretrained import DEFAULT_MODEL

PROMPTS = ["ROMEO.\n", "KING.\nWhat say you", "To be, or not to be", "HAMLET.\n", "", "First Citizen.\nWe are",
           "O, ", "JULIET.\nGood night"]
NAME = "bench"
SAMPLER_SETS = ("ancestral", "cached")


def workload(pipe: Pipeline, clients: int, sampler_set: str, steps: int, block_length: int) -> list[dict]:
    """One request per client: its own seed, prompt, length and options."""
    out = []
    for i in range(clients):
        prompt = PROMPTS[i % len(PROMPTS)]
        prompt_len = len(pipe.tokenizer.encode(prompt)) if prompt else 0
        length = pipe.seq_len // 2 if i % 4 == 3 else pipe.seq_len
        body = {"model": NAME, "prompt": prompt, "seed": 1000 + i, "stream": True, "max_tokens": length - prompt_len}
        if sampler_set == "ancestral":
            body.update(sampler="ancestral", steps=steps if i % 3 else max(1, steps // 2))
        else:
            body.update(sampler="threshold", options={"cache": "dual" if i % 2 else "prefix",
                                                      "block_length": block_length})
        out.append(body)
    return out


def alone(pipe: Pipeline, body: dict) -> str:
    """The request run directly through Pipeline, nothing else running: the reference text."""
    prompt = body["prompt"]
    prompt_len = len(pipe.tokenizer.encode(prompt)) if prompt else 0
    options = {**body.get("options", {}), **({"steps": body["steps"]} if "steps" in body else {})}
    out = pipe.generate(length=prompt_len + body["max_tokens"], prompt=prompt or None, sampler=body["sampler"],
                        seed=body["seed"], progress=False, **options)
    return pipe.tokenizer.decode(out.ids[0, prompt_len:].tolist(), mask_char=None)


async def one_stream(client: httpx.AsyncClient, url: str, body: dict) -> dict:
    start = time.perf_counter()
    text, first, done = "", None, False
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        if response.status_code != 200:
            return {"error": f"{response.status_code} {(await response.aread())[:200]!r}"}
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"error": chunk["error"]["message"]}
            first = first if first is not None else time.perf_counter() - start
            text += "".join(c["text"] for c in chunk["choices"])
    return {"text": text, "done": done, "latency": time.perf_counter() - start, "first": first}


async def run_clients(url: str, bodies: list[dict]) -> tuple[list[dict], float]:
    limits = httpx.Limits(max_connections=len(bodies) + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(1800.0), limits=limits) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(one_stream(client, url, b) for b in bodies))
        return results, time.perf_counter() - start


def start_server(model: str, port: int, batching: bool, clients: int, device: str,
                 wait_ms: float, max_seconds: float) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "textdiffusion", "serve", model, "--port", str(port), "--name", NAME,
           "--device", device, "--max-running", str(clients), "--max-queue", str(clients),
           "--batch-wait-ms", str(wait_ms), "--max-seconds", str(max_seconds)]
    if not batching:
        cmd.append("--no-batching")
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {server.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    server.terminate()
    raise RuntimeError("the server did not start in 120 s")


COUNTS = {"forward_passes": "textdiffusion_forward_passes_total",
          "forward_calls": "textdiffusion_forward_calls_total",
          "calls_solo": "textdiffusion_forward_calls_solo",
          "calls_shared_cached": "textdiffusion_forward_calls_shared_cached",
          "calls_shared_padded": "textdiffusion_forward_calls_shared_padded"}


def forward_counts(url: str) -> dict[str, float]:
    """The server's forward counters (passes, calls; calls that ran alone, shared with a cache, padded)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("textdiff")}
    return {key: values.get(name, 0.0) for key, name in COUNTS.items()}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values) or [float("nan")]
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(url: str, bodies: list[dict], reference: list[str]) -> dict:
    """One round: all `bodies` at once against the running server."""
    before = forward_counts(url)
    results, wall = asyncio.run(run_clients(url, bodies))
    counts = {key: value - before[key] for key, value in forward_counts(url).items()}
    errors = [r["error"] for r in results if "error" in r]
    ok = [r for r in results if "error" not in r]
    latencies = [r["latency"] for r in ok]
    tokens = sum(b["max_tokens"] for b, r in zip(bodies, results) if "error" not in r)
    return {"clients": len(bodies), "errors": errors, "unfinished": sum(1 for r in ok if not r["done"]),
            "mismatched": sum(1 for r, ref in zip(results, reference) if r.get("text") != ref),
            "wall_s": wall, "p50_s": percentile(latencies, 0.5), "p99_s": percentile(latencies, 0.99),
            "first_chunk_p50_s": percentile([r["first"] for r in ok if r["first"] is not None], 0.5),
            "tokens": tokens, "tokens_per_s": tokens / wall, **counts}


def time_pass(fn, repeats: int) -> float:
    """Median seconds of fn() after one warm-up call."""
    return timed(fn, repeats, keep=statistics.median)


def pass_costs(pipe: Pipeline, batch_sizes: list[int], block_length: int, repeats: int) -> list[dict]:
    """Seconds of one forward pass against its rows: the full length, and a block over a cached context."""
    model, length = pipe.model.eval(), pipe.seq_len
    block = min(block_length, length // 2)  # the block sits after one block of cached context
    timed = getattr(model.cfg, "time_conditioning", False)
    out = []
    with torch.no_grad(), inference_context(pipe.precision, pipe.device):  # as the server runs its passes
        for b in batch_sizes:
            ids = torch.randint(0, pipe.tokenizer.vocab_size, (b, length), device=pipe.device)
            t = torch.full((b,), 0.5, device=pipe.device) if timed else None
            full = time_pass(lambda: model(ids, t), repeats)  # noqa: B023 - timed right here
            cache = model.new_cache()
            model(ids, t, cache=cache)
            cache.keep(torch.cat([torch.arange(block), torch.arange(2 * block, length)]))  # a dual cache
            positions = torch.arange(block, 2 * block, device=pipe.device)
            step = time_pass(lambda: model(ids[:, :block], t, cache=cache, commit=False,  # noqa: B023
                                           positions=positions), repeats)  # noqa: B023
            out.append({"rows": b, "full_s": full, "block_s": step})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--clients", default="1,8,32,64", help="client counts, comma-separated")
    ap.add_argument("--samplers", default=",".join(SAMPLER_SETS), help="ancestral, cached or both")
    ap.add_argument("--steps", type=int, default=32, help="ancestral steps of most requests (a third use half)")
    ap.add_argument("--block-length", type=int, default=32, help="the cached sampler's block")
    ap.add_argument("--batch-sizes", default="1,2,4,8,16,32,64", help="rows of the timed single passes")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per pass size (the median is kept)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--port", type=int, default=8791)
    ap.add_argument("--batch-wait-ms", type=float, default=20.0, help="the server's --batch-wait-ms")
    ap.add_argument("--max-seconds", type=float, default=1800.0,
                    help="the server's --max-seconds: high, so that the slowest round still completes and is "
                         "measured (a request past it counts as not completed)")
    ap.add_argument("--reference", default=None,
                    help="JSON file caching the texts of the requests run alone (computed and written if absent)")
    ap.add_argument("--markdown", default=None, help="also write the section to this file")
    ap.add_argument("--write", action="store_true", help="append the section to BENCHMARKS.md and save JSON")
    ap.add_argument("--quick", action="store_true",
                    help="a tiny untrained model, 1 and 4 clients, few steps: checks the script, times nothing real")
    args = ap.parse_args()
    tmp = None
    if args.quick:
        tmp = tempfile.TemporaryDirectory(prefix="serve_load_")
        args.model = tiny_model(Path(tmp.name))
        args.clients, args.steps, args.block_length, args.batch_sizes, args.repeats = "1,4", 4, 8, "1,4", 2
    clients = sorted({int(c) for c in args.clients.split(",")})
    sets = [s for s in args.samplers.split(",") if s]
    if any(s not in SAMPLER_SETS for s in sets):
        ap.error(f"--samplers takes {', '.join(SAMPLER_SETS)}")

    pipe = Pipeline.from_pretrained(args.model, device=args.device)
    costs = pass_costs(pipe, [int(b) for b in args.batch_sizes.split(",")], args.block_length, args.repeats)
    bodies = {s: workload(pipe, max(clients), s, args.steps, args.block_length) for s in sets}
    reference = references(pipe, bodies, args.reference)
    del pipe
    runs = []
    for batching in (True, False):
        port = args.port + int(not batching)
        server = start_server(args.model, port, batching, max(clients), args.device, args.batch_wait_ms,
                              args.max_seconds)
        try:
            for s in sets:  # warm-up: the first request of a fresh server pays for lazy setup
                measure(f"http://127.0.0.1:{port}", bodies[s][:1], reference[s][:1])
            for s in sets:
                for n in clients:
                    run = {"batching": batching, "sampler": s,
                           **measure(f"http://127.0.0.1:{port}", bodies[s][:n], reference[s][:n])}
                    runs.append(run)
                    print(json.dumps(run), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
    table, costs_table, notes = tables(runs, costs, args)
    print(table, costs_table, notes, sep="\n\n")
    payload = {"runs": runs, "pass_costs": costs,
               "workload": {"clients": clients, "samplers": sets, "steps": args.steps,
                            "block_length": args.block_length}}
    if args.markdown:
        section = (f"## Serving load test ({utc_now().isoformat().replace('+00:00', 'Z')})\n\n"
                   f"Command: `{command_line()}`\n\nMachine: {machine_line(args.device)}\n\n{table}\n\n"
                   f"{costs_table}\n\n{notes}\n")
        Path(args.markdown).write_text(section)
        Path(args.markdown).with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    if args.write and not args.quick:
        record("serve-load", "Serving load test", f"{table}\n\n{costs_table}", payload, args.device, notes)
    if tmp is not None:
        tmp.cleanup()


def references(pipe: Pipeline, bodies: dict[str, list[dict]], path: str | None) -> dict[str, list[str]]:
    """Each request run alone through Pipeline (cached in `path` when given and its workload is the same)."""
    start = time.perf_counter()
    cached = Path(path) if path else None
    saved = json.loads(cached.read_text()) if cached is not None and cached.is_file() else None
    if saved is not None and saved["bodies"] == bodies:
        return saved["texts"]
    texts = {s: [alone(pipe, b) for b in bs] for s, bs in bodies.items()}
    if cached is not None:
        cached.write_text(json.dumps({"bodies": bodies, "texts": texts}))
    print(f"reference: {sum(map(len, bodies.values()))} requests alone through Pipeline "
          f"({time.perf_counter() - start:.1f} s)", flush=True)
    return texts


def tables(runs: list[dict], costs: list[dict], args) -> tuple[str, str, str]:
    headers = ["sampler", "clients", "batching", "tokens/s", "x tokens/s", "p50 latency (s)", "p99 latency (s)",
               "first chunk p50 (s)", "forward passes", "calls per pass", "cached calls shared", "calls alone",
               "completed", "mismatched"]
    off = {(r["sampler"], r["clients"]): r for r in runs if not r["batching"]}
    rows = []
    for r in sorted(runs, key=lambda r: (r["sampler"], r["clients"], not r["batching"])):
        base = off[(r["sampler"], r["clients"])]["tokens_per_s"]
        rows.append([r["sampler"], r["clients"], "on" if r["batching"] else "off", r["tokens_per_s"],
                     r["tokens_per_s"] / base if base > 0 else "n/a", r["p50_s"], r["p99_s"], r["first_chunk_p50_s"],
                     int(r["forward_passes"]), r["forward_calls"] / max(r["forward_passes"], 1),
                     int(r["calls_shared_cached"]), int(r["calls_solo"]),
                     r["clients"] - len(r["errors"]) - r["unfinished"], r["mismatched"]])
    table = markdown_table(headers, rows)
    one_full, one_block = costs[0]["full_s"] / costs[0]["rows"], costs[0]["block_s"] / costs[0]["rows"]
    costs_table = markdown_table(
        ["rows per pass", "full pass (ms)", "ms per row", "rows/s vs 1 row", "cached block pass (ms)",
         "ms per row (block)", "rows/s vs 1 row (block)"],
        [[c["rows"], 1e3 * c["full_s"], 1e3 * c["full_s"] / c["rows"], one_full / (c["full_s"] / c["rows"]),
          1e3 * c["block_s"], 1e3 * c["block_s"] / c["rows"], one_block / (c["block_s"] / c["rows"])]
         for c in costs])
    notes = (f"Workload: the first N of {max(r['clients'] for r in runs)} streaming clients at once, each its own "
             f"seed; `ancestral`: {args.steps} steps (a third {max(1, args.steps // 2)}); `cached`: `threshold` "
             f"with cache prefix / dual (alternating), block_length {args.block_length}. A quarter write half the "
             f"model's length. Server --batch-wait-ms {args.batch_wait_ms:g}. `x tokens/s`: against batching off "
             "at the same clients. `mismatched` counts streams whose text differs from the request run alone. "
             "The pass-cost table is one forward pass of the model in this process: `rows/s vs 1 row` is the "
             "most any batching can gain at that batch size on this machine.")
    return table, costs_table, notes


def tiny_model(folder: Path) -> str:
    """--quick: an untrained byte-level masked model of 48 tokens, saved as a model folder the server loads."""
    from textdiffusion.data.tokenizers import ByteTokenizer
    from textdiffusion.models import ModelConfig, Transformer
    from textdiffusion.processes import MaskedDiffusion

    tok = ByteTokenizer()
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, seq_len=48, d_model=32, n_layers=1, n_heads=2))
    pipe = Pipeline(model, MaskedDiffusion(vocab_size=tok.vocab_size, mask_id=tok.mask_id), tok, {})
    return str(pipe.save_pretrained(folder / "tiny"))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
