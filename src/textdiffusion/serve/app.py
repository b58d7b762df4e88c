"""The ASGI app: OpenAI-compatible routes, infill and score, health, metrics and the playground.

    app = create_app(Pipeline.from_pretrained(folder), model_dir=folder)
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..api.chat import find_chat_template
from ..api.pipeline import Pipeline
from ..core.errors import UserError
from ..samplers import SAMPLERS
from .engine import DONE, Engine, Job, Limits, Overloaded, Stop
from .errors import BAD_INPUT, APIError, as_api_error, error_body, input_error, validation_message
from .generation import STARTED, Finished, check_chars, prepare_chat, prepare_completion, prepare_infill, score_work
from .metrics import Metrics
from .middleware import Guard
from .schemas import ChatRequest, CompletionRequest, InfillRequest, ScoreRequest, documented, without_422
from .streaming import Update

STATIC = Path(__file__).resolve().parent / "static"
# which samplers each family's models run (what /v1/models and the playground offer); others: their default
OFFERED_SAMPLERS = {
    "masked": ("ancestral", "confidence", "threshold", "first_hitting", "remdm", "semi_ar"),
    "block": ("block",), "autoregressive": ("ar",), "d3pm": ("d3pm",), "sedd": ("sedd", "sedd_analytic"),
}


def create_app(pipe: Pipeline, model_name: str = "textdiffusion", model_dir: str | Path | None = None,
               limits: Limits | None = None, batching: bool = True, chat_template: str | None = None,
               max_wait_s: float = 0.02, allowed_hosts: list[str] | None = None,
               max_padding: float = 0.5) -> FastAPI:
    """The server's app for one model. `model_dir` is only read for a chat template, at start-up.

    `max_wait_s`: how long a gathered forward pass waits for requests still busy between two steps.
    `max_padding`: the padded work a merged pass may add, as a fraction of its real work (serve/merge.py).
    `allowed_hosts`: the Host header names it answers (`*.example.org` for subdomains); None: any."""
    engine = Engine(pipe, limits, batching=batching, max_wait_s=max_wait_s, max_padding=max_padding)
    metrics = Metrics(engine)
    # the folder's own template only: our default template (textdiffusion.api.chat) means nothing to a model
    # that was not fine-tuned on it
    chat = chat_template if chat_template is not None else find_chat_template(model_dir)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.close()

    app = FastAPI(title="textdiffusion", version="1", lifespan=lifespan,
                  description="Diffusion language models over HTTP, OpenAI-compatible, with streamed denoising.")
    app.state.engine, app.state.metrics = engine, metrics

    # ---- errors: always OpenAI's JSON shape ------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        return JSONResponse(error_body(message, 400, param, "invalid_value"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, APIError):  # raised while the body was read (too large)
            return await on_error(request, exc.__cause__)
        message = {404: f"no route {request.url.path}: the API is described at /openapi.json",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return JSONResponse(error_body(message, exc.status_code), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        err = as_api_error(exc)
        if err.status == 429:
            metrics.rejected.inc()
        return JSONResponse(error_body(err.message, err.status, err.param, err.code), status_code=err.status,
                            headers=err.headers)

    for kind in (APIError, UserError, Overloaded, Stop):  # anything else: Guard's 500, logged
        app.add_exception_handler(kind, on_error)

    # a body holds at most 8 bytes per character of text (JSON escapes), plus the other fields
    app.add_middleware(Guard, metrics=metrics, allowed_hosts=allowed_hosts,
                       max_body=lambda: 8 * max(engine.limits.max_score_chars, engine.limits.max_input_chars) + 65536)
    app.openapi = lambda: without_422(FastAPI.openapi(app))  # FastAPI builds it once; 422 is never sent

    def check_model(name: str | None) -> None:
        if name is not None and name != model_name:
            raise APIError(404, f"model {name!r} is not served here: this server serves {model_name!r} "
                                "(GET /v1/models)", param="model", code="model_not_found")

    # ---- running a request -----------------------------------------------------------------------
    async def prepare(fn: Callable, *args):
        """Tokenizing and chat templates, in a helper thread; what the input makes them raise is a 400."""
        try:
            return await engine.prepare(fn, *args)
        except BAD_INPUT as exc:
            raise input_error(exc) from exc

    async def start(work: Callable[[Job], object], request: Request) -> Job:
        """Submit the work and wait until its sampler has accepted the options (or refused them): a bad
        option is a 400, not an error inside a stream. A client that leaves while waiting cancels the job."""
        job = engine.submit(work)
        first = asyncio.ensure_future(job.events.get())
        try:
            while not (await asyncio.wait({first}, timeout=0.25))[0]:
                if await request.is_disconnected():
                    raise APIError(499, "client closed the request")
        except BaseException:
            first.cancel()
            job.cancel()
            raise
        if first.result() is DONE:
            job.future.result()  # raises the sampler's complaint
        return job

    async def finish_plain(request: Request, job: Job) -> Finished:
        while True:  # a plain request is cancelled too when its client goes away
            done, _ = await asyncio.wait({job.future}, timeout=0.25)
            if done:
                return job.future.result()
            if await request.is_disconnected():
                job.cancel()
                raise APIError(499, "client closed the request")

    def stream(job: Job, chunk: Callable[[list[Update]], dict], final: Callable[[Finished], list[dict]]):
        async def events() -> AsyncIterator[dict]:
            finished = False
            try:
                while True:
                    event = await job.events.get()
                    if event is DONE:
                        break
                    if event is STARTED:
                        continue
                    job.taken(event)
                    yield {"data": json.dumps(chunk(event), ensure_ascii=False)}
                try:
                    result = job.future.result()
                except Exception as exc:  # noqa: BLE001 - the client hears of it in the stream
                    err = as_api_error(exc)
                    yield {"data": json.dumps(error_body(err.message, err.status, err.param, err.code))}
                else:
                    metrics.tokens.inc(result.completion_tokens)
                    for body in final(result):
                        yield {"data": json.dumps(body, ensure_ascii=False)}
                yield {"data": "[DONE]"}
                finished = True
            finally:
                if not finished:  # the client went away: stop its sampler at the next step
                    job.cancel()

        return EventSourceResponse(events(), ping=15, headers={"Cache-Control": "no-store"})

    def extras(update: Update) -> dict:
        return {"diffusion": update.diffusion} if update.diffusion else {}

    def usage(result: Finished) -> dict:
        return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                "total_tokens": result.prompt_tokens + result.completion_tokens}

    def info(prepared, result: Finished) -> dict:
        return {"sampler": prepared.sampler, "seed": prepared.seed, "frames": result.frames,
                "options": prepared.options, "stopped_early": result.stopped_early}

    # ---- routes ------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:  # the page links the SVG; this answers clients that ask by the old name
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name, "running": engine.running, "queued": engine.queued}

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def model_card() -> dict:
        process = pipe.process
        known = OFFERED_SAMPLERS.get(process.name, (process.default_sampler,))
        samplers = [name for name in known if name in SAMPLERS and _runs(pipe, name)]
        # the most tokens each sampler writes, prompt included: the model's length, or --max-length past it
        lengths = {name: pipe.max_length(name) or engine.limits.max_length for name in samplers}
        return {"id": model_name, "object": "model", "created": created, "owned_by": "textdiffusion",
                "seq_len": pipe.seq_len, "process": process.name, "default_sampler": process.default_sampler,
                "samplers": samplers, "max_tokens": lengths, "chat_template": chat is not None,
                "limits": vars(engine.limits)}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model:path}", responses=documented(404))
    async def model_info(model: str) -> dict:
        check_model(model)
        return model_card()

    @app.post("/v1/completions", responses=documented(400, 404, 413, 429, 500, 504))
    async def completions(body: CompletionRequest, request: Request):
        check_model(body.model)
        prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
        check_chars(len(prompt), engine.limits, "prompt")
        prepared = await prepare(prepare_completion, engine.pipe, body, engine.limits, prompt, body.max_tokens,
                                 body.stop)
        job = await start(prepared.work, request)
        ident, now = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        head = {"id": ident, "object": "text_completion", "created": now, "model": model_name}
        echo = prompt if body.echo else ""
        if body.stream:
            echoed: set[int] = set()

            def text(index: int, delta: str) -> str:
                if echo and index not in echoed:
                    echoed.add(index)
                    return echo + delta
                return delta

            def chunk(updates: list[Update]) -> dict:
                return {**head, "choices": [{"index": u.index, "text": text(u.index, u.delta), "logprobs": None,
                                             "finish_reason": None, **extras(u)} for u in updates]}

            def final(result: Finished) -> list[dict]:
                bodies = [{**head, "choices": [{"index": i, "text": text(i, rest), "logprobs": None,
                                                "finish_reason": reason} for i, (_, rest, reason)
                                               in enumerate(result.rows)],
                           "diffusion": info(prepared, result)}]
                if body.stream_options is not None and body.stream_options.include_usage:
                    bodies.append({**head, "choices": [], "usage": usage(result)})
                return bodies

            return stream(job, chunk, final)
        result = await finish_plain(request, job)
        metrics.tokens.inc(result.completion_tokens)
        return {**head, "choices": [{"index": i, "text": echo + text, "logprobs": None, "finish_reason": reason}
                                    for i, (text, _, reason) in enumerate(result.rows)],
                "usage": usage(result), "diffusion": info(prepared, result)}

    @app.post("/v1/chat/completions", responses=documented(400, 404, 413, 429, 500, 504))
    async def chat_completions(body: ChatRequest, request: Request):
        check_model(body.model)
        if chat is None:
            raise APIError(400, f"model {model_name!r} has no chat template (its tokenizer folder has no "
                                "chat_template.jinja and no chat_template in tokenizer_config.json): use "
                                "/v1/completions with a plain prompt", param="messages", code="no_chat_template")
        # a developer message is OpenAI's newer name for a system message
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.content}
                    for m in body.messages]
        check_chars(sum(len(m["content"]) for m in messages), engine.limits, "messages")
        prepared = await prepare(prepare_chat, engine.pipe, body, engine.limits, messages, chat)
        job = await start(prepared.work, request)
        ident, now = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        head = {"id": ident, "created": now, "model": model_name}
        if body.stream:
            greeted: set[int] = set()

            def delta(index: int, content: str) -> dict:
                out = {"content": content}
                if index not in greeted:
                    greeted.add(index)
                    out["role"] = "assistant"
                return out

            def chunk(updates: list[Update]) -> dict:
                return {**head, "object": "chat.completion.chunk",
                        "choices": [{"index": u.index, "delta": delta(u.index, u.delta), "logprobs": None,
                                     "finish_reason": None, **extras(u)} for u in updates]}

            def final(result: Finished) -> list[dict]:
                bodies = [{**head, "object": "chat.completion.chunk",
                           "choices": [{"index": i, "delta": delta(i, rest), "logprobs": None, "finish_reason": reason}
                                       for i, (_, rest, reason) in enumerate(result.rows)],
                           "diffusion": info(prepared, result)}]
                if body.stream_options is not None and body.stream_options.include_usage:
                    bodies.append({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage(result)})
                return bodies

            return stream(job, chunk, final)
        result = await finish_plain(request, job)
        metrics.tokens.inc(result.completion_tokens)
        return {**head, "object": "chat.completion",
                "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                             "finish_reason": reason} for i, (text, _, reason) in enumerate(result.rows)],
                "usage": usage(result), "diffusion": info(prepared, result)}

    @app.post("/v1/infill", responses=documented(400, 404, 413, 429, 500, 504))
    async def infill(body: InfillRequest, request: Request):
        check_model(body.model)
        check_chars(len(body.prompt), engine.limits, "prompt")
        prepared = await prepare(prepare_infill, engine.pipe, body, engine.limits, body.prompt)
        job = await start(prepared.work, request)
        head = {"id": f"infill-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model_name}
        if body.stream:
            def chunk(updates: list[Update]) -> dict:
                return {**head, "object": "infill.chunk",
                        "choices": [{"index": u.index, "text": u.delta, "finish_reason": None, **extras(u)}
                                    for u in updates]}

            def final(result: Finished) -> list[dict]:
                return [{**head, "object": "infill.chunk",
                         "choices": [{"index": i, "text": rest, "fills": result.fills[i] if result.fills else [],
                                      "finish_reason": "length"} for i, (_, rest, _) in enumerate(result.rows)],
                         "diffusion": info(prepared, result)}]

            return stream(job, chunk, final)
        result = await finish_plain(request, job)
        metrics.tokens.inc(result.completion_tokens)
        return {**head, "object": "infill",
                "choices": [{"index": i, "text": text, "fills": result.fills[i], "finish_reason": "length"}
                            for i, (text, _, _) in enumerate(result.rows)],
                "usage": usage(result), "diffusion": info(prepared, result)}

    @app.post("/v1/score", responses=documented(400, 404, 413, 429, 500, 504))
    async def score(body: ScoreRequest, request: Request):
        check_model(body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if sum(map(len, texts)) > engine.limits.max_score_chars:
            raise APIError(400, f"the input holds {sum(map(len, texts)):,} characters, more than this server's "
                                f"limit of {engine.limits.max_score_chars:,} per request (--max-score-chars): split "
                                "it", param="input", code="invalid_value")

        job = await start(score_work(engine.pipe, texts, body.t_samples, body.seed, engine.limits), request)
        results = await finish_plain(request, job)
        return {"object": "list", "model": model_name, "data": [
            {"object": "score", "index": i, "nats_per_token": _finite(r.nats_per_token),
             "bits_per_token": _finite(r.bits_per_token), "perplexity": _finite(math.exp(min(r.nats_per_token, 709.0))),
             "stderr": _finite(r.stderr), "tokens": r.n_tokens, "t_samples": r.t_samples, "exact": r.exact}
            for i, r in enumerate(results)]}

    return app


def _finite(value: float) -> float | None:
    """JSON has no inf or nan: a standard error from one draw, or a perplexity that overflows, is null."""
    return value if math.isfinite(value) else None


def _runs(pipe: Pipeline, sampler: str) -> bool:
    try:
        pipe.max_length(sampler)
    except UserError:
        return False
    return True
