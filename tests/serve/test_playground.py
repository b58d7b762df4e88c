"""The playground in headless Chromium (Debian's, driven by Playwright) against a real server: the text
crystallizing frame by frame, an error that replaces the last run's canvas, a stop that keeps only this run's
frames, input bounds that are the server's own limits, a served favicon, and a layout that stacks on a 390 px
phone (measured, not only looked at). Every state is screenshotted into one temporary folder (`screens`)."""

from __future__ import annotations

import json
import re
import struct
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from textdiffusion.serve.engine import Limits, Stop
from textdiffusion.serve.errors import as_api_error, error_body

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
LOADED = "document.querySelectorAll('#sampler option').length > 0"
# not the defaults (1024 and 1024), so that a bound written into the page cannot pass for the server's
LIMITS = Limits(max_steps=77, max_length=300)


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module (a launch is the slow part); each test opens its own context."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(tiny_server):
    """One server of the tiny model for the module, under LIMITS."""
    with tiny_server(limits=LIMITS) as (url, _):
        yield url


@pytest.fixture(scope="module")
def screens(tmp_path_factory) -> Path:
    """The folder every state's screenshot goes to (printed with -s; under pytest's basetemp)."""
    folder = tmp_path_factory.mktemp("playground-screens")
    print(f"\nplayground screenshots: {folder}")
    return folder


@pytest.fixture
def open_page(browser, server):
    """open_page(width, height): the playground loaded (its sampler list filled) in a fresh context."""
    contexts = []

    def open_(width: int, height: int):
        context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(20000)
        page.goto(server)
        page.wait_for_function(LOADED)
        return page

    yield open_
    for context in contexts:
        context.close()


def shot(page, path: Path, width: int, height: int, full_page: bool = False) -> None:
    """A screenshot, checked to be a PNG of the viewport's width (and height, or more for the whole page) with
    something drawn in it."""
    page.screenshot(path=str(path), full_page=full_page)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    png_width, png_height = struct.unpack(">II", data[16:24])
    assert png_width == width and (png_height >= height if full_page else png_height == height), path
    assert len(data) > 3000, path  # a blank page compresses to a few hundred bytes


def cut_short(stream: str, frames: int, error: str) -> str:
    """An SSE stream's first `frames` events, then `error` as one more event."""
    events = [event for event in re.split(r"\r?\n\r?\n", stream) if event.startswith("data:")]
    assert len(events) > frames and all("diffusion" in event for event in events[:frames])
    return "".join(f"{event}\r\n\r\n" for event in [*events[:frames], f"data: {error}"])


def wait_state(page, state: str) -> None:
    page.wait_for_function(f"document.getElementById('canvas').dataset.state === '{state}'")


def test_playground_shows_the_text_crystallizing(open_page, screens):
    page = open_page(1200, 700)
    shot(page, screens / "idle.png", 1200, 700)
    page.fill("#prompt", "To be, or ")
    page.fill("#steps", "12")
    page.fill("#seed", "3")
    page.fill("#max_tokens", "30")
    page.fill("#delay", "120")  # slow the redraw so that a screenshot catches a middle frame
    page.click("#generate")
    # the text read in the same task that sees frame 4: a busy machine cannot let the run finish in between
    shown = page.wait_for_function("(() => { const c = document.getElementById('canvas');"
                                   " return Number(c.dataset.frames) >= 4 ? c.innerText : false; })").json_value()
    assert "▒" in shown  # a frame with masks still in it was on screen
    shot(page, screens / "generating.png", 1200, 700)
    wait_state(page, "done")
    shot(page, screens / "done.png", 1200, 700)
    frames = int(page.get_attribute("#canvas", "data-frames"))
    final = page.inner_text("#canvas")
    assert frames == 13  # the all-[MASK] start and each of the 12 steps were drawn
    assert final.startswith("To be, or ") and "▒" not in final and len(final) > len("To be, or ")

    # a gap in the prompt goes to /v1/infill: the context around it stays as typed
    page.fill("#delay", "0")
    page.fill("#prompt", "The ")
    page.focus("#prompt")
    page.keyboard.press("End")
    page.click("#gap")
    page.type("#prompt", " of the night")
    assert page.input_value("#prompt") == "The [MASK]x8 of the night"
    page.click("#generate")
    wait_state(page, "done")
    shot(page, screens / "infilled.png", 1200, 700)
    filled = page.inner_text("#canvas")
    assert filled.startswith("The ") and filled.endswith(" of the night") and "[MASK]" not in filled


def test_an_error_replaces_the_last_runs_canvas(open_page, screens):
    page = open_page(1000, 600)
    page.fill("#prompt", "To be, or ")
    page.fill("#steps", "4")
    page.fill("#seed", "1")
    page.fill("#max_tokens", "20")
    page.click("#generate")
    wait_state(page, "done")
    before = page.inner_text("#canvas")
    assert before.startswith("To be, or ") and len(before) > len("To be, or ")

    page.fill("#steps", str(LIMITS.max_steps + 1))  # one over the server's limit: a 400 before any work
    page.click("#generate")
    wait_state(page, "error")
    shot(page, screens / "error.png", 1000, 600)
    shown = page.inner_text("#canvas")
    assert shown == f"error: steps is {LIMITS.max_steps + 1}, more than this server's limit of {LIMITS.max_steps} " \
                    "(--max-steps)"
    assert page.inner_text("#status") == shown
    assert page.locator("#canvas .error").count() == 1 and "To be" not in shown  # the old text is gone

    # an error after some frames (a run past --max-seconds): the server's own stream, cut after three frames
    # and ended by the error event the server sends then; the half-drawn frame is no answer, the error is
    timeout = as_api_error(Stop("timeout"))
    event = json.dumps(error_body(timeout.message, timeout.status, timeout.param, timeout.code))

    def cut(route) -> None:
        real = route.fetch()
        route.fulfill(response=real, body=cut_short(real.text(), 3, event))

    page.route("**/v1/completions", cut)
    page.fill("#steps", "8")
    page.click("#generate")
    wait_state(page, "error")
    shot(page, screens / "error-midway.png", 1000, 600)
    assert page.get_attribute("#canvas", "data-frames") == "3"  # the frames were drawn, then replaced
    assert page.inner_text("#canvas") == f"error: {timeout.message}"
    assert page.locator("#canvas .error").count() == 1


def test_a_stop_shows_this_runs_frames_never_the_last_runs(open_page, screens):
    page = open_page(1000, 600)
    page.fill("#prompt", "To be, or ")
    page.fill("#steps", "4")
    page.fill("#max_tokens", "20")
    page.click("#generate")
    wait_state(page, "done")
    assert page.inner_text("#canvas").startswith("To be, or ")

    # a request still waiting for its first frame (held here, as a full queue would hold it): the last run's
    # text is not left on the canvas as if it were this one's, and a stop then shows only that it stopped
    page.route("**/v1/completions", lambda route: None)  # never answered: the request hangs until aborted
    with page.expect_request("**/v1/completions"):
        page.click("#generate")
    assert page.inner_text("#status").startswith("waiting")
    assert page.get_attribute("#canvas", "data-state") == "running"
    shot(page, screens / "waiting.png", 1000, 600)
    assert page.inner_text("#canvas") == ""
    page.click("#stop")
    wait_state(page, "stopped")
    assert page.inner_text("#canvas") == "stopped"
    page.unroute("**/v1/completions")

    # stopped mid-way: this run's last frame stays, "stopped" under it
    page.fill("#steps", "60")
    page.fill("#delay", "150")
    page.click("#generate")
    page.wait_for_function("Number(document.getElementById('canvas').dataset.frames) >= 3")
    # the count and the click in one task of the page: no frame can be drawn between them
    at_stop = page.evaluate("() => { const n = document.getElementById('canvas').dataset.frames;"
                            " document.getElementById('stop').click(); return n; }")
    page.wait_for_function("document.getElementById('canvas').dataset.state !== 'running'")
    shot(page, screens / "stopped.png", 1000, 600)
    assert page.get_attribute("#canvas", "data-state") == "stopped"
    assert page.get_attribute("#canvas", "data-frames") == at_stop  # frames received are not played on after it
    assert page.locator("#canvas .error").count() == 1
    assert page.evaluate("document.getElementById('canvas').lastElementChild.textContent") == "stopped"
    shown = page.inner_text("#canvas")
    assert shown.startswith("To be, or ") and "▒" in shown  # a frame with masks left, the prompt in front


def test_the_inputs_bounds_are_the_servers_limits(open_page, screens):
    page = open_page(1000, 600)
    shot(page, screens / "limits.png", 1000, 600)
    assert page.get_attribute("#steps", "max") == str(LIMITS.max_steps)
    assert page.inner_text("#steps-limit") == f"≤ {LIMITS.max_steps}"
    assert page.input_value("#sampler") == "ancestral"
    assert page.get_attribute("#max_tokens", "max") == "48"  # the model's length
    assert page.inner_text("#max_tokens-limit") == "≤ 48"
    page.select_option("#sampler", "semi_ar")  # writes past the model's length, up to --max-length
    assert page.get_attribute("#max_tokens", "max") == str(LIMITS.max_length)
    assert page.inner_text("#max_tokens-limit") == f"≤ {LIMITS.max_length}"


def test_the_favicon_is_linked_and_served(server):
    class Icons(HTMLParser):
        def __init__(self):
            super().__init__()
            self.hrefs: list[str] = []

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "link" and "icon" in (attrs.get("rel") or "").split():
                self.hrefs.append(attrs["href"])

    icons = Icons()
    icons.feed(httpx.get(server).text)
    assert len(icons.hrefs) == 1
    for path in (icons.hrefs[0], "/favicon.ico"):  # the linked icon, and the name clients ask for unprompted
        response = httpx.get(server + path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].split(";")[0] == "image/svg+xml", path
        assert ET.fromstring(response.content).tag == "{http://www.w3.org/2000/svg}svg"


LAYOUT = """() => {
    const box = (el) => el.getBoundingClientRect().toJSON();
    const all = (selector) => [...document.querySelectorAll(selector)];
    const canvas = document.getElementById('canvas');
    const title = document.createRange();
    title.selectNodeContents(document.querySelector('h1'));
    return {editor: box(document.getElementById('editor')), canvas: box(canvas),
            scroll: document.documentElement.scrollWidth, canvasOverflow: canvas.scrollWidth - canvas.clientWidth,
            right: Math.max(...all('header, main, section, fieldset, label, input, select, textarea, button, #canvas')
                            .map((el) => box(el).right)),
            left: Math.min(...all('input, select, textarea, button, #canvas').map((el) => box(el).left)),
            titleLines: title.getClientRects().length};
}"""


def fits_a_phone(page, width: int) -> None:
    """The measured layout: the canvas under the editor, each the screen's width, nothing off screen."""
    layout = page.evaluate(LAYOUT)
    editor, canvas = layout["editor"], layout["canvas"]
    assert canvas["top"] >= editor["bottom"]  # under the editor, not beside it
    assert canvas["width"] > 0.85 * width and editor["width"] > 0.85 * width  # each takes the screen's width
    assert layout["scroll"] <= width and layout["right"] <= width and layout["left"] >= 0  # nothing off screen
    assert layout["canvasOverflow"] <= 0  # the text wraps inside the canvas
    assert layout["titleLines"] == 1  # the header wraps between its parts, not inside the title


def test_the_layout_stacks_on_a_phone(open_page, screens):
    page = open_page(390, 844)
    fits_a_phone(page, 390)
    shot(page, screens / "phone-idle.png", 390, 844, full_page=True)
    page.fill("#prompt", "To_be,_or_not_to_be,_that_is_the_question:_w")  # wider than the screen unless wrapped
    page.fill("#steps", "4")
    page.fill("#max_tokens", "4")  # 48 tokens in all: the model's length
    page.click("#generate")
    wait_state(page, "done")
    fits_a_phone(page, 390)
    shot(page, screens / "phone-done.png", 390, 844, full_page=True)
    page.fill("#steps", str(LIMITS.max_steps + 1))
    page.click("#generate")
    wait_state(page, "error")
    fits_a_phone(page, 390)
    shot(page, screens / "phone-error.png", 390, 844, full_page=True)
