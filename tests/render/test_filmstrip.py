import re

import pytest
import torch
from PIL import Image

from textdiffusion.core.errors import UserError
from textdiffusion.data.tokenizers import ByteTokenizer
from textdiffusion.render.filmstrip import (
    _MASK,
    export,
    masked_fraction,
    pick_frames,
    render_html,
    render_terminal,
    write_gif,
)
from textdiffusion.samplers import Frame

TOK = ByteTokenizer()
TEXT = "Hi <script>alert(1)</script> & bye!!"  # 36 bytes: even, so half of it is exactly 50%
OTHER = "the second sample of the batch, okay"  # same length, row 1
HEADER = re.compile(r"^step (\d+)/(\d+) · t=([\d.]+) · (\d+)% unmasked$", re.M)


def _frames() -> list[Frame]:
    """Three frames of a 2-sample batch: all masks, even positions revealed, everything revealed."""
    full = torch.tensor([TOK.encode(TEXT), TOK.encode(OTHER)])
    assert full.shape == (2, 36)
    half = full.clone()
    half[:, 1::2] = TOK.mask_id
    return [Frame(0, 1.0, torch.full_like(full, TOK.mask_id)), Frame(5, 0.5, half), Frame(10, 0.0, full)]


def _stepped(steps: list[int]) -> list[Frame]:
    return [Frame(s, 1 - s / max(steps), torch.zeros(1, 4, dtype=torch.long)) for s in steps]


def test_pick_frames_evenly_spaced_with_ends():
    frames = _stepped(list(range(21)))
    assert [f.step for f in pick_frames(frames, 5)] == [0, 5, 10, 15, 20]
    steps = [f.step for f in pick_frames(_stepped(list(range(129))), 6)]
    assert steps[0] == 0 and steps[-1] == 128 and len(steps) == 6
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    assert max(gaps) - min(gaps) <= 1


def test_pick_frames_few_frames_and_dedup():
    frames = _stepped([0, 3, 7])
    assert pick_frames(frames, 6) == frames
    picked = pick_frames(_stepped([0, 1, 2, 3, 100]), 4)  # targets 0, 33, 67, 100: 67 and 100 both pick 100
    assert [f.step for f in picked] == [0, 3, 100]
    assert len({id(f) for f in picked}) == len(picked)
    with pytest.raises(UserError):
        pick_frames(frames, 1)
    tied = _stepped([0, 1, 2, 3, 4, 4])  # the last frame shares its step with the one before it
    assert pick_frames(tied, 3)[-1] is tied[-1]


def test_masked_fraction():
    ids = torch.tensor([[TOK.mask_id, 65, TOK.mask_id, 66]])
    assert masked_fraction(ids, TOK.mask_id) == 0.5
    assert masked_fraction(torch.zeros(0, dtype=torch.long), TOK.mask_id) == 0.0


def test_render_terminal_headers_masks_and_text():
    out = render_terminal(_frames(), TOK, width=100)
    headers = HEADER.findall(out)
    assert [(int(s), int(tot), int(p)) for s, tot, _, p in headers] == [(0, 10, 0), (5, 10, 50), (10, 10, 100)]
    assert [float(t) for _, _, t, _ in headers] == [1.0, 0.5, 0.0]
    blocks = out.strip().split("\n\n")
    assert len(blocks) == 3
    assert blocks[0].splitlines()[1] == "▒" * 36
    assert blocks[1].splitlines()[1] == "".join(c if i % 2 == 0 else "▒" for i, c in enumerate(TEXT))
    assert blocks[2].splitlines()[1] == TEXT and "▒" not in blocks[2]


def test_render_terminal_row_and_wrapping():
    out = render_terminal(_frames(), TOK, row=1, width=12)
    last = out.strip().split("\n\n")[-1].splitlines()
    assert all(len(line) <= 12 for line in last[1:])
    assert " ".join(last[1:]) == OTHER
    with pytest.raises(UserError):
        render_terminal(_frames(), TOK, row=2)
    lines = Frame(1, 0.0, torch.tensor([TOK.encode("first line\nsecond")]))
    assert render_terminal([lines], TOK).splitlines()[1:] == ["first line", "second"]
    escape = Frame(1, 0.0, torch.tensor([TOK.encode("red \x1b[31m!")]))
    assert render_terminal([escape], TOK).splitlines()[1] == "red \ufffd[31m!"


def _sections(page: str) -> list[str]:
    return page.split('<section class="frame"')[1:]


def test_render_html_escapes_marks_masks_and_highlights_new():
    page = render_html(_frames(), TOK, title="a <b> title")
    assert page.startswith("<!DOCTYPE html>") and "<title>a &lt;b&gt; title</title>" in page
    assert "<script>alert" not in page and "<script" not in page.replace("<script>\n(function", "")
    assert "src=" not in page and "href=" not in page  # self-contained
    first, half, full = _sections(page)
    escaped = "Hi &lt;script&gt;alert(1)&lt;/script&gt; &amp; bye!!"
    assert re.sub(r"<[^>]+>", "", full.split("<pre>")[1].split("</pre>")[0]) == escaped
    assert len(HEADER.findall(re.sub(r"<[^>]+>", "\n", page))) == 3
    assert "".join(re.findall(r'<span class="m">(▒+)</span>', first)) == "▒" * 36
    assert first.count("▒") == 36 and 'class="new"' not in first
    assert half.count("▒") == 18 and re.findall(r'<span class="m">(▒+)</span>', half) == ["▒"] * 18
    evens = TEXT[0::2]
    new_half = "".join(re.findall(r'<span class="new">([^<]*)</span>', half))
    assert new_half == evens.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    new_full = "".join(re.findall(r'<span class="new">([^<]*)</span>', full))
    assert new_full == TEXT[1::2].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert "▒" not in full
    assert '<input id="slider" type="range"' in page and 'id="play"' in page


def _mask_pixels(im: Image.Image) -> int:
    """Pixels of the exact grey that mask boxes (and the rule under the header) are drawn in."""
    return dict((c, n) for n, c in im.convert("RGB").getcolors(maxcolors=1 << 16)).get(_MASK, 0)


def test_write_gif_animated_frames_masks_and_hold(tmp_path):
    frames = _frames()
    path = write_gif(frames, TOK, tmp_path / "strip.gif", duration_ms=100)
    assert path == tmp_path / "strip.gif"
    with Image.open(path) as im:
        assert im.format == "GIF" and im.is_animated and im.n_frames == 3
        durations, greys = [], []
        for k in range(im.n_frames):
            im.seek(k)
            durations.append(im.info["duration"])
            greys.append(_mask_pixels(im))
            width = im.size[0]
    assert durations[0] == 100 and durations[-1] > durations[0]
    rule = greys[2]  # no box left: only the rule under the header
    assert 0 < rule < 2 * width and greys[0] - rule > 36 * 20  # 36 boxes of at least ~5x5 pixels
    assert (greys[0] - rule) == pytest.approx(2 * (greys[1] - rule), rel=0.1)  # then 18 boxes


def test_write_gif_n_and_export(tmp_path):
    frames = _stepped(list(range(21)))
    with Image.open(write_gif(frames, TOK, tmp_path / "a.gif", n=4)) as im:
        assert im.n_frames == len(pick_frames(frames, 4)) == 4
    with Image.open(export(_frames(), TOK, tmp_path / "b.GIF")) as im:
        assert im.n_frames == 3
    html_path = export(_frames(), TOK, tmp_path / "sub" / "c.html")
    assert html_path.read_text(encoding="utf-8") == render_html(_frames(), TOK)
    assert export(_frames(), TOK, tmp_path / "d.txt", row=1).read_text(encoding="utf-8") == render_terminal(
        _frames(), TOK, row=1)
    with pytest.raises(UserError, match=r"\.html.*\.gif.*\.txt"):
        export(_frames(), TOK, tmp_path / "e.pdf")
    assert not (tmp_path / "e.pdf").exists()
