"""Load test of `textdiffusion serve`: many concurrent streaming clients on loopback, batching on vs off.

    python benchmarks/serve_load.py                       # 64 clients against the shipped model
    python benchmarks/serve_load.py --clients 16 --steps 16 --markdown /tmp/bench_serve.md
    python benchmarks/serve_load.py --write               # append the section to BENCHMARKS.md + JSON

For each setting a real server is started in its own process (`python -m textdiffusion serve`, with
--no-batching for "off"), and the clients, all at once, stream /v1/completions (OpenAI chunks, append
mode) with their own seed, prompt, step count and sampler; a quarter ask for a shorter text (another
sequence length, which cannot share a forward pass with the rest). Checked: every stream ends with
[DONE] and its text equals that request run alone through Pipeline with its seed (nothing dropped or
mixed between streams). Measured: latency per request (p50 / p99, from sending to [DONE]), time to the
first chunk, and generated tokens per second over the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from common import command_line, machine_line, markdown_table, record, utc_now

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.pretrained import DEFAULT_MODEL

PROMPTS = ["ROMEO.\n", "KING.\nWhat say you", "To be, or not to be", "HAMLET.\n", "", "First Citizen.\nWe are",
           "O, ", "JULIET.\nGood night"]
NAME = "bench"


def workload(pipe: Pipeline, clients: int, steps: int) -> list[dict]:
    """One request per client: a seed, prompt, length, step count and sampler of its own."""
    out = []
    for i in range(clients):
        prompt = PROMPTS[i % len(PROMPTS)]
        prompt_len = len(pipe.tokenizer.encode(prompt)) if prompt else 0
        short = i % 4 == 3
        out.append({"model": NAME, "prompt": prompt, "seed": 1000 + i, "stream": True,
                    "max_tokens": 64 - prompt_len if short else pipe.seq_len - prompt_len,
                    "steps": steps if i % 3 else steps // 2,
                    "sampler": "confidence" if i % 5 == 4 else "ancestral"})
    return out


def alone(pipe: Pipeline, body: dict) -> str:
    """The request run directly through Pipeline, nothing else running: the reference text."""
    prompt = body["prompt"]
    prompt_len = len(pipe.tokenizer.encode(prompt)) if prompt else 0
    out = pipe.generate(length=prompt_len + body["max_tokens"], prompt=prompt or None, sampler=body["sampler"],
                        seed=body["seed"], steps=body["steps"], progress=False)
    return pipe.tokenizer.decode(out.ids[0, prompt_len:].tolist(), mask_char=None)


async def one_stream(client: httpx.AsyncClient, url: str, body: dict) -> dict:
    start = time.perf_counter()
    text, first, done, chunks = "", None, False, 0
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
            chunks += 1
            text += "".join(c["text"] for c in chunk["choices"])
    return {"text": text, "done": done, "latency": time.perf_counter() - start, "first": first, "chunks": chunks}


async def run_clients(url: str, bodies: list[dict]) -> tuple[list[dict], float]:
    limits = httpx.Limits(max_connections=len(bodies) + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(one_stream(client, url, b) for b in bodies))
        return results, time.perf_counter() - start


def start_server(model: str, port: int, batching: bool, clients: int, device: str,
                 wait_ms: float) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "textdiffusion", "serve", model, "--port", str(port), "--name", NAME,
           "--device", device, "--max-running", str(clients), "--max-queue", str(clients),
           "--batch-wait-ms", str(wait_ms)]
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


def forward_counts(url: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith(("textdiffusion_forward_passes_total", "textdiffusion_forward_calls_total"))}
    return values.get("textdiffusion_forward_passes_total", 0.0), values.get("textdiffusion_forward_calls_total", 0.0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(args, bodies: list[dict], reference: list[str], batching: bool, port: int) -> dict:
    server = start_server(args.model, port, batching, args.clients, args.device, args.batch_wait_ms)
    url = f"http://127.0.0.1:{port}"
    try:
        results, wall = asyncio.run(run_clients(url, bodies))
        passes, calls = forward_counts(url)
    finally:
        server.terminate()
        server.wait(timeout=30)
    errors = [r["error"] for r in results if "error" in r]
    ok = [r for r in results if "error" not in r]
    latencies = [r["latency"] for r in ok]
    tokens = sum(b["max_tokens"] for b, r in zip(bodies, results) if "error" not in r)
    return {"batching": batching, "clients": len(bodies), "errors": errors,
            "unfinished": sum(1 for r in ok if not r["done"]),
            "mismatched": sum(1 for r, ref in zip(results, reference) if r.get("text") != ref),
            "wall_s": wall, "p50_s": percentile(latencies, 0.5), "p99_s": percentile(latencies, 0.99),
            "first_chunk_p50_s": percentile([r["first"] for r in ok if r["first"] is not None] or [0.0], 0.5),
            "tokens": tokens, "tokens_per_s": tokens / wall, "forward_passes": passes, "forward_calls": calls}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--steps", type=int, default=32, help="steps of most requests (a third use half)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--port", type=int, default=8791)
    ap.add_argument("--batch-wait-ms", type=float, default=20.0, help="the server's --batch-wait-ms")
    ap.add_argument("--reference", default=None,
                    help="JSON file caching the texts of the requests run alone (computed and written if absent)")
    ap.add_argument("--markdown", default=None, help="also write the section to this file")
    ap.add_argument("--write", action="store_true", help="append the section to BENCHMARKS.md and save JSON")
    args = ap.parse_args()

    pipe = Pipeline.from_pretrained(args.model, device=args.device)
    bodies = workload(pipe, args.clients, args.steps)
    start = time.perf_counter()
    cached = Path(args.reference) if args.reference else None
    saved = json.loads(cached.read_text()) if cached is not None and cached.is_file() else None
    if saved is not None and saved["bodies"] == bodies:
        reference = saved["texts"]
    else:
        reference = [alone(pipe, b) for b in bodies]
        if cached is not None:
            cached.write_text(json.dumps({"bodies": bodies, "texts": reference}))
    print(f"reference: {len(bodies)} requests alone through Pipeline ({time.perf_counter() - start:.1f} s)",
          flush=True)
    del pipe
    runs = []
    for batching in (True, False):
        run = measure(args, bodies, reference, batching, args.port + int(not batching))
        runs.append(run)
        print(json.dumps(run), flush=True)
    on, off = runs
    headers = ["batching", "clients", "completed", "mismatched", "p50 latency (s)", "p99 latency (s)",
               "first chunk p50 (s)", "tokens/s", "forward passes", "calls per pass"]
    rows = [["on" if r["batching"] else "off", r["clients"], r["clients"] - len(r["errors"]) - r["unfinished"],
             r["mismatched"], r["p50_s"], r["p99_s"], r["first_chunk_p50_s"], r["tokens_per_s"],
             int(r["forward_passes"]), r["forward_calls"] / max(r["forward_passes"], 1)] for r in runs]
    table = markdown_table(headers, rows)
    ratio = (f"Batching on / off: tokens/s x{on['tokens_per_s'] / off['tokens_per_s']:.2f}, p50 latency "
             f"x{on['p50_s'] / off['p50_s']:.2f}, p99 latency x{on['p99_s'] / off['p99_s']:.2f}.")
    notes = (f"{ratio}\n\nWorkload: {args.clients} streaming clients at once (append mode), each its own seed; "
             f"steps {args.steps} (a third {args.steps // 2}); server --batch-wait-ms {args.batch_wait_ms:g}; "
             "a fifth use sampler `confidence`; a quarter write "
             "64 tokens, the rest fill the model's 128. `mismatched` counts streams whose text differs from the "
             "same request run alone through Pipeline.")
    print(table)
    print(notes)
    payload = {"runs": runs, "workload": {"clients": args.clients, "steps": args.steps}}
    if args.markdown:
        section = (f"## Serving load test ({utc_now().isoformat().replace('+00:00', 'Z')})\n\n"
                   f"Command: `{command_line()}`\n\nMachine: {machine_line(args.device)}\n\n{table}\n\n{notes}\n")
        Path(args.markdown).write_text(section)
        Path(args.markdown).with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    if args.write:
        record("serve-load", "Serving load test", table, payload, args.device, notes)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
