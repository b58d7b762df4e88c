"""Progress bars on stderr for long work (sampling, scoring); quiet for quick runs and pipes."""

from __future__ import annotations

import sys

from tqdm import tqdm

PROGRESS_DELAY = 2.0  # seconds before an automatic progress bar appears: quick runs stay quiet


def progress_bar(enabled: bool | None, **kwargs) -> tqdm:
    """A tqdm bar on stderr. enabled=None (auto): only when stderr is a terminal, and only once the work
    has taken PROGRESS_DELAY seconds; True: always, at once (also into a pipe or a file); False: never."""
    return tqdm(file=sys.stderr, disable=enabled is False or (enabled is None and not sys.stderr.isatty()),
                delay=0 if enabled else PROGRESS_DELAY, dynamic_ncols=True, **kwargs)
