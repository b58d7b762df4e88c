"""Progress on stderr for long work (sampling, scoring, training, distillation).

On a terminal it is a tqdm bar. Into a log file or a pipe a bar is a mess of carriage returns that nobody sees
until the end, so there it is a plain line every LOG_INTERVAL seconds ("scoring: 12.3k/40.1k tok (31%), 31 s,
~70 s left, 4.1234 nats/token"), and one more when the work is done. Quick runs stay quiet unless asked."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO

from tqdm import tqdm

PROGRESS_DELAY = 2.0  # seconds before an automatic bar appears on a terminal: quick runs stay quiet
LOG_INTERVAL = 5.0  # seconds between two lines in a log (and before the first automatic one)
_PERCENT_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]"


def format_seconds(seconds: float) -> str:
    """31 s, 2m05s, 1h02m: short enough for a log line, exact enough for an estimate."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Bar(tqdm):
    """tqdm with the two calls the library adds: `phase` (what runs now that the counted work is done, e.g.
    "saving…") and `note` (a line above the bar)."""

    activity: str | None = None

    def phase(self, text: str | None) -> None:
        if self.disable or text == self.activity:
            return
        if self.activity is None:
            self.base_desc = self.desc
        self.activity = text
        self.set_description_str(f"{self.base_desc} ({text})" if text else self.base_desc, refresh=True)

    def note(self, message: str) -> None:
        if not self.disable:
            self.write(message, file=self.fp)


class LineProgress:
    """tqdm's interface, as far as the library uses it, printing a line at most every `interval` seconds
    once `delay` seconds have passed, and a last line at close if it printed any. `clock` is injectable."""

    disable = False

    def __init__(self, desc: str = "", total: float | None = None, initial: float = 0, unit: str = "it",
                 unit_scale: bool = False, percent: bool = False, file: IO[str] | None = None, delay: float = 0.0,
                 interval: float | None = None, clock: Callable[[], float] | None = None):
        self.desc, self.total, self.n, self.initial, self.unit = desc, total, initial, initial, unit
        self.unit_scale, self.percent, self.fp = unit_scale, percent, file or sys.stderr
        # read at call time, not bound at import: a test (or a caller) may set LOG_INTERVAL
        self.delay, self.interval = delay, LOG_INTERVAL if interval is None else interval
        self.clock = clock or time.monotonic
        self.start = self.clock()
        self.postfix = ""
        self.activity: str | None = None
        self.last_print: float | None = None
        self.last_line = ""
        self.closed = False

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _count(self, n: float) -> str:
        return tqdm.format_sizeof(n) if self.unit_scale and n >= 1000 else f"{n:,.0f}"  # 12.3k, but 64 not 64.0

    def line(self, final: bool = False) -> str:
        elapsed = self.clock() - self.start
        parts = []
        done = self.total is not None and self.total > 0
        pct = f"{100 * min(self.n / self.total, 1.0):.0f}%" if done else ""
        if self.percent and done:
            parts.append(pct)
        else:
            count = self._count(self.n) + (f"/{self._count(self.total)}" if done else "")
            parts.append(f"{count} {self.unit}" + (f" ({pct})" if done else ""))
        parts.append(format_seconds(elapsed))
        if final:
            parts.append("done")
        elif self.activity:
            parts.append(self.activity)
        elif done and self.initial < self.n < self.total and elapsed >= 1:  # no estimate from nothing
            rate = (self.n - self.initial) / max(elapsed, 1e-9)
            parts.append(f"~{format_seconds((self.total - self.n) / rate)} left")
        if self.postfix:
            parts.append(self.postfix)
        return f"{self.desc}: " + ", ".join(parts)

    def _emit(self, final: bool = False) -> None:
        text = self.line(final)
        print(text, file=self.fp, flush=True)
        self.last_print, self.last_line = self.clock(), text

    def _maybe_emit(self) -> None:
        now = self.clock()
        if now - self.start < self.delay:
            return
        if self.last_print is None or now - self.last_print >= self.interval:
            self._emit()

    def update(self, n: float = 1) -> None:
        self.n += n
        self._maybe_emit()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        pass

    def phase(self, text: str | None) -> None:
        """Name what runs now (None: the counted work again). Once the counted work is done nothing else would
        show for the rest of the run (a final evaluation, a save), so a line is printed at once; otherwise the
        next line carries it."""
        if text == self.activity:
            return
        self.activity = text
        if text and self.total is not None and self.n >= self.total \
                and self.clock() - self.start >= self.delay:
            self._emit()

    def note(self, message: str) -> None:
        print(message, file=self.fp, flush=True)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.activity = None
        if self.last_print is not None:  # quiet runs stay quiet; a printed one says it ended
            self._emit(final=True)


Progress = Bar | LineProgress


def progress_bar(enabled: bool | None, *, desc: str = "", total: float | None = None, initial: float = 0,
                 unit: str = "it", unit_scale: bool = False, percent: bool = False, file: IO[str] | None = None,
                 clock: Callable[[], float] | None = None) -> Progress:
    """Progress of long work on stderr (or `file`). enabled=None (auto): a bar on a terminal once the work has
    taken PROGRESS_DELAY seconds, a line every LOG_INTERVAL seconds elsewhere (the first after LOG_INTERVAL);
    True: at once, a bar on a terminal and lines elsewhere; False: nothing. `percent`: show the share done, not
    the count (for totals that are not a count of anything, e.g. thousandths of a run)."""
    file = file or sys.stderr
    if enabled is False:
        return Bar(total=total, disable=True)
    try:
        terminal = file.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream: write lines
        terminal = False
    if terminal:
        return Bar(file=file, desc=desc, total=total, initial=initial, unit=unit, unit_scale=unit_scale,
                   delay=0 if enabled else PROGRESS_DELAY, dynamic_ncols=True,
                   bar_format=_PERCENT_FORMAT if percent else None)
    return LineProgress(desc, total, initial, unit, unit_scale, percent, file,
                        delay=0 if enabled else LOG_INTERVAL, clock=clock)
