"""Filmstrips of the reverse process: text crystallizing out of [MASK] tokens, frame by frame.

Render the frames a sampler records (`record_frames=True`) as terminal text, a self-contained HTML
page with a slider, or an animated GIF. `export` picks the format from the file suffix.
"""

from __future__ import annotations

import bisect
import html
import json
import textwrap
from pathlib import Path

import torch

from ..core.errors import UserError
from ..data.tokenizers import MASK_CHAR, Tokenizer
from ..samplers.base import Frame
from .segments import Segment, edit_header, frame_segments, is_edit, mask_segments, printable, row_ids

SUFFIXES = (".html", ".gif", ".txt")


def pick_frames(frames: list[Frame], n: int) -> list[Frame]:
    """`n` frames evenly spaced by step, first and last included; all of them if there are at most `n`.

    Each target step takes the nearest frame, so uneven steps can give fewer than `n` (no duplicates).
    """
    if n < 2:
        raise UserError(f"a filmstrip needs at least 2 frames (first and last), got n={n}")
    frames = sorted(frames, key=lambda f: f.step)
    if len(frames) <= n:
        return frames
    steps = [f.step for f in frames]
    first, last = steps[0], steps[-1]
    chosen: list[int] = []
    for k in range(n):
        target = first + (last - first) * k / (n - 1)
        j = bisect.bisect_left(steps, target)
        if j == len(steps) or (j > 0 and target - steps[j - 1] <= steps[j] - target):
            j -= 1
        if k == n - 1:
            j = len(frames) - 1  # the last frame itself, even when several share its step
        if j not in chosen:
            chosen.append(j)
    return [frames[j] for j in chosen]


def masked_fraction(ids: torch.Tensor, mask_id: int) -> float:
    """The fraction of positions of `ids` that hold [MASK] (0.0 for an empty tensor)."""
    if ids.numel() == 0:
        return 0.0
    return (ids == mask_id).double().mean().item()


def _check_frames(frames: list[Frame]) -> None:
    if not frames:
        raise UserError("no frames to render: sample with record_frames=True")


def _header(frame: Frame, total: int, ids: list[int], mask_id: int) -> str:
    """`step 16/128 · t=0.875 · 12% unmasked`."""
    unmasked = 1.0 - masked_fraction(torch.tensor(ids, dtype=torch.long), mask_id)
    return f"step {frame.step}/{total} · t={frame.t:.3f} · {100 * unmasked:.0f}% unmasked"


_WDIFF = {"old": "{}", "ins": "{{+{}+}}", "rep": "{{+{}+}}", "del": "[-{}-]"}


def _render_terminal_edits(chosen: list[Frame], tokenizer: Tokenizer, row: int, width: int) -> str:
    """Edit frames as text: insertions and new tokens as {+text+}, deleted and replaced ones as [-text-]."""
    total = chosen[-1].step
    blocks = []
    for i, frame in enumerate(chosen):
        segments = frame_segments(chosen, i, row, tokenizer)
        text = "".join(_WDIFF[kind].format(t) for kind, t in segments)
        blocks.append("\n".join([edit_header(frame, total, segments), *_wrap(text, width)]))
    return "\n\n".join(blocks) + "\n"


# --------------------------------------------------------------------------- terminal


def _wrap(text: str, width: int) -> list[str]:
    """Wrap each line of `text` to `width` columns, keeping the text's own line breaks."""
    lines: list[str] = []
    for line in text.split("\n"):
        lines.extend(textwrap.wrap(line.replace("\t", "    "), width=width) or [""])
    return lines


def render_terminal(frames: list[Frame], tokenizer: Tokenizer, row: int = 0, width: int = 100, n: int = 6) -> str:
    """Plain text: for each chosen frame, a header line and the decoded text (masks as ▒), wrapped."""
    _check_frames(frames)
    chosen = pick_frames(frames, n)
    if is_edit(chosen):
        return _render_terminal_edits(chosen, tokenizer, row, width)
    total = chosen[-1].step
    blocks = []
    for frame in chosen:
        ids = row_ids(frame, row)
        text = printable(tokenizer.decode(ids, mask_char=MASK_CHAR))
        blocks.append("\n".join([_header(frame, total, ids, tokenizer.mask_id), *_wrap(text, width)]))
    return "\n\n".join(blocks) + "\n"


# --------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
.frame { margin: 1.2em 0; }
.frame h2 { font-size: 0.95em; color: #555; font-weight: normal; margin: 0 0 0.3em; }
.frame pre { white-space: pre-wrap; word-break: break-word; font-size: 0.95em; line-height: 1.45;
  background: #fafafa; border: 1px solid #ddd; padding: 0.7em; margin: 0; }
.m { color: #bbb; }
.new { background: #ffe27a; }
.ins { background: #b6f0b6; }
.rep { background: #ffe27a; }
.del { color: #b33; text-decoration: line-through; }
#controls { position: sticky; top: 0; background: #fff; padding: 0.5em 0; display: flex; gap: 1em; }
#controls[hidden] { display: none; }
#slider { flex: 1; }
.js .frame { display: none; }
.js .frame.current { display: block; }
"""

_JS = """
(function () {
  var frames = document.querySelectorAll(".frame");
  var slider = document.getElementById("slider"), play = document.getElementById("play");
  var label = document.getElementById("label"), timer = null;
  document.body.classList.add("js");
  document.getElementById("controls").hidden = false;
  slider.max = frames.length - 1;
  function show(i) {
    frames.forEach(function (f, k) { f.classList.toggle("current", k === i); });
    slider.value = i;
    label.textContent = (i + 1) + " / " + frames.length;
  }
  function stop() { clearInterval(timer); timer = null; play.textContent = "play"; }
  slider.addEventListener("input", function () { stop(); show(Number(slider.value)); });
  play.addEventListener("click", function () {
    if (timer) { stop(); return; }
    if (Number(slider.value) >= frames.length - 1) { show(0); }
    play.textContent = "pause";
    timer = setInterval(function () {
      var i = Number(slider.value) + 1;
      if (i >= frames.length) { stop(); return; }
      show(i);
    }, DELAY);
  });
  show(frames.length - 1);
})();
"""


def _segments_html(segments: list[Segment]) -> str:
    parts = []
    for kind, text in segments:
        text = html.escape(text, quote=False)
        parts.append(text if kind == "old" else f'<span class="{"m" if kind == "mask" else kind}">{text}</span>')
    return "".join(parts)


def render_html(frames: list[Frame], tokenizer: Tokenizer, row: int = 0, title: str = "textdiffusion filmstrip",
                delay_ms: int = 120) -> str:
    """A self-contained HTML page of every frame: masks greyed, newly revealed tokens highlighted, a slider.

    Without JavaScript every frame shows, one under the other.
    """
    _check_frames(frames)
    frames = sorted(frames, key=lambda f: f.step)
    total = frames[-1].step
    sections = []
    prev: list[int] | None = None
    for i, frame in enumerate(frames):
        ids = row_ids(frame, row)
        if is_edit(frames):
            segments = frame_segments(frames, i, row, tokenizer)
            header = html.escape(edit_header(frame, total, segments), quote=False)
            body = _segments_html(segments)
        else:
            header = html.escape(_header(frame, total, ids, tokenizer.mask_id), quote=False)
            body = _segments_html(mask_segments(ids, prev, tokenizer))
        sections.append(f'<section class="frame" data-index="{i}" data-step="{frame.step}">'
                        f"<h2>{header}</h2><pre>{body}</pre></section>")
        prev = ids
    safe_title = html.escape(title)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{safe_title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<h1>{safe_title}</h1>\n"
        '<div id="controls" hidden><button id="play" type="button">play</button>'
        '<input id="slider" type="range" min="0" value="0" step="1"><span id="label"></span></div>\n'
        + "\n".join(sections)
        + f"\n<script>{_JS.replace('DELAY', json.dumps(int(delay_ms)))}</script>\n</body>\n</html>\n"
    )


# --------------------------------------------------------------------------- GIF

_BG, _FG, _NEW, _HEAD, _MASK = (255, 255, 255), (30, 30, 30), (20, 90, 200), (110, 110, 110), (200, 200, 200)
_INS, _DEL = (20, 140, 40), (200, 40, 40)  # edit frames: inserted text green, deleted text red and struck out
_INKS = {"new": _NEW, "rep": _NEW, "ins": _INS, "del": _DEL}
_FONT_SIZE = 14
_MARGIN = 12
_LAST_HOLD = 10  # the last frame stays this many times longer


def _palette():
    """One shared palette: blends from the background to each ink, for antialiased edges without dithering."""
    from PIL import Image

    colors = []
    for ink in (_FG, _NEW, _HEAD, _MASK, _INS, _DEL):
        for k in range(16):
            colors.extend(round(b + (c - b) * k / 15) for b, c in zip(_BG, ink))
    pal = Image.new("P", (1, 1))
    pal.putpalette(colors)
    return pal


def _load_font(size: int = _FONT_SIZE):
    """Pillow's built-in font: scalable (FreeType) in Pillow >= 10.1, else the small bitmap one."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no size argument
        return ImageFont.load_default()


def _cells(segments: list[Segment]) -> list[tuple[str, str]]:
    """One (kind, char) per character; every mask is a cell of its own, drawn as a grey box."""
    return [(kind, ch) for kind, text in segments for ch in text.replace("\t", "    ")]


def _layout(cells: list[tuple[str, str]], widths: dict[str, float], max_w: float) -> list[list[tuple[str, str]]]:
    """Greedy wrap of cells to `max_w` pixels, breaking after the last space of a line where there is one."""
    lines: list[list[tuple[str, str]]] = []
    line: list[tuple[str, str]] = []
    x = 0.0
    for cell in cells:
        if cell[1] == "\n" and cell[0] != "mask":
            lines.append(line)
            line, x = [], 0.0
            continue
        w = widths[cell[0] if cell[0] == "mask" else cell[1]]
        if line and x + w > max_w:
            spaces = [i for i, (k, ch) in enumerate(line) if ch == " " and k != "mask"]
            cut = spaces[-1] + 1 if spaces and spaces[-1] + 1 < len(line) else len(line)
            lines.append(line[:cut])
            line = line[cut:]
            x = sum(widths[k if k == "mask" else ch] for k, ch in line)
        line.append(cell)
        x += w
    lines.append(line)
    return lines


def write_gif(frames: list[Frame], tokenizer: Tokenizer, path: str | Path, row: int = 0, width_chars: int = 80,
              duration_ms: int = 120, n: int | None = None) -> Path:
    """An animated GIF of the chosen frames (all of them when `n` is None); the last frame is held longer.

    Masks are drawn as grey boxes (Pillow's built-in font has no ▒), newly revealed characters in blue.
    """
    from PIL import Image, ImageDraw

    _check_frames(frames)
    chosen = sorted(frames, key=lambda f: f.step) if n is None else pick_frames(frames, n)
    font = _load_font()
    em = font.getlength("n")
    left, top, right, bottom = font.getbbox("Ag")
    line_h = int(bottom - min(top, 0)) + 5
    max_w = width_chars * em
    total = chosen[-1].step

    rows = [row_ids(f, row) for f in chosen]
    widths = {"mask": em}
    pages = []
    for i, (frame, ids) in enumerate(zip(chosen, rows)):
        if is_edit(chosen):
            segments = frame_segments(chosen, i, row, tokenizer)
            header = edit_header(frame, total, segments)
        else:
            segments = mask_segments(ids, rows[i - 1] if i else None, tokenizer)
            header = _header(frame, total, ids, tokenizer.mask_id)
        cells = _cells(segments)
        widths.update({ch: font.getlength(ch) for _, ch in cells if ch not in widths})
        pages.append((header, _layout(cells, widths, max_w)))

    n_lines = max(len(lines) for _, lines in pages)
    palette = _palette()
    size = (int(max_w + 2 * _MARGIN) + 1, 2 * _MARGIN + line_h * (n_lines + 1) + 6)
    images = []
    for header, lines in pages:
        im = Image.new("RGB", size, _BG)
        draw = ImageDraw.Draw(im)
        draw.text((_MARGIN, _MARGIN), header, font=font, fill=_HEAD)
        y0 = _MARGIN + line_h
        draw.line([(_MARGIN, y0 + 1), (size[0] - _MARGIN, y0 + 1)], fill=_MASK)
        for k, line in enumerate(lines):
            x, y = float(_MARGIN), y0 + 6 + k * line_h
            for kind, ch in line:
                w = widths["mask" if kind == "mask" else ch]
                if kind == "mask":
                    draw.rectangle([x + 1, y + 2, x + w - 1, y + line_h - 4], fill=_MASK)
                elif ch != " ":
                    draw.text((x, y), ch, font=font, fill=_INKS.get(kind, _FG))
                if kind == "del":  # struck out
                    draw.line([(x, y + line_h // 2 - 1), (x + w, y + line_h // 2 - 1)], fill=_DEL)
                x += w
        images.append(im.quantize(palette=palette, dither=Image.Dither.NONE))

    durations = [int(duration_ms)] * len(images)
    durations[-1] = int(duration_ms) * _LAST_HOLD
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    return path


# --------------------------------------------------------------------------- export


def _checked_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(f"cannot write a filmstrip to {path.name!r}: use one of the suffixes {', '.join(SUFFIXES)}")
    return suffix


def check_export_path(path: str | Path) -> Path:
    """`path` if a filmstrip can be written there by a command (a known suffix, in a folder that exists: a typo
    in the folder must not create a tree): checked before sampling, not after."""
    path = Path(path)
    _checked_suffix(path)
    if not path.parent.is_dir():
        raise UserError(f"cannot write a filmstrip to {path}: the folder {path.parent} does not exist "
                        "(create it first, or export to an existing folder)")
    if path.is_dir():
        raise UserError(f"cannot write a filmstrip to {path}: it is a folder; give a file name")
    return path


def export(frames: list[Frame], tokenizer: Tokenizer, path: str | Path, row: int = 0) -> Path:
    """Write a filmstrip in the format named by the suffix of `path`: .html, .gif or .txt."""
    path = Path(path)
    suffix = _checked_suffix(path)
    if suffix == ".gif":
        return write_gif(frames, tokenizer, path, row=row)
    text = render_html(frames, tokenizer, row=row) if suffix == ".html" else render_terminal(frames, tokenizer, row=row)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
