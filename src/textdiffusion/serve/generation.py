"""One request's work: check it against the limits, run it through `Pipeline`, gather its text.

`prepare_*` run in a helper thread (they tokenize; the event loop never does) and raise UserError (HTTP
400) for anything wrong that can be seen before sampling; `Prepared.work` runs in a worker thread
(engine.py) and returns a `Finished`. `score_work` is the work of /v1/score.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from ..api.chat import apply_chat_template
from ..api.pipeline import Pipeline
from ..core.errors import UserError
from ..samplers import SAMPLERS, Frame
from .engine import CheckedModel, Job, Limits, Stop
from .schemas import ChatRequest, CompletionRequest, SamplingFields
from .streaming import TextTracker, Update, merge_updates

STARTED = "started"  # the first event of every job: its sampler accepted the options


@dataclass
class Finished:
    rows: list[tuple[str, str, str]]  # per row: (text, text not streamed yet, finish_reason)
    prompt_tokens: int
    completion_tokens: int
    frames: int
    fills: list[list[str]] = field(default_factory=list)
    stopped_early: bool = False


@dataclass
class Prepared:
    pipe: Pipeline
    kind: str  # "completion" or "infill"
    sampler: str
    options: dict
    seed: int
    n: int
    stops: list[str]
    stream_mode: str
    prompt: str | None = None  # completion: the prompt's text (None: no prompt)
    prompt_tokens: int = 0
    length: int = 0  # completion: prompt + generated tokens
    infill_text: str | None = None
    tracker: TextTracker | None = None

    def work(self, job: Job) -> Finished:
        """Runs in a worker thread: the pipeline call, with the job's on_step hook (cancellation, stream)."""
        started = False

        def on_frame(frame: Frame) -> bool:
            nonlocal started
            if not started:
                started = True
                job.push(STARTED)
            updates: list[Update] = self.tracker.frame(frame)
            if updates:
                job.push_merging(updates, merge_updates)
            return self.tracker.all_stopped

        job.on_frame = on_frame
        stopped_early = False
        try:
            if self.kind == "infill":
                out = self.pipe.infill(self.infill_text, num_samples=self.n, sampler=self.sampler, seed=self.seed,
                                       on_step=job.on_step, progress=False, **self.options)
                ids, fills = out.ids, out.fills
            else:
                out = self.pipe.generate(num_samples=self.n, length=self.length, prompt=self.prompt,
                                         sampler=self.sampler, seed=self.seed, on_step=job.on_step, progress=False,
                                         **self.options)
                ids, fills = out.ids, []
        except Stop as stop:
            if stop.reason != "stopped":
                raise
            ids, fills, stopped_early = job.last_frame.ids, [], True
        rows = self.tracker.finish(ids)
        if self.kind == "infill":  # every gap is filled
            gapped = self.pipe.encode_gapped(self.infill_text)[0]
            generated = self.n * int((gapped == self.pipe.tokenizer.mask_id).sum())
        else:  # the tokens of the text returned: a stop sequence or [EOS] may have ended it early
            generated = sum(self.tracker.tokens)
        return Finished(rows, self.prompt_tokens, generated, job.frames, fills, stopped_early)


def _stops(stop: str | list[str] | None) -> list[str]:
    return [] if stop is None else [stop] if isinstance(stop, str) else list(stop)


def _common(pipe: Pipeline, req: SamplingFields, limits: Limits) -> tuple[str, dict, int]:
    """The sampler's name, its options and the seed, checked against the server's limits."""
    sampler = req.sampler or pipe.process.default_sampler
    pipe.max_length(sampler)  # an unknown sampler, or one that cannot run this model: UserError
    if req.n > limits.max_n:
        raise UserError(f"n is {req.n}, more than this server's limit of {limits.max_n} samples per request (--max-n)")
    if req.steps is not None and req.steps > limits.max_steps:
        raise UserError(f"steps is {req.steps}, more than this server's limit of {limits.max_steps} (--max-steps)")
    options = dict(req.options or {})
    clash = {"steps", "temperature", "top_p"} & set(options)
    if clash:
        raise UserError(f"give {', '.join(sorted(clash))} as top-level fields, not inside options")
    # only the sampler's own options: never the pipeline's arguments (seed, prompt, length, on_step, ...)
    known = {f.name for f in dataclasses.fields(SAMPLERS[sampler][0])} - {"eos_id"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(f"sampler {sampler!r} has no option {', '.join(unknown)}; its options are "
                        f"{', '.join(sorted(known))}" + ("; seed is a top-level field" if "seed" in unknown else ""))
    options.update({k: v for k, v in {"steps": req.steps, "temperature": req.temperature,
                                      "top_p": req.top_p}.items() if v is not None})
    seed = req.seed if req.seed is not None else secrets.randbelow(2**31 - 1)
    return sampler, options, seed


def _stop_ids(pipe: Pipeline, ids: list[int] | None) -> frozenset[int]:
    """vLLM's stop_token_ids, checked against the tokenizer: a real token, never [MASK] (the canvas is full of it)."""
    bad = sorted({i for i in ids or () if i >= pipe.tokenizer.vocab_size or i == pipe.tokenizer.mask_id})
    if bad:
        raise UserError(f"stop_token_ids holds {', '.join(map(str, bad))}: the ids must be below the vocabulary size "
                        f"{pipe.tokenizer.vocab_size} and not [MASK] ({pipe.tokenizer.mask_id})")
    return frozenset(ids or ())


def prepare_completion(pipe: Pipeline, req: CompletionRequest | ChatRequest, limits: Limits, prompt: str,
                       max_tokens: int | None, stop: str | list[str] | None) -> Prepared:
    sampler, options, seed = _common(pipe, req, limits)
    stop_ids = _stop_ids(pipe, req.stop_token_ids)
    prompt_ids = pipe.tokenizer.encode(prompt) if prompt else []
    bound = pipe.max_length(sampler)
    limit = bound if bound is not None else limits.max_length
    room = limit - len(prompt_ids)
    if room < 1:
        raise UserError(f"the prompt is {len(prompt_ids)} tokens, which leaves no room in the {limit} tokens "
                        f"that sampler {sampler!r} writes here: shorten it")
    if max_tokens is None:
        max_tokens = min(room, max(pipe.seq_len - len(prompt_ids), 16))
    if max_tokens > room:
        raise UserError(f"max_tokens is {max_tokens} but at most {room} fit after the {len(prompt_ids)}-token prompt "
                        f"(sampler {sampler!r} writes at most {limit} tokens"
                        + (" on this server: --max-length)" if bound is None
                           else "; samplers 'block' and 'semi_ar' write more)"))
    length = len(prompt_ids) + max_tokens
    tracker = TextTracker(pipe.tokenizer, len(prompt_ids), req.n, sampler, _stops(stop), req.stream_mode,
                          stop_at_eos=not req.ignore_eos, stop_ids=stop_ids,
                          include_stop=req.include_stop_str_in_output)
    return Prepared(pipe, "completion", sampler, options, seed, req.n, _stops(stop), req.stream_mode,
                    prompt=prompt or None, prompt_tokens=len(prompt_ids), length=length, tracker=tracker)


def check_chars(chars: int, limits: Limits, param: str) -> None:
    """Refuse, before any work, a text larger than the server takes (checked in the event loop: only a sum)."""
    if chars > limits.max_input_chars:
        raise UserError(f"{param} holds {chars:,} characters, more than this server's limit of "
                        f"{limits.max_input_chars:,} per request (--max-input-chars): shorten it")


def prepare_chat(pipe: Pipeline, req, limits: Limits, messages: list[dict], template: str) -> Prepared:
    """The chat prompt under the model's template, then `prepare_completion`. What the template raises on
    these messages (UserError, ValueError, OverflowError) is the caller's to turn into a 400."""
    prompt = apply_chat_template(pipe.tokenizer, messages, template=template)
    if len(prompt) > limits.max_input_chars:
        raise UserError(f"the chat template made a prompt of {len(prompt):,} characters from these messages, more "
                        f"than this server's limit of {limits.max_input_chars:,} (--max-input-chars): send fewer or "
                        "shorter messages")
    max_tokens = req.max_completion_tokens or req.max_tokens
    return prepare_completion(pipe, req, limits, prompt, max_tokens, req.stop)


def score_work(pipe: Pipeline, texts: list[str], t_samples: int, seed: int, limits: Limits) -> Callable[[Job], list]:
    """The work of a /v1/score request: refused before it starts when its tokens x draws exceed the server's
    limit, stopped between two forward passes when its client leaves or its time runs out."""

    def work(job: Job) -> list:
        draws = 1 if pipe.process.exact_likelihood else t_samples
        tokens = sum(len(pipe.tokenizer.encode(text)) for text in texts)
        if tokens * draws > limits.max_score_work:
            raise UserError(f"scoring {tokens:,} tokens with t_samples={draws} is {tokens * draws:,} token-draws, more "
                            f"than this server's limit of {limits.max_score_work:,} per request (--max-score-work): "
                            "send less text or fewer t_samples")
        job.push(STARTED)
        checked = Pipeline(CheckedModel(pipe.model, job), pipe.process, pipe.tokenizer, pipe.config, pipe.precision)
        return checked.score(texts, t_samples=t_samples, seed=seed, progress=False)

    return work


def prepare_infill(pipe: Pipeline, req: SamplingFields, limits: Limits, text: str) -> Prepared:
    sampler, options, seed = _common(pipe, req, limits)
    ids, _ = pipe.encode_gapped(text)  # bad gaps, or too long for the model: UserError
    tracker = TextTracker(pipe.tokenizer, 0, req.n, sampler, [], req.stream_mode)
    return Prepared(pipe, "infill", sampler, options, seed, req.n, [], req.stream_mode,
                    prompt_tokens=int((ids != pipe.tokenizer.mask_id).sum()), infill_text=text, tracker=tracker)
