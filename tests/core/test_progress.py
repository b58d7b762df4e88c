"""Progress of long work: a tqdm bar on a terminal; in a log or a pipe, a plain line every LOG_INTERVAL seconds
and one when the work is done, a line at once for what still runs once the count is full, and quick runs quiet.
The clock is injected, so the test runs in no time and the seconds are exact."""

from __future__ import annotations

import io

import pytest

from textdiffusion.core import progress
from textdiffusion.core.progress import LOG_INTERVAL, Bar, LineProgress, format_seconds, progress_bar


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines(log: io.StringIO) -> list[str]:
    return log.getvalue().splitlines()


def test_a_log_gets_a_line_every_interval_and_a_last_one():
    clock, log = Clock(), io.StringIO()
    bar = progress_bar(None, desc="scoring", total=100, unit="tok", file=log, clock=clock)
    assert isinstance(bar, LineProgress) and not bar.disable
    for _ in range(100):  # one unit a second for 100 s
        clock.now += 1.0
        bar.update(1)
    bar.set_postfix_str("4.1234 nats/token")
    bar.close()
    out = lines(log)
    # the first after LOG_INTERVAL seconds, then one every LOG_INTERVAL: 100 s of work, 20 lines, plus the last
    assert len(out) == 100 // LOG_INTERVAL + 1, out
    assert out[0] == "scoring: 5/100 tok (5%), 5 s, ~1m35s left"
    assert out[1].startswith("scoring: 10/100 tok (10%), 10 s, ~")
    assert out[-1] == "scoring: 100/100 tok (100%), 1m40s, done, 4.1234 nats/token"
    bar.close()  # closing twice prints nothing more
    assert len(lines(log)) == len(out)


def test_a_quick_run_stays_quiet_unless_asked():
    clock, log = Clock(), io.StringIO()
    with progress_bar(None, desc="sampling", total=1000, percent=True, file=log, clock=clock) as bar:
        clock.now += LOG_INTERVAL - 0.5
        bar.update(1000)
        bar.phase("saving…")
    assert log.getvalue() == ""
    with progress_bar(True, desc="sampling", total=1000, percent=True, file=log, clock=clock) as bar:
        bar.update(400)  # asked for: a line at once
        clock.now += 2
        bar.update(600)
    assert lines(log) == ["sampling: 40%, 0 s", "sampling: 100%, 2 s, done"]
    with progress_bar(False, desc="x", total=3, file=log, clock=clock) as bar:
        bar.update(3)
        bar.phase("saving…")
        bar.note("a note")
    assert bar.disable and len(lines(log)) == 2


def test_what_runs_after_the_count_is_full_is_printed_at_once():
    """A final evaluation and a save run after the last step: a log must say so, not sit silent at 100%."""
    clock, log = Clock(), io.StringIO()
    bar = progress_bar(True, desc="train", total=10, unit="steps", file=log, clock=clock)
    bar.update(9)
    bar.phase("evaluating…")  # the count is not full: the next regular line carries it
    assert len(lines(log)) == 1
    clock.now += LOG_INTERVAL
    bar.update(1)
    assert lines(log)[-1] == "train: 10/10 steps (100%), 5 s, evaluating…"
    bar.phase("final evaluation…")
    bar.note("step 10: validation NELBO 2.0000 nats/token")
    bar.phase("saving…")
    bar.phase("saving…")  # the same phase again: no second line
    bar.close()
    assert lines(log)[-4:] == ["train: 10/10 steps (100%), 5 s, final evaluation…",
                               "step 10: validation NELBO 2.0000 nats/token",
                               "train: 10/10 steps (100%), 5 s, saving…",
                               "train: 10/10 steps (100%), 5 s, done"]


def test_resumed_counts_and_rates_start_from_the_initial_value():
    clock, log = Clock(), io.StringIO()
    bar = LineProgress("train", total=1000, initial=500, unit="steps", file=log, clock=clock)
    clock.now += 10
    bar.update(100)  # 100 steps in 10 s, 400 left: 40 s
    bar.set_postfix({"loss": "2.000"})
    bar.update(0)
    assert lines(log)[0] == "train: 600/1,000 steps (60%), 10 s, ~40 s left"
    clock.now += LOG_INTERVAL
    bar.update(0)
    assert lines(log)[1].endswith("loss=2.000")


def test_unit_scale_and_no_total():
    clock, log = Clock(), io.StringIO()
    bar = progress_bar(True, desc="scoring", unit="tok", unit_scale=True, file=log, clock=clock)
    bar.update(12_300)
    assert lines(log) == ["scoring: 12.3k tok, 0 s"]


def test_the_interval_is_read_when_the_progress_starts(monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)  # what the pipeline tests use to see every line
    clock, log = Clock(), io.StringIO()
    bar = progress_bar(None, desc="x", total=3, file=log, clock=clock)
    for _ in range(3):
        bar.update(1)
    assert len(lines(log)) == 3


def test_a_terminal_gets_a_tqdm_bar_with_phase_and_note():
    term = Terminal()
    bar = progress_bar(True, desc="train", total=2, file=term)
    assert isinstance(bar, Bar)
    bar.update(2)
    bar.phase("saving…")
    assert bar.desc == "train (saving…)"
    bar.note("step 2: validation NELBO 1.0000 nats/token")
    bar.phase(None)
    assert bar.desc == "train"
    bar.close()
    assert "step 2: validation NELBO" in term.getvalue() and "saving…" in term.getvalue()
    assert isinstance(progress_bar(None, desc="x", total=2, file=term), Bar)


@pytest.mark.parametrize("seconds, text", [(0.4, "0 s"), (59.4, "59 s"), (125, "2m05s"), (3720, "1h02m"), (-3, "0 s")])
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text
