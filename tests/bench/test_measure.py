"""Peak memory of a measurement belongs to the measuring process, not to the parent that started it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from textdiffusion.bench.measure import _peak_rss_mb


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the inherited high-water mark is a Linux quirk")
def test_child_peak_memory_does_not_inherit_the_parents():
    big = torch.ones(400 * 2**20 // 4)  # the parent touches 400 MB
    parent = _peak_rss_mb()
    code = "from textdiffusion.bench.measure import _peak_rss_mb; print(_peak_rss_mb())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert parent > 400 and child < parent - 300, (parent, child)  # ru_maxrss would report >= the parent's
    del big
