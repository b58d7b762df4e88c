"""The sandbox chat templates render in (api/chat.py): Jinja's immutable sandbox, bounded in output and work.

A model folder's template is user input. Jinja's own sandbox keeps it from Python's objects, but not from
memory or time: `{{ 'A' * 4000000000 }}` asks for 4 GB, nested `range(100000)` loops (or loops over a long
message's characters) for 10^10 iterations, a macro that calls itself for ever. Here a render stops with a
UserError once it would write more than MAX_CHARS characters, build a text or list of more than MAX_CHARS items,
create ranges over more than MAX_LOOPS items in all, run more than MAX_LOOPS loop iterations in all (any
iterable: every `for` tag's iterable is wrapped in a counter when the template is parsed) or recurse past
Python's limit."""

from __future__ import annotations

import operator
from collections.abc import Iterator
from numbers import Integral

from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..core.errors import UserError

MAX_CHARS = 1_000_000  # a prompt of a million characters is far past any model's length
MAX_LOOPS = 1_000_000  # range items, and loop iterations, over one render: a real template loops over its messages
COUNTED = "__td_counted"  # the global every `for` tag's iterable is passed through

FIX = "fix the model folder's chat template (chat_template.jinja or tokenizer_config.json's chat_template)"


def _too_big(what: str, size: int, limit: int = MAX_CHARS, unit: str = "characters") -> UserError:
    return UserError(f"the chat template asks for {what} of {size:,} {unit}, over the limit of {limit:,}: {FIX}")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """An immutable sandbox whose repetitions, powers, padding filters and ranges are bounded; `render` also
    bounds the output. One instance per render: `loops` counts that render's range items."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.loops = 0
        self.iterations = 0
        self.globals["range"] = self._range
        self.globals[COUNTED] = self._counted
        for name in ("center", "indent"):  # width arguments that pad a text to any size
            self.filters[name] = self._bounded_width(self.filters[name])

    def _range(self, *args: int) -> range:
        rng = range(*args)
        self.loops += len(rng)
        if self.loops > MAX_LOOPS:
            raise _too_big("ranges", self.loops, MAX_LOOPS, "items in all")
        return rng

    def _counted(self, iterable) -> Iterator:
        for item in iterable:
            self.iterations += 1
            if self.iterations > MAX_LOOPS:
                raise _too_big("loops", self.iterations, MAX_LOOPS, "iterations in all")
            yield item

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """The template's tree with every `for` tag iterating through `_counted` (loops over any iterable)."""
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Call(nodes.Name(COUNTED, "load"), [loop.iter], [], None, None, lineno=loop.lineno)
        return tree

    @staticmethod
    def _bounded_width(fn):
        def bounded(value, width=80, *args, **kwargs):
            if isinstance(width, Integral) and width > MAX_CHARS:
                raise _too_big("a padded text", int(width))
            return fn(value, width, *args, **kwargs)

        return bounded

    def call_binop(self, context, operator_name: str, left, right):
        if operator_name == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, Integral) and len(seq) * n > MAX_CHARS:
                    raise _too_big("a repeated text or list", len(seq) * int(n), unit="items")
            return operator.mul(left, right)
        if isinstance(left, Integral) and isinstance(right, Integral) and right > 0 \
                and abs(left) > 1 and right * max(abs(int(left)).bit_length(), 1) > 64 * MAX_CHARS:
            raise _too_big("a number", right * abs(int(left)).bit_length(), 64 * MAX_CHARS, "bits")
        return super().call_binop(context, operator_name, left, right)


def render_bounded(source: str, **variables) -> str:
    """`source` rendered with `variables`, refused past MAX_CHARS characters of output."""
    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True)
    env.globals.update({k: v for k, v in variables.items() if callable(v)})
    parts, size = [], 0
    chunks: Iterator[str] = env.from_string(source).generate(
        **{k: v for k, v in variables.items() if not callable(v)})
    try:
        for chunk in chunks:
            size += len(chunk)
            if size > MAX_CHARS:
                raise _too_big("an output", size)
            parts.append(chunk)
    except RecursionError as exc:  # a macro that calls itself without end
        raise UserError(f"the chat template recurses without end: {FIX}") from exc
    return "".join(parts)
