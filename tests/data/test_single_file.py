"""One text file trains out of the box (issue 20.2): a source with too few documents for the hash split
is split by position, the last data.val_fraction of each document being validation, and the log says so."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from textdiffusion.cli import main
from textdiffusion.data.corpus import iter_documents, plan_split
from textdiffusion.train.config import load_config
from textdiffusion.train.trainer import Trainer

pytestmark = pytest.mark.slow

WORDS = ("the moon rose over a quiet sea and every sailor sang of home while wind and rain "
         "beat upon the old grey stones of the harbour wall").split()


def write_poem(path: Path, n_lines: int = 90, seed: int = 0) -> str:
    """A few KB of varied text, one document."""
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 10))).capitalize() + rng.choice(",.;!?")
             for _ in range(n_lines)]
    text = "\n".join(lines) + "\n"
    path.write_text(text, encoding="utf-8")
    return text


@pytest.mark.parametrize("streaming", [False, True], ids=["packed", "streamed"])
def test_a_single_text_file_trains_and_evaluates_through_the_cli(tmp_path, capsys, streaming):
    text = write_poem(tmp_path / "poem.txt")
    assert 3_000 < len(text) < 8_000
    run = tmp_path / "runs" / "poem"
    argv = ["train", "--config", "tiny", "--out", str(run), f"data.source={tmp_path / 'poem.txt'}",
            f"data.streaming={str(streaming).lower()}", "train.steps=4", "train.device=cpu", "run.progress=false",
            "run.log_every=2", "run.eval_every=2", "run.save_every=4", "run.sample_steps=2"]
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    val_chars = int(len(text) * 0.05)
    assert (f"validation: the last 5% of poem.txt by position ({val_chars:,} of {len(text):,} characters)"
            in out), out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_nelbo" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert all(math.isfinite(r["val_nelbo"]) and r["val_tokens"] > 0 for r in evals)
    assert (run / "checkpoint" / "model.safetensors").is_file()


def test_the_position_split_takes_the_last_fraction_of_the_file(tmp_path):
    text = write_poem(tmp_path / "poem.txt")
    source = str(tmp_path / "poem.txt")
    plan = plan_split(source, 0.05, count=True)
    assert plan.by_position and plan.documents == 1 and plan.first == "poem.txt"
    [train] = iter_documents(source, "train", 0.05, plan=plan)
    [val] = iter_documents(source, "validation", 0.05, plan=plan)
    assert train + val == text and len(val) == int(len(text) * 0.05) == plan.val_chars
    assert [train] == list(iter_documents(source, "train", 0.05))  # planned the same way without a plan
    [half] = iter_documents(source, "validation", 0.5)  # the values of the message in the issue
    assert len(half) == len(text) // 2


def test_a_lone_document_too_short_for_a_validation_chunk_says_what_to_change(tmp_path, capsys):
    write_poem(tmp_path / "poem.txt", n_lines=30)
    cfg = load_config("tiny", [f"data.source={tmp_path / 'poem.txt'}", f"run.out_dir={tmp_path / 'run'}",
                               "data.seq_len=256", "data.val_fraction=0.01", "train.batch_size=2",
                               "run.progress=false"])
    with pytest.raises(ValueError, match=r"the validation text \(the last 1% of each document, \d+ characters\) "
                                         r"yields no chunk of 256 tokens: raise data.val_fraction"):
        Trainer(cfg)
