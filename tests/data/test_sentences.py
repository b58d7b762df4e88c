"""The sentence splitter (data/sentences.py) on hand-written text."""

from __future__ import annotations

import pytest

from textdiffusion.core.errors import UserError
from textdiffusion.data.sentences import document_sentences, split_long, split_sentences


def test_sentences_end_at_terminal_marks_followed_by_whitespace():
    text = "Hello there. How are you? Fine!  Pi is 3.14 today."
    assert split_sentences(text) == ["Hello there.", "How are you?", "Fine!", "Pi is 3.14 today."]


def test_closing_quotes_and_brackets_stay_with_their_sentence():
    text = "He said \"Go.\" Then he left. [Exit.] 'Who?' she asked."
    assert split_sentences(text) == ["He said \"Go.\"", "Then he left.", "[Exit.]", "'Who?'", "she asked."]


def test_line_breaks_are_layout_and_paragraphs_end_sentences():
    text = "KING.\nWhat news\nfrom France?\n\nACT I\n \nScene two\r\n\r\nnext"
    assert split_sentences(text) == ["KING.", "What news from France?", "ACT I", "Scene two", "next"]


def test_long_sentences_are_cut_after_the_last_clause_mark_that_fits():
    sentence = "Alpha beta; gamma delta, epsilon zeta eta theta"
    assert split_long(sentence, 20) == ["Alpha beta;", "gamma delta,", "epsilon zeta eta", "theta"]
    assert split_long("abcdefghij", 4) == ["abcd", "efgh", "ij"]  # no mark: a hard cut
    assert split_sentences("One, two, three four. Five.", max_chars=10) == ["One, two,", "three", "four.",
                                                                             "Five."]


def test_pieces_fit_and_keep_every_word():
    text = "Now is the winter of our discontent made glorious summer by this sun of York; and all the clouds."
    for limit in (11, 15, 31):  # at least the longest word: only a word longer than the limit is cut
        pieces = split_sentences(text, max_chars=limit)
        assert all(len(p) <= limit for p in pieces)
        assert " ".join(pieces) == text


def test_document_sentences_stops_at_the_sentence_budget():
    docs = ["A. B. C.", "D. E.", "F."]
    assert list(document_sentences(iter(docs), 50, 4)) == [["A.", "B.", "C."], ["D."]]
    assert list(document_sentences(iter(docs), 50)) == [["A.", "B.", "C."], ["D.", "E."], ["F."]]


@pytest.mark.parametrize("bad", [1, 0, 2.5, "10"])
def test_bad_max_chars_is_a_user_error(bad):
    with pytest.raises(UserError, match="max_chars"):
        split_sentences("Some text.", max_chars=bad)
