"""report.html: one self-contained page (curves, WER table, worst utterances with audio and
coloured errors, posteriorgram), built after a real tiny training run and opened in a real
headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import jiwer
import matplotlib.image as mpimg
import numpy as np
import pytest
import soundfile as sf

from asr.report.__main__ import main
from asr.report.analysis import error_analysis, word_pairs
from asr.report.html import MAX_AUDIO_SECONDS, SplitView, build_html
from asr.train import train
from tests.conftest import tiny_train_cfg

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
ALL_AUDIO_LOADED = """() => {
    const players = [...document.querySelectorAll('audio')];
    return players.length > 0 && players.every(a => a.readyState >= 1 && a.duration > 0);
}"""


@pytest.fixture(scope="module")
def run(tiny_dir, tmp_path_factory) -> tuple[Path, dict]:
    """A real tiny run (1 epoch of 3 steps) whose evaluation scored dev and test: barely
    trained, so errors."""
    out = tmp_path_factory.mktemp("run")
    return out, train(tiny_train_cfg(tiny_dir, out))


def test_word_pairs_give_each_aligned_position_its_op():
    ref, hyp = "a b c d", "a q c e"
    chunks = jiwer.process_words(ref, hyp).alignments[0]
    assert word_pairs(ref.split(), hyp.split(), chunks) == [("", "a", "a"), ("S", "b", "q"),
                                                           ("", "c", "c"), ("S", "d", "e")]
    chunks = jiwer.process_words("a b c", "b c d").alignments[0]
    assert word_pairs(["a", "b", "c"], ["b", "c", "d"], chunks) == [("D", "a", ""), ("", "b", "b"),
                                                                   ("", "c", "c"), ("I", "", "d")]


def test_page_is_written_beside_report_md_and_holds_nothing_external(run, capsys):
    out, result = run
    main([str(out)])
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.md'}" in printed and f"report: {out / 'report.html'}" in printed
    page = (out / "report.html").read_text(encoding="utf-8")
    links = re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)""", page)
    assert links and all(link.startswith(("data:", "#")) for link in links), [x[:60] for x in links]
    assert not re.search(r"https?://", page) and "<script" not in page
    for split in ("dev", "test"):
        assert (f"<td>{split}</td><td class=num>{result['reports'][split]['utterances']}</td>"
                in page)
        assert f"{100 * result['reports'][split]['wer']:.2f}" in page


def test_missing_audio_is_a_note_and_long_audio_is_cut(tmp_path):
    rate = 8000
    long_wav = tmp_path / "long.wav"
    sf.write(long_wav, np.random.default_rng(0).uniform(-0.5, 0.5, int(31 * rate)), rate)
    manifest = tmp_path / "test.jsonl"
    manifest.write_text("".join(json.dumps({"audio_filepath": f, "duration": 1.0, "text": "x",
                                            "id": i}) + "\n"
                                for f, i in [("long.wav", "long"), ("gone.wav", "gone")]))
    analysis = error_analysis(["long", "gone", "unlisted"], ["a b <c>", "a b", "a b"],
                              ["a x <c>", "b", "a b c"])
    view = SplitView("test", {"utterances": 3, "ref_words": 7, "wer": 0.43, "cer": 0.3,
                              "substitutions": 1, "deletions": 1, "insertions": 1},
                     analysis, manifest, None)
    page = build_html("t", [("run dir", "<x>")], [], [view], sample_rate=rate)
    assert page.count("<audio") == 1 and f"first {MAX_AUDIO_SECONDS:.0f} s of 31.0 s" in page
    assert f"no audio: {tmp_path / 'gone.wav'} does not exist" in page
    assert "no audio: unlisted is not in the split's manifest" in page
    assert "&lt;c&gt;" in page and "<c>" not in page and "&lt;x&gt;" in page  # text is escaped
    wav_b64 = re.search(r'src="data:audio/wav;base64,([^"]+)"', page).group(1)
    audio, sr = sf.read(io.BytesIO(base64.b64decode(wav_b64)))
    assert sr == rate and len(audio) == MAX_AUDIO_SECONDS * rate
    assert 'class="w sub"' in page and 'class="w del"' in page and 'class="w ins"' in page
    # manifest not found: a note, no player
    gone = SplitView("test", view.report, analysis, None, None)
    assert ("not found: no audio to play" in build_html("t", [], [], [gone])
            and "<audio" not in build_html("t", [], [], [gone]))


def test_page_opens_in_chromium_with_audio_images_and_error_marks(run, tmp_path):
    try:  # `make install` installs it (the dev extra): its absence is a broken install, not a skip
        from playwright import sync_api
    except ImportError as err:
        pytest.fail(f"playwright is not installed ({err}): run `make install`", pytrace=False)
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    out, _ = run
    page_file = out / "report.html"  # written by the training run itself (train -> build_report)
    errors, outside = [], []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.on("request", lambda r: (None if r.url.startswith(("data:", "file:"))
                                          else outside.append(r.url)))
            page.goto(page_file.as_uri())
            page.wait_for_function(ALL_AUDIO_LOADED, timeout=20_000)
            players = page.locator("audio").count()
            wer_rows = page.locator("#wer + table tr").all_inner_texts()
            marks = page.locator(".align .sub, .align .del, .align .ins").count()
            images = page.eval_on_selector_all("img",
                                               "imgs => imgs.map(i => [i.alt, i.naturalWidth])")
            shot = tmp_path / "report_html.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
    assert not outside, f"the page fetched {outside}: it must hold everything it shows"
    assert players >= 2  # worst utterances of dev and test, each with its audio
    assert (any(row.startswith("dev") for row in wer_rows)
            and any(row.startswith("test") for row in wer_rows))
    assert marks > 0
    alts = {alt for alt, _ in images}
    assert ({"loss", "error_rates", "lr", "test alignment"} <= alts
            and all(width > 0 for _, width in images)), images
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
    pixels = mpimg.imread(shot)  # (H, W, 3|4)
    assert pixels.shape[0] > 2000 and pixels.shape[1] == 1280 and pixels[..., :3].std() > 0.05
