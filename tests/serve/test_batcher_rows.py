"""The forward batcher: calls at different diffusion times (and of different row counts) that share one forward
pass each get their own t and their own rows back. A model that echoes its inputs shows what each call received.
With a real model, the fast samplers' KV-cached, masked and shorter calls share passes and sample what they
sample alone; the stats count what shared."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

import pytest
import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.data.tokenizers import ByteTokenizer
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.processes import BlockDiffusion, MaskedDiffusion
from textdiffusion.serve.batcher import BatchedModel, ForwardBatcher
from textdiffusion.serve.merge import row_call


class Echo(torch.nn.Module):
    """Returns [B, L, 2]: the ids and the t each row was given."""

    def __init__(self):
        super().__init__()
        self.calls: list[int] = []

    def forward(self, ids, t=None):
        self.calls.append(ids.shape[0])
        t_rows = torch.full((ids.shape[0],), -1.0) if t is None else t.reshape(-1).float().expand(ids.shape[0])
        return torch.stack([ids.float(), t_rows[:, None].expand_as(ids)], dim=-1)


def run_at_once(batcher: ForwardBatcher, jobs: list[Callable[[], object]]) -> list[object]:
    """Each job in its own thread, every one active in the batcher before any calls (so a pass waits for all of
    them); a job's exception is its result."""
    results: list[object] = [None] * len(jobs)
    entered = threading.Barrier(len(jobs))

    def worker(i: int) -> None:
        with batcher.active():
            entered.wait()
            try:
                results[i] = jobs[i]()
            except Exception as exc:  # noqa: BLE001 - handed to the test, which says what it expects
                results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def run_together(batcher: ForwardBatcher, model: BatchedModel, requests: list[tuple[torch.Tensor, torch.Tensor]]):
    return run_at_once(batcher, [functools.partial(model, *request) for request in requests])


def test_calls_sharing_a_pass_get_their_own_t_and_rows():
    echo = Echo()
    batcher = ForwardBatcher(echo, enabled=True, max_wait_s=5.0)
    model = BatchedModel(echo, batcher)
    requests = [(torch.arange(0, 8).view(2, 4), torch.tensor(0.25)),  # one t for both rows
                (torch.arange(100, 112).view(3, 4), torch.tensor([0.5, 0.75, 1.0])),  # a t per row
                (torch.arange(200, 204).view(1, 4), torch.tensor([0.125]))]
    try:
        results = run_together(batcher, model, requests)
    finally:
        batcher.close()
    assert echo.calls == [6]  # one forward pass for the three calls
    for (ids, t), out in zip(requests, results):
        assert out.shape == (ids.shape[0], 4, 2)
        assert torch.equal(out[..., 0].long(), ids)
        assert torch.equal(out[:, 0, 1], t.reshape(-1).float().expand(ids.shape[0]))


def test_calls_of_other_lengths_run_in_their_own_pass():
    echo = Echo()
    batcher = ForwardBatcher(echo, enabled=True, max_wait_s=5.0)
    model = BatchedModel(echo, batcher)
    requests = [(torch.arange(0, 8).view(2, 4), torch.tensor(0.25)),
                (torch.arange(100, 106).view(1, 6), torch.tensor(0.5))]
    try:
        results = run_together(batcher, model, requests)
    finally:
        batcher.close()
    assert sorted(echo.calls) == [1, 2]
    assert torch.equal(results[1][..., 0].long(), requests[1][0]) and (results[1][..., 1] == 0.5).all()
    assert (results[0][..., 1] == 0.25).all()


# ---- merged passes (serve/merge.py) through the batcher: the fast samplers' KV-cached calls share passes ----

def tiny_masked_model(time_conditioning: bool = False) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=ByteTokenizer().vocab_size, seq_len=40, d_model=32, n_layers=1,
                                    n_heads=2, time_conditioning=time_conditioning))
    with torch.no_grad():  # far from uniform, so that a wrong key or position would change the samples
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def pipes(model: torch.nn.Module) -> dict[str, Pipeline]:
    """The same network under masked diffusion (threshold with its caches) and block diffusion (block)."""
    tok = ByteTokenizer()
    return {"masked": Pipeline(model, MaskedDiffusion(tok.vocab_size, tok.mask_id), tok, {}),
            "block": Pipeline(model, BlockDiffusion(tok.vocab_size, tok.mask_id, block_size=8), tok, {})}


CACHED = [  # (process, prompt, length, seed, sampler options)
    ("masked", "To be", 24, 0, {"sampler": "threshold", "cache": "prefix", "block_length": 8, "threshold": 0.5}),
    ("masked", "Oh", 37, 1, {"sampler": "threshold", "cache": "dual", "block_length": 8, "threshold": 0.5}),
    ("masked", "", 30, 2, {"sampler": "threshold", "cache": "dual", "block_length": 6, "threshold": 0.3}),
    ("block", "To", 27, 3, {"steps": 4}),
    ("block", "", 40, 4, {"steps": 3}),
    ("masked", "What", 16, 5, {"sampler": "ancestral", "steps": 6}),
]


def generate(pipe: Pipeline, prompt: str, length: int, seed: int, options: dict) -> torch.Tensor:
    return pipe.generate(length=length, prompt=prompt or None, seed=seed, num_samples=2, **options).ids


@pytest.mark.parametrize("time_conditioning", [False, True])
def test_cached_samplers_sample_under_merged_passes_what_they_sample_alone(time_conditioning):
    model = tiny_masked_model(time_conditioning)
    requests = [r for r in CACHED if not (time_conditioning and r[0] == "block")]  # block passes no t
    alone = pipes(model)
    expected = [generate(alone[kind], *rest) for kind, *rest in requests]
    batcher = ForwardBatcher(model, enabled=True, max_wait_s=5.0)
    shared = pipes(BatchedModel(model, batcher))
    try:
        got = run_at_once(batcher, [functools.partial(generate, shared[kind], *rest) for kind, *rest in requests])
    finally:
        batcher.close()
    for i, (want, have) in enumerate(zip(expected, got)):
        assert have is not None and torch.equal(have, want), requests[i]
    stats = batcher.stats
    assert stats.solo == 0  # nothing had to run alone
    assert stats.shared_cached > 0 and stats.shared_padded > 0  # cached and shorter calls did share passes
    assert stats.calls > 2 * stats.forwards


def test_stats_count_what_shared_a_pass():
    model = tiny_masked_model()
    causal = Transformer(ModelConfig(vocab_size=model.cfg.vocab_size, seq_len=40, d_model=32, n_layers=1, n_heads=2,
                                     causal=True)).eval()
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)
    requests = [((torch.ones(2, 12, dtype=torch.long),), {}),  # the longest: not padded
                ((torch.ones(1, 7, dtype=torch.long),), {"positions": torch.arange(3, 10)}),  # padded
                ((torch.ones(1, 4, dtype=torch.long),), {"cache": cache, "commit": False})]  # padded, cached
    for inner, solo in ((model, 0), (causal, 2)):  # a causal model's calls with extras run alone
        if inner is causal:
            requests[2][1]["cache"] = causal.new_cache()
        batcher = ForwardBatcher(inner, enabled=True, max_wait_s=5.0)
        wrapped = BatchedModel(inner, batcher)
        try:
            run_at_once(batcher, [functools.partial(wrapped, *args, **kwargs) for args, kwargs in requests])
        finally:
            batcher.close()
        stats = batcher.stats
        assert (stats.calls, stats.solo) == (3, solo)
        if solo == 0:
            assert (stats.forwards, stats.rows, stats.max_calls_per_forward) == (1, 4, 3)
            assert (stats.shared_cached, stats.shared_padded) == (1, 2)
        else:
            assert (stats.forwards, stats.shared_cached, stats.shared_padded) == (3, 0, 0)


def test_a_call_that_fails_alone_fails_alone_in_a_merged_pass():
    model = tiny_masked_model()
    full = model.new_cache()
    with torch.no_grad():
        model(torch.zeros(1, 38, dtype=torch.long), cache=full)  # 38 of 40 slots: 4 more cannot be stored
        good_ids = torch.arange(1, 13).view(2, 6)
        expected = model(good_ids)
    bad = {"cache": full, "positions": torch.arange(4)}
    requests = [((good_ids,), {}), ((torch.ones(1, 4, dtype=torch.long),), bad)]
    assert all(row_call(model, args[0], (), kwargs) is not None for args, kwargs in requests)  # they would merge
    batcher = ForwardBatcher(model, enabled=True, max_wait_s=5.0)
    wrapped = BatchedModel(model, batcher)
    try:
        results = run_at_once(batcher, [functools.partial(wrapped, *args, **kwargs) for args, kwargs in requests])
    finally:
        batcher.close()
    torch.testing.assert_close(results[0], expected)  # its mate's mistake did not fail it
    assert isinstance(results[1], ValueError) and "cannot store" in str(results[1])
    assert full.length == 38
