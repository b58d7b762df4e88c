"""Request bodies, with a limit on every field. Unknown fields are refused (a typo is not silently ignored).

The hard caps here bound what the schema admits; the server's own, usually tighter, limits
(`Limits`) are checked per request with a message that names them. No field takes a path.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, field_validator

MAX_TEXT_CHARS = 100_000
MAX_STEPS = 4096
MAX_N = 64
MAX_TOKENS = 65_536
MAX_SEED = 2**63 - 1

ShortStr = Annotated[str, Field(max_length=64)]
OptionValue = StrictBool | StrictInt | StrictFloat | ShortStr | None


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Body):
    include_usage: bool = False


class SamplingFields(_Body):
    """The diffusion knobs, as extra body fields of the OpenAI requests (`extra_body=` in the openai client)."""

    sampler: Annotated[str, Field(max_length=32, pattern=r"^[a-z0-9_]+$")] | None = Field(
        None, description="sampler name (GET /v1/models lists the model's); default: the model's own")
    steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] | None = Field(None, description="reverse diffusion steps")
    temperature: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] | None = Field(
        None, description="0 is greedy")
    top_p: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = None
    options: Annotated[dict[Annotated[str, Field(max_length=32, pattern=r"^[a-z0-9_]+$")], OptionValue],
                       Field(max_length=16)] | None = Field(
        None, description="any other option of the sampler's config, e.g. {\"block_length\": 32}")
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = Field(
        None, description="the same seed and options give the same text, batched with other requests or not")
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    stream: bool = False
    stream_mode: Literal["append", "denoise"] = Field(
        "append", description="append: only text that can no longer change; denoise: also every step's "
                              "full canvas and the positions that changed")
    stream_options: StreamOptions | None = None
    user: Annotated[str, Field(max_length=256)] | None = None


class _Unsupported(_Body):
    """OpenAI fields that diffusion sampling cannot honour: accepted only at their neutral value."""

    logprobs: int | bool | None = None
    logit_bias: dict[str, float] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    @field_validator("logprobs", "logit_bias", "presence_penalty", "frequency_penalty", check_fields=False)
    @classmethod
    def _neutral(cls, value, info):
        if value not in (None, 0, False, {}):
            raise ValueError(f"{info.field_name} is not supported by diffusion sampling: leave it out")
        return value


Stop = Annotated[str, Field(min_length=1, max_length=64)] | Annotated[
    list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=4)] | None


class CompletionRequest(_Unsupported, SamplingFields):
    model: Annotated[str, Field(max_length=256)]
    prompt: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | Annotated[
        list[Annotated[str, Field(max_length=MAX_TEXT_CHARS)]], Field(min_length=1, max_length=1)] = ""
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = Field(
        None, description="tokens to write after the prompt (default: the rest of the model's length)")
    stop: Stop = None
    echo: bool = False
    suffix: None = Field(None, description="not supported: use /v1/infill with a [MASK]xN gap")
    best_of: Annotated[int, Field(ge=1, le=1)] | None = None


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "developer"] = Field(
        description="developer is read as system (OpenAI's newer name for it); tool messages are not supported")
    content: Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
    name: Annotated[str, Field(max_length=64)] | None = None


class ChatRequest(_Unsupported, SamplingFields):
    model: Annotated[str, Field(max_length=256)]
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=256)]
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = None
    stop: Stop = None
    top_logprobs: None = None


class InfillRequest(SamplingFields):
    model: Annotated[str, Field(max_length=256)] | None = None
    prompt: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)] = Field(
        description="text with gaps: [MASK] is one token, [MASK]xN is N tokens")


class ScoreRequest(_Body):
    model: Annotated[str, Field(max_length=256)] | None = None
    input: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)] | Annotated[
        list[Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]], Field(min_length=1, max_length=32)]
    t_samples: Annotated[int, Field(ge=1, le=256)] = Field(
        32, description="Monte Carlo draws of the noise level per window (diffusion models)")
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error (4xx), rate_limit_error (429), timeout (504), "
                                  "server_error (other 5xx)")
    param: str | None = Field(None, description="the field at fault")
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error, OpenAI's shape."""

    error: ErrorDetail


STATUSES = {
    400: "a bad field, a limit exceeded (named in the message), or a Host header the server does not answer to",
    404: "the model is not the one served here",
    413: "the request body is larger than the server reads",
    429: "the server is busy (queue full): retry after the Retry-After header's seconds",
    500: "an internal error (sent with Connection: close)",
    504: "the request ran past the server's time limit per request (--max-seconds): retry later or ask for less",
}


def documented(*statuses: int) -> dict:
    """The error responses of a route, for the OpenAPI schema."""
    return {status: {"model": ErrorResponse, "description": STATUSES[status]} for status in statuses}


def without_422(schema: dict) -> dict:
    """FastAPI documents 422 for every route with a body; this server answers a bad body with 400 (in place)."""
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)
    return schema
