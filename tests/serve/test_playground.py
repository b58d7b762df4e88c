"""The playground in headless Chromium (Debian's, driven by Playwright): type a prompt, press generate, watch
the text crystallize frame by frame, and end on the final text; screenshots are taken along the way."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_playground_shows_the_text_crystallizing(tmp_path, tiny_server):
    with tiny_server() as (url, _), playwright_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport={"width": 1200, "height": 700})
        try:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_function("document.querySelectorAll('#sampler option').length > 0")
            page.fill("#prompt", "To be, or ")
            page.fill("#steps", "12")
            page.fill("#seed", "3")
            page.fill("#max_tokens", "30")
            page.fill("#delay", "120")  # slow the redraw so that a screenshot catches a middle frame
            page.click("#generate")
            page.wait_for_function("Number(document.getElementById('canvas').dataset.frames) >= 4")
            page.screenshot(path=str(tmp_path / "playground-midway.png"))
            midway = page.inner_text("#canvas")
            assert "▒" in midway  # a frame with masks still in it was on screen
            page.wait_for_function("document.getElementById('canvas').dataset.state === 'done'", timeout=30000)
            page.screenshot(path=str(tmp_path / "playground-done.png"))
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
            page.wait_for_function("document.getElementById('canvas').dataset.state === 'done'", timeout=30000)
            filled = page.inner_text("#canvas")
            assert filled.startswith("The ") and filled.endswith(" of the night") and "[MASK]" not in filled
            page.screenshot(path=str(tmp_path / "playground-infill.png"))
        finally:
            browser.close()
    for name in ("playground-midway.png", "playground-done.png", "playground-infill.png"):
        assert (tmp_path / name).stat().st_size > 5000
    shutil.copyfile(tmp_path / "playground-midway.png", "/tmp/playground.png")  # for the lead's review
