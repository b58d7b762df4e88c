"""Step-level batching: forward passes of concurrent requests, run together.

Each request's sampler runs in its own thread with its own torch.Generator, exactly as `Pipeline` runs it
alone. The samplers see `BatchedModel` instead of the model: its forward hands the call to one forward
thread and waits. That thread gathers the calls that arrive together and runs them in as few passes as it may:

* a model that declares `row_batching` (our Transformer and DiT, LlamaLike; bidirectional ones): calls of any
  length, with or without a mask, explicit positions or a KV cache, share a pass, each right-padded under a
  key mask with its own positions and its own cache (merge.py says how, and what still runs alone). Calls
  are grouped longest first so that padding adds at most `max_padding` of a pass's real work (merge.plan);
* any other model: plain calls `model(ids, t)` of one length are concatenated along the batch; other calls
  run alone.

A row's logits do not depend on the other rows of the batch (no cross-row ops, padded keys masked), so a
request samples the same text batched or alone, up to float rounding of matmuls of other shapes.

All model work runs in the forward thread, so no two forwards ever run at once.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from .merge import RowCall, plan, row_call, run_rows


@dataclass
class _Call:
    ids: torch.Tensor
    t: torch.Tensor | None
    plain: bool  # model(ids) or model(ids, t): may share a pass; else it runs alone
    row: RowCall | None = None  # set when the model merges calls of any length, mask, positions or cache
    args: tuple = ()  # the call exactly as the sampler made it, replayed when it runs alone
    kwargs: dict = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    result: torch.Tensor | None = None
    error: BaseException | None = None

    def key(self) -> tuple:
        # only calls of one shape and kind can share a forward; t is per row, so only its presence matters
        return (self.ids.shape[1], self.t is None, self.ids.device)


@dataclass
class BatchStats:
    """What the forward thread did: for /metrics and for tests."""

    forwards: int = 0  # model forward passes run
    calls: int = 0  # sampler calls served (>= forwards when calls share a pass)
    rows: int = 0
    solo: int = 0  # calls that could not share a pass with any other kind of call (see merge.py)
    shared_cached: int = 0  # calls with a KV cache that shared a pass
    shared_padded: int = 0  # calls that shared a pass with a longer call (right-padded under a key mask)
    max_calls_per_forward: int = 0
    on_forward: Callable[[int, int], None] | None = None  # (calls, rows) of each forward

    def record(self, calls: int, rows: int) -> None:
        self.forwards += 1
        self.calls += calls
        self.rows += rows
        self.max_calls_per_forward = max(self.max_calls_per_forward, calls)
        if self.on_forward is not None:
            self.on_forward(calls, rows)


class ForwardBatcher:
    """The one thread that runs the model, gathering concurrent calls into shared forward passes.

    A gathered batch runs as soon as every active request is waiting on a forward (nobody else can join),
    or `max_wait_s` after its first call arrived (a request busy between steps is not waited for longer).
    `enabled=False` runs each call alone, in arrival order: the same code path, for comparisons.
    """

    def __init__(self, model: nn.Module, enabled: bool = True, max_wait_s: float = 0.02, max_rows: int = 512,
                 autocast: Callable[[], contextlib.AbstractContextManager] | None = None, max_padding: float = 0.5):
        self.model, self.enabled, self.max_wait_s, self.max_rows = model, enabled, max_wait_s, max_rows
        self.max_padding = max_padding  # padded work a merged pass may add, as a fraction of its real work
        cfg = getattr(model, "cfg", None)  # a token's work outside attention, in keys read (merge.plan)
        self.token_keys = 6.0 * (getattr(cfg, "d_model", None) or getattr(cfg, "hidden_size", None) or 0)
        self.autocast = autocast or contextlib.nullcontext
        self.stats = BatchStats()
        self._cond = threading.Condition()
        self._pending: list[_Call] = []
        self._active = 0  # requests inside a sampler run (they may call forward)
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="textdiffusion-forward", daemon=True)
        self._thread.start()

    # ---- the requests' side ------------------------------------------------------------------
    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Marks a request as running a sampler, so that a batch waits for its next call."""
        with self._cond:
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()  # a batch may now be complete

    def forward(self, ids: torch.Tensor, t: torch.Tensor | None, plain: bool, args: tuple = (),
                kwargs: dict | None = None) -> torch.Tensor:
        kwargs = kwargs or {}
        row = row_call(self.model, ids, args, kwargs) if self.enabled else None
        call = _Call(ids, t, plain, row, args, kwargs)
        with self._cond:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            self._pending.append(call)
            self._cond.notify_all()
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=10)

    # ---- the forward thread --------------------------------------------------------------------
    def _take(self) -> list[_Call] | None:
        """Wait for a batch to be ready and take it (None: closed)."""
        with self._cond:
            while not self._pending:
                if self._closed:
                    return None
                self._cond.wait()
            if not self.enabled:
                return [self._pending.pop(0)]
            deadline = time.monotonic() + self.max_wait_s
            while len(self._pending) < self._active and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            taken, self._pending = self._pending, []
            return taken

    def _loop(self) -> None:
        while True:
            calls = self._take()
            if calls is None:
                return
            try:
                self._serve(calls)
            except BaseException as exc:  # noqa: BLE001 - a waiting request must never hang on a dead thread
                for call in calls:
                    if not call.done.is_set():
                        call.error = exc
                        call.done.set()

    def _serve(self, calls: list[_Call]) -> None:
        """Group the calls taken together and run each group in as few passes as it may."""
        groups: dict[tuple, list[_Call]] = {}
        for call in calls:
            if call.row is not None:  # t's dtype too: torch.cat would promote a float32 t to float64
                t = call.row.t
                key = ("rows", None if t is None else (t.dtype, t.device), call.ids.device, call.ids.dtype)
                groups.setdefault(key, []).append(call)
            elif call.plain:
                groups.setdefault(call.key(), []).append(call)
            else:
                groups[("solo", id(call))] = [call]
        for key, group in groups.items():
            if key[0] == "rows":
                parts = ([[0]] if len(group) == 1 else
                         plan([c.row for c in group], self.max_rows, self.max_padding, self.token_keys))
                for part in parts:
                    self._run_merged([group[i] for i in part])
                continue
            start = 0
            while start < len(group):  # cap the rows of one forward (memory)
                end, rows = start + 1, group[start].ids.shape[0]
                while end < len(group) and rows + group[end].ids.shape[0] <= self.max_rows:
                    rows += group[end].ids.shape[0]
                    end += 1
                self._run(group[start:end])
                start = end

    def _run(self, group: list[_Call]) -> None:
        try:
            with torch.no_grad(), self.autocast():  # not inference_mode: samplers edit logits in place
                if len(group) == 1:
                    call = group[0]
                    call.result = self.model(call.ids, *call.args, **call.kwargs)
                    if not call.plain and call.row is None:
                        self.stats.solo += 1
                else:
                    ids = torch.cat([c.ids for c in group])
                    t = None if group[0].t is None else torch.cat([c.t.reshape(-1).expand(len(c.ids)) for c in group])
                    out = self.model(ids) if t is None else self.model(ids, t)
                    for call, part in zip(group, out.split([len(c.ids) for c in group])):
                        call.result = part
            self.stats.record(len(group), sum(len(c.ids) for c in group))
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting request, which re-raises it
            for call in group:
                call.error = exc
        finally:
            for call in group:
                call.done.set()


    def _run_merged(self, group: list[_Call]) -> None:
        """One pass for calls of any length, mask, positions or cache (merge.py)."""
        if len(group) == 1:
            return self._run(group)
        try:
            with torch.no_grad(), self.autocast():
                outs = run_rows(self.model, [c.row for c in group])
        except Exception:  # noqa: BLE001 - one call's own error (alone it raises too) must not fail its mates
            for call in group:  # no cache has moved: each stores only after the whole pass (RowsKVCache.finish)
                self._run([call])
            return None
        for call, out in zip(group, outs):
            call.result = out
        self.stats.shared_cached += sum(c.row.cache is not None for c in group)
        self.stats.shared_padded += sum(c.row.new < group[0].row.new for c in group)
        self.stats.record(len(group), sum(len(c.ids) for c in group))
        for call in group:
            call.done.set()
        return None


class BatchedModel(nn.Module):
    """Stands in for the model inside samplers: same attributes, forward through the batcher."""

    def __init__(self, model: nn.Module, batcher: ForwardBatcher):
        super().__init__()
        self.inner = model
        self.cfg = getattr(model, "cfg", None)
        self._batcher = batcher

    def __getattr__(self, name: str) -> object:
        try:
            return super().__getattr__(name)  # parameters, buffers, submodules
        except AttributeError:
            if name.startswith("__") or "_modules" not in self.__dict__:  # copy/pickle probing a bare instance
                raise
            return getattr(self._modules["inner"], name)  # new_cache() and whatever else a sampler reads

    def forward(self, ids: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Calls share passes as the module docstring says; any other call runs alone, as made."""
        t = args[0] if len(args) == 1 else kwargs.get("t")
        extra = {k: v for k, v in kwargs.items() if k != "t" and v is not None and not (k == "commit" and v is True)}
        plain = not extra and len(args) <= 1 and (t is None or isinstance(t, torch.Tensor))
        return self._batcher.forward(ids, t, plain, args, kwargs)
