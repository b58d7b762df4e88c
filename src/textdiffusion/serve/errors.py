"""The server's errors, answered as OpenAI's error JSON: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging
import re

from fastapi.exceptions import RequestValidationError

from ..core.errors import UserError
from .engine import Overloaded, Stop

log = logging.getLogger("textdiffusion.serve")


class APIError(Exception):
    """An error answered as OpenAI's error JSON: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


# the error's `type` by status; other 4xx are invalid_request_error, other 5xx server_error
KINDS = {429: "rate_limit_error", 504: "timeout"}


def error_body(message: str, status: int, param: str | None = None, code: str | None = None) -> dict:
    kind = KINDS.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def as_api_error(exc: BaseException) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, UserError):
        return APIError(400, " ".join(str(exc).split()), code="invalid_value")
    if isinstance(exc, Overloaded):
        return APIError(429, str(exc), code="queue_full", headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, Stop) and exc.reason == "timeout":
        # 504, type "timeout": it may well pass when the server is less busy, and clients retry a 5xx
        return APIError(504, "the request ran past this server's time limit per request (--max-seconds): retry "
                             "later, or ask for less work (fewer steps, tokens, samples or t_samples)",
                        code="time_limit_exceeded")
    log.exception("request failed", exc_info=exc)
    return APIError(500, f"internal error: {type(exc).__name__}", code="internal_error")


BAD_INPUT = (ValueError, OverflowError, RecursionError)  # UserError is a ValueError


def input_error(exc: BaseException) -> APIError:
    """What reading or preparing a request raised (a chat template that fails on the messages, a text the
    tokenizer refuses): the request's fault, a 400, never a 500."""
    if isinstance(exc, UserError):
        return as_api_error(exc)
    text = " ".join(str(exc).split())[:300]
    return APIError(400, f"the request could not be prepared ({type(exc).__name__}): {text}", code="invalid_value")


# pydantic names the member of a union that failed ("constrained-str", "list[int]"): not a field
_UNION_TAG = re.compile(r"^(str|int|float|bool|none|constrained-\w+|\w[\w-]*\[.*\])$")


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One line naming each bad field and what is wrong with it, and the first field (OpenAI's `param`)."""
    problems: dict[str, list[str]] = {}
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x != "body" and not _UNION_TAG.match(str(x))]
        msg = {"extra_forbidden": "unknown field: remove it (the schema is at /openapi.json)",
               "missing": "required field is missing",
               "json_invalid": "the body is not valid JSON"}.get(err.get("type"), err.get("msg", "invalid"))
        messages = problems.setdefault(".".join(loc) or "body", [])
        if msg not in messages:
            messages.append(msg)
    parts = [f"{where}: {' or '.join(msgs)}" for where, msgs in list(problems.items())[:5]]
    return "; ".join(parts), next(iter(problems), None)
