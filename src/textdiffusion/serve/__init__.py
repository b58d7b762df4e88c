"""Serving: an OpenAI-compatible HTTP server that streams the denoising, batches requests at the step level,
and serves a browser playground. Needs the `serve` extra (fastapi, uvicorn, sse-starlette, prometheus-client).

    textdiffusion serve [MODEL_DIR] --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

from pathlib import Path

from .engine import Limits


def run_server(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
               limits: Limits | None = None, batching: bool = True, model_name: str | None = None,
               log_level: str = "info", max_wait_s: float = 0.02, allowed_hosts: str | list[str] | None = None,
               max_padding: float = 0.5) -> None:
    """Load the model folder and serve it until interrupted.

    `allowed_hosts`: the Host header names answered (a list, or comma-separated; `*` is any); None: the bound
    address and localhost, or any host when bound to every interface (0.0.0.0, ::)."""
    import uvicorn

    from ..api.pipeline import Pipeline
    from .app import create_app
    from .middleware import parse_hosts

    hosts = parse_hosts(allowed_hosts, host)  # a bad list fails before the model loads
    pipe = Pipeline.from_pretrained(model_dir, device=device)
    name = model_name or Path(model_dir).resolve().name
    app = create_app(pipe, model_name=name, model_dir=model_dir, limits=limits, batching=batching,
                     max_wait_s=max_wait_s, allowed_hosts=hosts, max_padding=max_padding)
    try:  # lifespan off: on Ctrl-C uvicorn cancels a lifespan task mid-wait and logs its traceback
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5, lifespan="off")
    finally:
        app.state.engine.close()


__all__ = ["Limits", "run_server"]
