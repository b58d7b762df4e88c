"""What a stream says, frame by frame: append text is final (never taken back), stop sequences are held back
until they can be told apart, a split UTF-8 character waits, and a slow client's frames fold together."""

from __future__ import annotations

import asyncio

import torch

from textdiffusion.data.tokenizers import ByteTokenizer
from textdiffusion.samplers import Frame
from textdiffusion.serve.engine import Job
from textdiffusion.serve.streaming import TextTracker, merge_updates

TOK = ByteTokenizer()
M = TOK.mask_id


def frames_of(rows: list[list[int]]) -> list[Frame]:
    return [Frame(step=i, t=1 - i / len(rows), ids=torch.tensor([row])) for i, row in enumerate(rows)]


def ids(text: str, masked_from: int | None = None) -> list[int]:
    out = list(text.encode())
    return out if masked_from is None else out[:masked_from] + [M] * (len(out) - masked_from)


def test_append_sends_the_revealed_prefix_and_holds_a_split_character():
    final = "ab\u00e9cd"  # é is two bytes
    rows = [ids(final, 0), ids(final, 1), [ord("a"), M, 0xC3, M, M, M], ids(final, 3), ids(final)]
    tracker = TextTracker(TOK, 0, 1, "ancestral", [])
    sent = ["".join(u.delta for u in tracker.frame(f)) for f in frames_of(rows)]
    assert sent == ["", "a", "", "b", "\u00e9cd"]  # after "ab", the lone first byte of é waits for the second
    text, rest, reason = tracker.finish(torch.tensor([ids(final)]))[0]
    assert (text, rest, reason) == (final, "", "length")


def test_stop_sequence_cuts_and_is_never_sent_in_part():
    final = "hello END world"
    rows = [ids(final, k) for k in (0, 7, 8, 9, 11, len(final))]
    tracker = TextTracker(TOK, 0, 1, "ancestral", ["END"])
    sent = "".join(u.delta for f in frames_of(rows) for u in tracker.frame(f))
    assert sent == "hello " and tracker.all_stopped  # "E", "EN" were held back; "END" cut the text
    assert tracker.finish(torch.tensor([ids(final)]))[0] == ("hello ", "", "stop")


def test_samplers_that_revise_tokens_send_text_only_at_the_end():
    tracker = TextTracker(TOK, 0, 1, "remdm", [], mode="denoise")
    updates = [tracker.frame(f) for f in frames_of([ids("abc", 0), ids("abc", 2), ids("abc")])]
    assert all(u.delta == "" for step in updates for u in step)
    assert [u.diffusion["changed"] for step in updates for u in step] == [[], [0, 1], [2]]
    assert tracker.finish(torch.tensor([ids("abc")]))[0] == ("abc", "abc", "length")


def test_merged_frames_keep_all_text_and_the_newest_canvas():
    tracker = TextTracker(TOK, 0, 1, "ancestral", [], mode="denoise")
    frames = frames_of([ids("abcd", 0), ids("abcd", 1), ids("abcd", 3), ids("abcd")])
    first = tracker.frame(frames[0])
    waiting = tracker.frame(frames[1])
    for frame in frames[2:]:
        merge_updates(waiting, tracker.frame(frame))
    assert first[0].delta == "" and waiting[0].delta == "abcd"
    assert waiting[0].diffusion["step"] == 3 and waiting[0].diffusion["changed"] == [0, 1, 2, 3]
    assert waiting[0].diffusion["tokens"] == list("abcd")


def test_a_client_that_does_not_read_holds_a_bounded_backlog():
    async def run() -> tuple[int, str]:
        job = Job(1, asyncio.get_running_loop(), max_seconds=60)
        tracker = TextTracker(TOK, 0, 1, "ancestral", [], mode="denoise")
        text = "x" * 40
        for k in range(41):  # 41 frames, nobody reading
            updates = tracker.frame(Frame(step=k, t=1 - k / 40, ids=torch.tensor([ids(text, k)])))
            job.push_merging(updates, merge_updates, max_backlog=8)
        await asyncio.sleep(0)  # let the pushes land in the queue
        events = []
        while not job.events.empty():
            event = job.events.get_nowait()
            job.taken(event)
            events.append(event)
        return len(events), "".join(u.delta for e in events for u in e)

    count, text = asyncio.run(run())
    assert count == 8 and text == "x" * 40  # 8 events at most, and no text lost


def test_eos_ends_a_completion_and_nothing_after_it_is_sent():
    E = TOK.eos_id
    final = list(b"hi there") + [E] + list(b"junk")
    rows = [[M] * len(final), list(b"hi") + [M] * (len(final) - 2), final[:9] + [M] * 4, final]
    tracker = TextTracker(TOK, 0, 1, "ancestral", [], stop_at_eos=True)
    sent = "".join(u.delta for f in frames_of(rows) for u in tracker.frame(f))
    assert sent == "hi there" and tracker.all_stopped
    assert tracker.finish(torch.tensor([final]))[0] == ("hi there", "", "stop")


def test_eos_is_found_at_the_end_for_samplers_that_revise_tokens():
    E = TOK.eos_id
    tracker = TextTracker(TOK, 0, 2, "remdm", [], stop_at_eos=True)
    rows = torch.tensor([list(b"ab") + [E] + list(b"cd"), list(b"abxcd")])
    assert tracker.finish(rows) == [("ab", "ab", "stop"), ("abxcd", "abxcd", "length")]


def test_eos_is_only_dropped_where_it_does_not_end_the_text():
    E = TOK.eos_id
    tracker = TextTracker(TOK, 0, 1, "ancestral", [])  # infill: the whole canvas is the answer
    assert tracker.finish(torch.tensor([list(b"ab") + [E] + list(b"cd")]))[0] == ("abcd", "abcd", "length")
