"""The page of python -m asr.serve in a real headless Chromium (Playwright, as
tests/test_report_html.py drives it): Chromium's fake microphone plays an AN4 utterance, the page
records it, converts it to a 16 kHz WAV and shows the transcript; a picked file gives the API's
text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.audio import load_audio
from tests.test_serve import post, serve

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--autoplay-policy=no-user-gesture-required"]
HAS_TEXT = "() => document.querySelector('#transcript').textContent.trim().length > 0"


@pytest.fixture(scope="module")
def wav(tiny_dir, tmp_path_factory) -> Path:
    """A fixture test utterance as a 16 kHz 16-bit WAV, with half a second of silence around it
    (the fake microphone loops it)."""
    row = json.loads((tiny_dir / "test.jsonl").read_text().splitlines()[0])
    audio = load_audio(tiny_dir / row["audio_filepath"], 16000).numpy()
    pad = np.zeros(8000, dtype=np.float32)
    path = tmp_path_factory.mktemp("page") / "utterance.wav"
    sf.write(path, np.concatenate([pad, audio, pad]), 16000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def browser(wav):
    try:  # `make install` installs it (the dev extra): its absence is a broken install, not a skip
        from playwright import sync_api
    except ImportError as err:
        pytest.fail(f"playwright is not installed ({err}): run `make install`", pytrace=False)
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            *CHROMIUM_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    with serve(tiny_checkpoint, tmp_path_factory.mktemp("serve") / "server.log") as url:
        yield url


def open_page(browser, url: str):
    """The page, and the console errors, failed requests and requests to other hosts it makes."""
    page = browser.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda err: problems.append(str(err)))
    page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
    page.on("request", lambda r: None if r.url.startswith((url, "blob:", "data:"))
            else problems.append(f"outside: {r.url}"))
    page.goto(url + "/")
    return page, problems


def test_recording_from_the_microphone_is_transcribed(browser, server):
    page, problems = open_page(browser, server)
    page.click("#record")
    page.wait_for_selector("#stop:not([disabled])")
    page.wait_for_timeout(3000)  # record three seconds of the looping utterance
    page.click("#stop")
    page.wait_for_function(HAS_TEXT, timeout=60_000)
    status = page.locator("#status")
    assert "error" not in (status.get_attribute("class") or ""), status.inner_text()
    words = page.locator("#transcript .word")
    assert words.count() > 0
    assert "s of audio in" in status.inner_text()
    seconds = float(status.inner_text().split(" s of audio")[0])
    assert 2.0 < seconds < 5.0, status.inner_text()  # about what was recorded, at 16 kHz
    page.close()
    assert not problems, problems


def test_a_picked_file_gives_the_apis_text_and_a_word_plays_from_its_start(browser, server, wav):
    status, _, body = post(server, {}, {"file": (wav.name, wav.read_bytes())})
    assert status == 200
    text = json.loads(body)["text"]
    page, problems = open_page(browser, server)
    page.set_input_files("#file", str(wav))
    page.wait_for_function(HAS_TEXT, timeout=60_000)
    assert page.locator("#transcript").inner_text().strip() == text
    word = page.locator("#transcript .word").last
    start = float(word.get_attribute("data-start"))
    word.click()
    page.wait_for_function("() => !document.querySelector('#player').paused", timeout=10_000)
    assert page.evaluate("document.querySelector('#player').currentTime") >= start - 0.05
    shade = word.evaluate("w => getComputedStyle(w).backgroundColor")
    assert shade.startswith("rgba(255, 170, 0"), shade
    page.close()
    assert not problems, problems
