"""Step-level batching: concurrent requests with different lengths, step counts, samplers and n share forward
passes, and each still gets exactly the text it gets alone with its seed; 16 concurrent streams arrive whole."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

REQUESTS = [  # (prompt, max_tokens, steps, sampler, n, seed)
    ("To be", 20, 8, "ancestral", 1, 0),
    ("", 48, 12, "ancestral", 2, 1),
    ("ROMEO.", 30, 6, "confidence", 1, 2),
    ("To be", 20, 8, "ancestral", 1, 3),
    ("Oh", 40, None, "first_hitting", 1, 4),  # one token per pass: no steps
    ("", 44, 10, "remdm", 1, 5),
    ("What", 20, None, "threshold", 1, 6),
    ("To be", 43, 8, "ancestral", 3, 7),
]


def alone(pipe, prompt, max_tokens, steps, sampler, n, seed) -> list[str]:
    """The request run directly through Pipeline, nothing else running; a completion ends at its first [EOS]."""
    prompt_len = len(pipe.tokenizer.encode(prompt)) if prompt else 0
    out = pipe.generate(num_samples=n, length=prompt_len + max_tokens, prompt=prompt or None, sampler=sampler,
                        seed=seed, **({} if steps is None else {"steps": steps}))
    return [pipe.tokenizer.decode(row[prompt_len:].tolist(), mask_char=None, stop_at_eos=True) for row in out.ids]


async def send_all(url: str, model_name: str, stream: bool, requests: list[tuple] | None = None) -> list[list[str]]:
    async def one(client, prompt, max_tokens, steps, sampler, n, seed) -> list[str]:
        body = {"model": model_name, "prompt": prompt, "max_tokens": max_tokens, "sampler": sampler, "n": n,
                "seed": seed, "stream": stream, **({} if steps is None else {"steps": steps})}
        if not stream:
            response = await client.post(f"{url}/v1/completions", json=body)
            assert response.status_code == 200, response.text
            return [c["text"] for c in response.json()["choices"]]
        texts, done = [""] * n, False
        async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    for choice in json.loads(line[6:])["choices"]:
                        texts[choice["index"]] += choice["text"]
        assert done  # the stream ended properly, nothing dropped
        return texts

    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(*(one(client, *r) for r in requests or REQUESTS))


@pytest.mark.parametrize("time_conditioning", [False, True])
def test_batched_requests_sample_what_they_sample_alone(time_conditioning, tiny_pipe, tiny_server, model_name):
    reference = tiny_pipe(time_conditioning=time_conditioning)
    expected = [alone(reference, *r) for r in REQUESTS]
    with tiny_server(tiny_pipe(time_conditioning=time_conditioning), max_wait_s=0.02) as (url, app):
        got = asyncio.run(send_all(url, model_name, stream=False))
        stats = app.state.engine.batcher.stats
    assert got == expected
    assert stats.max_calls_per_forward > 1 and stats.calls > stats.forwards  # passes really were shared


def test_batching_off_gives_the_same_texts(tiny_pipe, tiny_server, model_name):
    with tiny_server(tiny_pipe(), batching=False) as (url, app):
        got = asyncio.run(send_all(url, model_name, stream=False))
        stats = app.state.engine.batcher.stats
    assert stats.max_calls_per_forward == 1
    assert got == [alone(tiny_pipe(), *r) for r in REQUESTS]


def test_sixteen_concurrent_streams_arrive_whole_and_unmixed(tiny_pipe, tiny_server, model_name):
    requests = [("To be" if i % 2 else "", 24 + i, 6 + i % 5, "ancestral", 1, 100 + i) for i in range(16)]
    reference = tiny_pipe()
    expected = [alone(reference, *r) for r in requests]
    with tiny_server(tiny_pipe()) as (url, app):
        got = asyncio.run(send_all(url, model_name, stream=True, requests=requests))
        engine = app.state.engine
    assert got == expected  # each stream's text is its own request's, with its own seed
    assert [r.status for r in engine.history].count("done") == 16
    assert engine.batcher.stats.calls > engine.batcher.stats.forwards


def test_a_cancelled_request_leaves_its_batch_mates_intact(model_name, slow_pipe, tiny_pipe, tiny_server):
    pipe, slow = slow_pipe(delay=0.002)
    reference = tiny_pipe()
    kept = [("To be", 30, 40, "ancestral", 1, 11), ("", 40, 40, "ancestral", 2, 12)]
    expected = [alone(reference, *r) for r in kept]

    async def run(url: str) -> list[list[str]]:
        async def leaver(client):
            body = {"model": model_name, "max_tokens": 40, "steps": 400, "seed": 13, "stream": True,
                    "stream_mode": "denoise", "options": {"cache": False}}
            async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
                seen = 0
                async for line in response.aiter_lines():
                    seen += line.startswith("data: ")
                    if seen == 5:
                        return  # leaves mid-way, while the others still share its passes

        async with httpx.AsyncClient(timeout=60) as client:
            results = await asyncio.gather(leaver(client), send_all(url, model_name, stream=True, requests=kept))
            return results[1]

    with tiny_server(pipe) as (url, app):
        got = asyncio.run(run(url))
        engine = app.state.engine
        deadline = time.monotonic() + 10
        while len(engine.history) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        statuses = sorted(r.status for r in engine.history)
    assert got == expected
    assert statuses == ["cancelled", "done", "done"]
    assert slow.calls < 300  # the leaver's 400 steps did not all run
