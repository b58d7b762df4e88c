"""Chat: conversations as lists of messages, their JSONL file format, and chat templates.

A message is {"role": "system" | "user" | "assistant", "content": str}. A conversation file is JSONL: one
conversation per line, either {"messages": [...]} or the bare list of messages.

A chat template turns messages into the prompt text (Hugging Face's convention: a Jinja template rendered
with `messages`, `add_generation_prompt`, `bos_token`, `eos_token`). A model folder's own template is used
where it has one (`chat_template.jinja`, or the "chat_template" string of `tokenizer_config.json`: LLaDA,
Dream, SmolLM2 folders); our own models use `DEFAULT_TEMPLATE`, plain role markers:

    <|system|>\\nYou are terse.\\n<|user|>\\nHello\\n<|assistant|>\\nHi.\\n

with `<|assistant|>\\n` as the generation prompt; a reply ends where the model writes [EOS]. Templates are
rendered in Jinja's immutable sandbox, bounded in output and work (api/template_sandbox.py): a folder's
template cannot reach Python objects, nor take all memory or time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from ..core.checks import check_int
from ..core.errors import UserError
from ..data.tokenizers import Tokenizer
from ..samplers.base import Frame
from .output import GenerationOutput


class Denoising(Protocol):
    """What `chat_reply` uses of a Pipeline (api/pipeline.py), which passes itself."""

    tokenizer: Tokenizer

    @property
    def seq_len(self) -> int: ...

    def max_length(self, sampler: str | None = None) -> int | None: ...

    def denoise(self, x: torch.Tensor, sampler: str | None = None, seed: int | None = None,
                return_frames: bool = False, on_step: Callable[[Frame], None] | None = None,
                progress: bool | None = None, **sampler_options) -> GenerationOutput: ...

ROLES = ("system", "user", "assistant")
TEMPLATE_FILE = "chat_template.jinja"

DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def check_messages(messages: object, where: str = "messages") -> list[dict[str, str]]:
    """The messages as plain {"role", "content"} dicts, or a one-line UserError naming what is wrong."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        raise UserError(f"{where} must be a non-empty list of {{\"role\": ..., \"content\": ...}} messages, "
                        f"got {type(messages).__name__}")
    out = []
    for i, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            raise UserError(f"{where}: message {i} must be an object with role and content, "
                            f"got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise UserError(f"{where}: message {i} has role {role!r}: use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise UserError(f"{where}: message {i} ({role}) needs a string content, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    return out


def read_conversations(path: str | Path) -> list[list[dict[str, str]]]:
    """Every conversation of a JSONL file (blank lines skipped); each must hold an assistant reply."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"conversation file {path} not found")
    conversations = []
    with path.open(encoding="utf-8", errors="strict") as fh:
        try:
            lines = list(fh)
        except UnicodeDecodeError as exc:
            raise UserError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): convert it") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where} is not JSON ({exc.msg} at column {exc.colno}): write one conversation "
                            "per line as {\"messages\": [{\"role\": \"user\", \"content\": ...}, ...]}") from exc
        if isinstance(record, dict) and "messages" not in record:
            raise UserError(f"{where} has no \"messages\" field: write {{\"messages\": [...]}} or a bare list")
        messages = check_messages(record.get("messages") if isinstance(record, dict) else record, where)
        if not any(m["role"] == "assistant" for m in messages):
            raise UserError(f"{where} has no assistant message: nothing to learn from it")
        conversations.append(messages)
    if not conversations:
        raise UserError(f"{path} holds no conversation")
    return conversations


def find_chat_template(folder: str | Path | None) -> str | None:
    """A model folder's own chat template (also in a run folder's checkpoint/), or None if it has none."""
    if folder is None:
        return None
    folder = Path(folder)
    for candidate in (folder, folder / "checkpoint"):
        if (candidate / TEMPLATE_FILE).is_file():
            return (candidate / TEMPLATE_FILE).read_text(encoding="utf-8")
        config = candidate / "tokenizer_config.json"
        if config.is_file():
            try:
                template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
            except (OSError, ValueError, AttributeError):
                return None
            if isinstance(template, list):  # HF's named templates: [{"name": "default", "template": ...}, ...]
                named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
                template = named.get("default")
            return template if isinstance(template, str) and template.strip() else None
    return None


def template_of(tokenizer: Tokenizer) -> str:
    """The template a tokenizer's model uses: the one its folder brought (`tokenizer.chat_template`), else ours."""
    return getattr(tokenizer, "chat_template", None) or DEFAULT_TEMPLATE


def _special_text(tokenizer: Tokenizer, role: str) -> str:
    """The text of a special token, for templates that write it ("" for the byte tokenizer's id-only specials)."""
    specials = getattr(tokenizer, "specials", None)
    return specials.get(role, "") if isinstance(specials, dict) else ""


def render(template: str, messages: list[dict[str, str]], add_generation_prompt: bool, bos_token: str = "",
           eos_token: str = "") -> str:
    """Render a Jinja chat template in the sandbox; its errors become one-line UserErrors."""
    from jinja2 import TemplateError

    from .template_sandbox import render_bounded  # bounded in output and work

    def raise_exception(message: str) -> None:  # HF templates call this on a conversation they refuse
        raise UserError(f"the chat template refused the messages: {message}")

    try:
        return render_bounded(template, messages=messages, add_generation_prompt=add_generation_prompt,
                              bos_token=bos_token, eos_token=eos_token, raise_exception=raise_exception)
    except TemplateError as exc:
        raise UserError(f"the chat template could not render these messages: {' '.join(str(exc).split())}") \
            from exc


def apply_chat_template(tokenizer: Tokenizer, messages: Sequence[dict], add_generation_prompt: bool = True,
                        template: str | None = None) -> str:
    """The prompt text of `messages` under the model's chat template (`template` overrides it).

    With `add_generation_prompt`, the text ends where the assistant's reply begins. Encode it with
    `tokenizer.encode` (no [BOS] is added: templates that want one write it)."""
    messages = check_messages(messages)
    return render(template or template_of(tokenizer), messages, add_generation_prompt,
                  _special_text(tokenizer, "bos"), _special_text(tokenizer, "eos"))


def encode_chat(tokenizer: Tokenizer, messages: Sequence[dict], add_generation_prompt: bool = True,
                template: str | None = None) -> list[int]:
    """Token ids of `apply_chat_template`: what training and `Pipeline.chat` condition on."""
    return tokenizer.encode(apply_chat_template(tokenizer, messages, add_generation_prompt, template))


def turns(tokenizer: Tokenizer, conversation: Sequence[dict], template: str | None = None) \
        -> list[tuple[list[int], list[int]]]:
    """(prompt ids, reply ids) for every assistant message: the prompt is the conversation before it with the
    generation prompt, the reply is what the template adds for the message (its text and end-of-turn marks).
    LLaDA's SFT treats a multi-turn dialogue this way, as one example per assistant turn."""
    conversation = check_messages(conversation)
    source = template or template_of(tokenizer)
    bos, eos = _special_text(tokenizer, "bos"), _special_text(tokenizer, "eos")
    out = []
    for i, message in enumerate(conversation):
        if message["role"] != "assistant":
            continue
        prompt = render(source, conversation[:i], True, bos, eos)
        full = render(source, conversation[: i + 1], False, bos, eos)
        if not full.startswith(prompt):
            raise UserError("the chat template does not render a conversation as its prompt followed by the reply, "
                            "so prompt and reply cannot be told apart: use a template that does")
        out.append((tokenizer.encode(prompt) if prompt else [], tokenizer.encode(full[len(prompt):])))
    return out


@dataclass
class ChatReply:
    replies: list[str]  # one reply per sample: the text after the prompt, up to the first [EOS]
    prompt_length: int  # tokens of the templated conversation; the reply was generated after them
    output: GenerationOutput  # the whole run: ids [n, prompt + reply tokens], nfe, seconds, frames


def chat_reply(pipe: Denoising, messages: Sequence[dict], max_new_tokens: int | None = None, num_samples: int = 1,
               sampler: str | None = None, seed: int | None = None, return_frames: bool = False,
               on_step: Callable[[Frame], None] | None = None, progress: bool | None = None,
               **sampler_options) -> ChatReply:
    """The model's reply to `messages` (see `Pipeline.chat`)."""
    prompt = encode_chat(pipe.tokenizer, messages, add_generation_prompt=True)
    limit = pipe.max_length(sampler)
    room = None if limit is None else limit - len(prompt)
    if room is not None and room < 1:
        raise UserError(f"the conversation is {len(prompt)} tokens, which leaves no room for a reply in the model's "
                        f"{limit}: shorten it or start a new one")
    if max_new_tokens is None:
        max_new_tokens = room if room is not None else pipe.seq_len  # fill the window: [EOS] ends the reply
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=1)
    if room is not None and max_new_tokens > room:
        raise UserError(f"max_new_tokens={max_new_tokens} does not fit: the conversation takes {len(prompt)} of the "
                        f"model's {limit} tokens, leaving {room}")
    num_samples = check_int("num_samples", num_samples, minimum=1)
    x = torch.full((num_samples, len(prompt) + max_new_tokens), pipe.tokenizer.mask_id, dtype=torch.long)
    x[:, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
    out = pipe.denoise(x, sampler, seed, return_frames, on_step, progress, **sampler_options)
    replies = [reply_text(pipe.tokenizer, row[len(prompt):].tolist()) for row in out.ids]
    return ChatReply(replies, len(prompt), out)


def reply_text(tokenizer: Tokenizer, ids: list[int]) -> str:
    """The reply written in `ids`: up to its first [EOS], without the whitespace that ends a turn."""
    return tokenizer.decode(ids, mask_char=None, stop_at_eos=True).strip()
