"""Admission, worker threads and cancellation: each request runs `Pipeline` in its own thread.

The pipeline the workers call shares the model through `BatchedModel`, so their forward passes are
batched (see batcher.py). A bounded number of requests run at once and a bounded number wait; past
that, `Overloaded` (HTTP 429). A request is cancelled between two steps, through the samplers' on_step
hook: when its client goes away, when it runs past its wall-time limit, or when every row has stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..api.pipeline import Pipeline
from ..core.precision import inference_context
from ..samplers import Frame
from .batcher import BatchedModel, ForwardBatcher


@dataclass
class Limits:
    """Per-request and server-wide limits (the CLI's --max-* options)."""

    max_length: int = 1024  # tokens of a request, for samplers that write past the model's length
    max_steps: int = 1024
    max_n: int = 8
    max_seconds: float = 120.0  # wall time of one request, from the moment it starts running
    max_running: int = 64  # requests sampling at once (their steps share forward passes)
    max_queue: int = 64  # requests waiting for a slot; one more gets HTTP 429
    max_score_chars: int = 200_000  # text per /v1/score request
    max_score_work: int = 2_000_000  # tokens x t_samples of one /v1/score request (each draw is a forward pass)
    max_input_chars: int = 100_000  # text a completion, chat or infill request brings (all messages together)


DONE = object()  # the last event of every job: its future is settled


class Overloaded(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"the server is busy (queue full): retry after {retry_after} s")
        self.retry_after = retry_after


class Stop(Exception):
    """Raised inside the sampler (from on_step) to end a request between two steps."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class JobRecord:
    """What a finished request did (kept for /metrics and tests)."""

    id: int
    status: str  # done, stopped (every row hit a stop sequence), cancelled, timeout, error
    frames: int  # sampler frames seen (the start, then one per step)
    seconds: float


@dataclass
class Job:
    id: int
    loop: asyncio.AbstractEventLoop
    max_seconds: float
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    future: asyncio.Future | None = None
    cancel_reason: str | None = None
    frames: int = 0
    started: float | None = None
    last_frame: Frame | None = None
    on_frame: Callable[[Frame], bool] | None = None  # returns True when the work may end (every row stopped)

    def cancel(self, reason: str = "cancelled") -> None:
        self.cancel_reason = self.cancel_reason or reason

    _lock: threading.Lock = field(default_factory=threading.Lock)
    _backlog: int = 0  # mergeable events pushed and not yet taken
    _newest: Any = None  # the newest of them, while it waits in the queue

    def push(self, event: Any) -> None:
        """Hand an event from the worker thread to the request's coroutine."""
        with contextlib.suppress(RuntimeError):  # the event loop has closed: the server is stopping
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def push_merging(self, event: Any, merge: Callable[[Any, Any], None], max_backlog: int = 256) -> None:
        """Like push, but once `max_backlog` events wait unread (a client slower than its sampler), fold new
        ones into the newest waiting event with `merge(waiting, new)`: memory stays bounded, no text is lost."""
        with self._lock:
            if self._backlog >= max_backlog and self._newest is not None:
                merge(self._newest, event)
                return
            self._backlog += 1
            self._newest = event
        self.push(event)

    def taken(self, event: Any) -> None:
        """The coroutine calls this for each event it takes, before reading it."""
        with self._lock:
            if self._newest is event:
                self._newest = None  # being sent now: never merge into it again
            self._backlog = max(self._backlog - 1, 0)

    def on_step(self, frame: Frame) -> None:
        """The samplers' on_step hook: runs in the worker thread after every step."""
        self.frames += 1
        self.last_frame = frame
        if self.on_frame is not None and self.on_frame(frame):
            raise Stop("stopped")
        self.check()

    def check(self) -> None:
        """Raise Stop when the request's client has gone or it ran past its time limit (worker thread)."""
        if self.cancel_reason is not None:
            raise Stop(self.cancel_reason)
        if self.started is not None and time.monotonic() - self.started > self.max_seconds:
            raise Stop("timeout")


class CheckedModel(nn.Module):
    """The model for work without steps (scoring): every forward first checks that its job may go on, so
    a request is stopped between two forward passes when its client leaves or its time runs out."""

    def __init__(self, model: nn.Module, job: Job):
        super().__init__()
        self.inner, self.cfg, self._job = model, getattr(model, "cfg", None), job

    def __getattr__(self, name: str) -> object:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("__") or "_modules" not in self.__dict__:
                raise
            return getattr(self._modules["inner"], name)

    def forward(self, *args, **kwargs):
        self._job.check()
        return self.inner(*args, **kwargs)


class Engine:
    def __init__(self, pipe: Pipeline, limits: Limits | None = None, batching: bool = True,
                 max_wait_s: float = 0.02, max_padding: float = 0.5):
        self.base, self.limits = pipe, limits or Limits()

        self.batcher = ForwardBatcher(pipe.model, enabled=batching, max_wait_s=max_wait_s, max_padding=max_padding,
                                      autocast=lambda: inference_context(pipe.precision, pipe.device))
        self.pipe = Pipeline(BatchedModel(pipe.model, self.batcher), pipe.process, pipe.tokenizer, pipe.config,
                             pipe.precision)
        self.executor = ThreadPoolExecutor(max_workers=self.limits.max_running, thread_name_prefix="textdiffusion")
        # tokenizing and chat templates: never in the event loop, never many at once
        self.prep = ThreadPoolExecutor(max_workers=2, thread_name_prefix="textdiffusion-prep")
        self._lock = threading.Lock()
        self.running = 0
        self.queued = 0
        self._next_id = 0
        self.history: deque[JobRecord] = deque(maxlen=1024)
        self._recent_seconds: deque[float] = deque(maxlen=64)
        self.on_finish: Callable[[JobRecord], None] | None = None

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the queue ahead, at the recent pace."""
        pace = sorted(self._recent_seconds)[len(self._recent_seconds) // 2] if self._recent_seconds else 1.0
        return max(1, math.ceil(pace * (1 + self.queued / max(self.limits.max_running, 1))))

    def submit(self, work: Callable[[Job], Any]) -> Job:
        """Run `work(job)` in a worker thread; its result lands in `job.future`. Raises Overloaded."""
        with self._lock:
            if self.running + self.queued >= self.limits.max_running + self.limits.max_queue:
                raise Overloaded(self.retry_after())
            self.queued += 1
            self._next_id += 1
            job_id = self._next_id
        loop = asyncio.get_running_loop()
        job = Job(job_id, loop, self.limits.max_seconds)
        job.future = loop.create_future()
        self.executor.submit(self._run, job, work)
        return job

    def _settle(self, job: Job, result: Any = None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if job.future.done():
                return
            if isinstance(error, Stop) and error.reason == "cancelled":
                job.future.set_result(None)  # nobody is left to read it
            elif error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)
            job.events.put_nowait(DONE)
        with contextlib.suppress(RuntimeError):  # the event loop has closed: the server is stopping
            job.loop.call_soon_threadsafe(settle)

    def _run(self, job: Job, work: Callable[[Job], Any]) -> None:
        with self._lock:
            self.queued -= 1
            self.running += 1
        job.started = time.monotonic()
        status, result, error = "done", None, None
        try:
            if job.cancel_reason is not None:  # its client left while it waited
                raise Stop(job.cancel_reason)
            with self.batcher.active():
                result = work(job)
        except Stop as stop:
            status, error = stop.reason, stop
        except BaseException as exc:  # noqa: BLE001 - the request's coroutine turns it into an HTTP error
            status, error = "error", exc
        finally:
            seconds = time.monotonic() - job.started
            with self._lock:
                self.running -= 1
                if status == "done":
                    self._recent_seconds.append(seconds)
            if status == "done" and getattr(result, "stopped_early", False):
                status = "stopped"  # every row reached a stop sequence: the sampler was ended early
            record = JobRecord(job.id, status, job.frames, seconds)
            self.history.append(record)
            if self.on_finish is not None:
                self.on_finish(record)
        self._settle(job, result, error)

    async def prepare(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` (tokenizing, a chat template) in a helper thread: the event loop stays free."""
        return await asyncio.get_running_loop().run_in_executor(self.prep, lambda: fn(*args))

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.prep.shutdown(wait=False, cancel_futures=True)
        self.batcher.close()
