"""The forward batcher: calls at different diffusion times (and of different row counts) that share one forward
pass each get their own t and their own rows back. A model that echoes its inputs shows what each call received."""

from __future__ import annotations

import threading

import torch

from textdiffusion.serve.batcher import BatchedModel, ForwardBatcher


class Echo(torch.nn.Module):
    """Returns [B, L, 2]: the ids and the t each row was given."""

    def __init__(self):
        super().__init__()
        self.calls: list[int] = []

    def forward(self, ids, t=None):
        self.calls.append(ids.shape[0])
        t_rows = torch.full((ids.shape[0],), -1.0) if t is None else t.reshape(-1).float().expand(ids.shape[0])
        return torch.stack([ids.float(), t_rows[:, None].expand_as(ids)], dim=-1)


def run_together(batcher: ForwardBatcher, model: BatchedModel, requests: list[tuple[torch.Tensor, torch.Tensor]]):
    results: list[torch.Tensor | None] = [None] * len(requests)
    entered = threading.Barrier(len(requests))

    def worker(i: int) -> None:
        with batcher.active():
            entered.wait()  # every request is active before any call: the batch waits for all of them
            results[i] = model(*requests[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


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
