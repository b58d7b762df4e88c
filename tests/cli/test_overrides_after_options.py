"""Config overrides may come before and after a command's options (argparse alone takes them only once)."""

from __future__ import annotations

import pytest

from textdiffusion.cli.main import main, parse


def test_overrides_on_both_sides_of_an_option_are_all_kept():
    args = parse(["train", "--config", "tiny", "train.steps=3", "--out", "runs/x", "model.d_model=32", "run.seed=1"])
    assert args.overrides == ["train.steps=3", "model.d_model=32", "run.seed=1"]
    assert args.out == "runs/x"


@pytest.mark.parametrize("argv, stray", [
    (["train", "--config", "tiny", "train.steps=3", "--out", "runs/x", "nonsense"], "nonsense"),
    (["train", "--config", "tiny", "--no-such-flag"], "--no-such-flag"),
    (["presets", "train.steps=3"], "train.steps=3"),  # a command without overrides takes none
])
def test_anything_else_unknown_is_still_refused_in_one_line(argv, stray, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"unrecognized arguments: {stray}" in err and "Traceback" not in err
