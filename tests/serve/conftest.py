"""What the serve tests share: a tiny model and a real uvicorn server on a free loopback port."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.data.tokenizers import ByteTokenizer
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.processes import MaskedDiffusion

for _module in ("fastapi", "sse_starlette", "prometheus_client", "httpx"):
    pytest.importorskip(_module, reason="the serve tests need the serve extra: pip install -e '.[serve,dev]'")
uvicorn = pytest.importorskip("uvicorn")

NAME = "tiny"


def _tiny_pipe(seq_len: int = 48, time_conditioning: bool = False, seed: int = 0) -> Pipeline:
    """An untrained byte-level masked model: milliseconds per forward."""
    tok = ByteTokenizer()
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, seq_len=seq_len, d_model=32, n_layers=1, n_heads=2,
                                    time_conditioning=time_conditioning))
    return Pipeline(model, MaskedDiffusion(vocab_size=tok.vocab_size, mask_id=tok.mask_id), tok, {})


class SlowModel(torch.nn.Module):
    """A model whose forward waits for `gate` and then sleeps `delay` seconds: requests that stay
    running as long as a test needs, without a big model."""

    def __init__(self, inner: torch.nn.Module, delay: float = 0.0):
        super().__init__()
        self.inner, self.cfg, self.delay = inner, inner.cfg, delay
        self.gate = threading.Event()
        self.gate.set()
        self.calls = 0

    def new_cache(self):
        return self.inner.new_cache()

    def forward(self, *args, **kwargs):
        self.gate.wait(timeout=30)
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        return self.inner(*args, **kwargs)


def _slow_pipe(delay: float = 0.0) -> tuple[Pipeline, SlowModel]:
    base = _tiny_pipe()
    slow = SlowModel(base.model, delay)
    return Pipeline(slow, base.process, base.tokenizer, {}), slow


@pytest.fixture(scope="session")
def model_name() -> str:
    """The name `tiny_server` serves its model under."""
    return NAME


@pytest.fixture(scope="session")
def tiny_pipe() -> Callable[..., Pipeline]:
    """tiny_pipe(seq_len=48, time_conditioning=False, seed=0): an untrained byte-level masked model."""
    return _tiny_pipe


@pytest.fixture(scope="session")
def slow_pipe() -> Callable[..., tuple[Pipeline, SlowModel]]:
    """slow_pipe(delay=0.0) -> (pipeline, its SlowModel): the tiny model behind a gate and a delay."""
    return _slow_pipe


@pytest.fixture(scope="session")
def serving(free_port) -> Callable:
    """`with serving(app) as url`: run `app` under uvicorn in a thread; yield its base URL; stop it on exit."""

    @contextlib.contextmanager
    def serve(app) -> Iterator[str]:
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning",
                                               timeout_graceful_shutdown=2))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{server.config.port}"
        finally:
            server.should_exit = True
            thread.join(timeout=10)

    return serve


@pytest.fixture(scope="session")
def tiny_server(serving) -> Callable:
    """`with tiny_server(pipe=None, **create_app_options) as (url, app)`: a server of the tiny model (or `pipe`)."""

    @contextlib.contextmanager
    def server(pipe: Pipeline | None = None, **kwargs) -> Iterator[tuple[str, object]]:
        from textdiffusion.serve.app import create_app

        app = create_app(pipe or _tiny_pipe(), model_name=NAME, **kwargs)
        with serving(app) as url:
            yield url, app

    return server
