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
            raise ValueError(f"{info.field_name}={value!r} is not supported by diffusion sampling (not implemented "
                             "here): leave it out, or send its neutral value (0, null, {})")
        return value


class Extras(_Body):
    """vLLM's extra sampling fields that clients send (lm-eval, vLLM-targeting code): those that are stop logic or
    post-processing are honoured; the others, which our samplers have no knob for, only at their neutral value."""

    top_k: int | None = Field(None, description="not supported: only -1, 0 or null (no top-k)")
    min_p: float | None = Field(None, description="not supported: only 0 or null")
    min_tokens: int | None = Field(None, description="not supported: only 0 or null")
    stop_token_ids: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=16)] | None = Field(
        None, description="token ids that end the text where one is first written (the token is not returned)")
    ignore_eos: StrictBool = Field(False, description="true: [EOS] does not end the text (it is dropped)")
    include_stop_str_in_output: StrictBool = Field(
        False, description="true: the text returned ends with the stop sequence that ended it")
    skip_special_tokens: StrictBool = Field(True, description="only true: special tokens are never returned as text")

    @field_validator("top_k", "min_p", "min_tokens", "skip_special_tokens", check_fields=False)
    @classmethod
    def _neutral_extra(cls, value, info):
        why = {"top_k": "the samplers cut by top_p, not top_k: send top_p, or top_k -1, 0 or null",
               "min_p": "the samplers cut by top_p, not min_p: send top_p, or min_p 0 or null",
               "min_tokens": "a diffusion sampler writes every position at once, so it cannot hold back [EOS] or "
                             "a stop sequence for the first tokens: send 0 or null",
               "skip_special_tokens": "special tokens are never returned as text here: send true or leave it out"}
        neutral = {"top_k": (None, 0, -1), "min_p": (None, 0), "min_tokens": (None, 0),
                   "skip_special_tokens": (True,)}[info.field_name]
        if value not in neutral:
            raise ValueError(f"{info.field_name}={value!r} is not supported: {why[info.field_name]}")
        return value


Stop = Annotated[str, Field(min_length=1, max_length=64)] | Annotated[
    list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=4)] | None


class CompletionRequest(Extras, _Unsupported, SamplingFields):
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


class ChatRequest(Extras, _Unsupported, SamplingFields):
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
