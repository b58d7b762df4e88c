"""The ASGI layer around the app: which hosts it answers, how large a body it reads, what it counts, and a
proper 500 for a request that failed (plain ASGI: streams and their disconnects pass through untouched)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable

from ..core.errors import UserError
from .errors import APIError, error_body
from .metrics import Metrics

log = logging.getLogger("textdiffusion.serve")

WILDCARD_ADDRESSES = ("", "0.0.0.0", "::", "[::]")


def default_hosts(host: str) -> list[str] | None:
    """The Host headers a server bound to `host` answers by default: that address and localhost (against DNS
    rebinding: a page on another site cannot reach a loopback server under its own name). None (any host)
    for a server bound to every interface, which is reached under names it cannot know."""
    if host.strip() in WILDCARD_ADDRESSES:
        return None
    return [host.strip(), "localhost"]


def parse_hosts(value: str | Iterable[str] | None, host: str) -> list[str] | None:
    """`--allowed-hosts a,b` as a list (None: any host); `*` allows any, `*.example.org` any subdomain."""
    if value is None:
        return default_hosts(host)
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value)]
    if not names or any(not n or any(c.isspace() or c in "/@" for c in n) for n in names):
        raise UserError(f"--allowed-hosts must be a comma-separated list of host names (or *), got {value!r}")
    return None if "*" in names else names


def host_name(header: str) -> str:
    """The name of a Host header, without its port: example.org:8000 -> example.org, [::1]:8000 -> ::1."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    if header.count(":") == 1:
        header = header.split(":", 1)[0]
    return header.rstrip(".")


def host_allowed(header: str, allowed: list[str]) -> bool:
    name = host_name(header)
    for pattern in allowed:
        pattern = host_name(pattern)
        if name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:])):
            return True
    return False


class Guard:
    """Refuses a Host header that is not allowed (400) and a body over `max_body` bytes (413); counts
    requests by route and status; answers an unhandled error as OpenAI's JSON 500 with Connection: close,
    so that the client's next request opens a new connection instead of failing on a dropped one."""

    def __init__(self, inner, metrics: Metrics, allowed_hosts: list[str] | None, max_body: Callable[[], int]):
        self.inner, self.metrics, self.allowed, self.max_body = inner, metrics, allowed_hosts, max_body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        start, status, started = time.perf_counter(), [500], [False]

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status[0], started[0] = message["status"], True
            await send(message)

        try:
            refused = self.refuse(scope)
            if refused is not None:
                await self.answer(sending, refused)
                return
            await self.inner(scope, self.bounded(receive), sending)
        except Exception as exc:  # noqa: BLE001 - a bug, not the client's fault: logged, answered as a 500
            if started[0]:
                raise  # the response has begun: the server can only drop the connection
            log.exception("request failed", exc_info=exc)
            await self.answer(sending, APIError(500, f"internal error: {type(exc).__name__}", code="internal_error",
                                                headers={"connection": "close"}))
        finally:
            path = getattr(scope.get("route"), "path", "other")
            self.metrics.requests.labels(path, str(status[0])).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)

    def refuse(self, scope) -> APIError | None:
        headers = dict(scope.get("headers") or ())
        if self.allowed is not None:
            host = headers.get(b"host", b"").decode("latin-1")
            if not host_allowed(host, self.allowed):
                return APIError(400, f"Host header {host[:100]!r} is not one this server answers to (start it with "
                                     "--allowed-hosts to add names)", param="Host", code="invalid_host",
                                headers={"connection": "close"})
        length = headers.get(b"content-length", b"0").decode("latin-1")
        if length.isdigit() and int(length) > self.max_body():
            return too_large(self.max_body())
        return None

    def bounded(self, receive):
        """`receive`, refusing a body (without a Content-Length) that grows past the limit."""
        seen = [0]

        async def receiving():
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > self.max_body():
                    raise too_large(self.max_body())
            return message

        return receiving

    @staticmethod
    async def answer(send, err: APIError) -> None:
        body = json.dumps(error_body(err.message, err.status, err.param, err.code)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), str(v).encode()) for k, v in (err.headers or {}).items()]
        await send({"type": "http.response.start", "status": err.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than this server's limit of {limit:,} bytes",
                    code="request_too_large", headers={"connection": "close"})
