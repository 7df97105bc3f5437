"""Word times and confidences from CTC paths (asr.timing), and the files transcribe writes with
them: JSON Lines, SRT, WebVTT and CTM, parsed back strictly, on real AN4 audio of the fixture."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.data.manifest import read_manifest
from asr.decoding import GreedyDecoder
from asr.text import CharTokenizer, SentencePieceTokenizer, WordTokenizer
from asr.timing import Word, frame_energy_db, greedy_words, snap_to_sound, transcript_words
from asr.transcribe import transcribe
from asr.transcript_formats import cues, format_results
from tests.conftest import ROOT

FRAME = 0.04


def posteriors(labels: list[int], classes: int, peak: float = 0.9) -> torch.Tensor:
    """(T, C) log-probs whose argmax per frame is ``labels[t]`` with probability ``peak``."""
    probs = torch.full((len(labels), classes), (1 - peak) / (classes - 1))
    probs[torch.arange(len(labels)), torch.tensor(labels)] = peak
    return probs.log()


def test_char_model_words_span_their_letters_and_take_the_weakest_letter_as_confidence():
    tok = CharTokenizer()
    h, i, sp, o, k = (tok.encode(c)[0] for c in "hi ok")
    labels = [0, h, h, 0, i, 0, sp, 0, 0, o, k, k, 0]
    lp = posteriors(labels, tok.num_classes)
    lp[4] = posteriors([i], tok.num_classes, peak=0.6)[0]  # "i" less sure
    words = greedy_words(lp, tok, FRAME)
    assert [w.word for w in words] == ["hi", "ok"]
    assert words[0].start == pytest.approx(1 * FRAME) and words[0].end == pytest.approx(5 * FRAME)
    assert words[1].start == pytest.approx(9 * FRAME) and words[1].end == pytest.approx(12 * FRAME)
    assert words[0].confidence == pytest.approx(0.6) and words[1].confidence == pytest.approx(0.9)
    assert (" ".join(w.word for w in words)
            == GreedyDecoder(tok).decode(lp[None], torch.tensor([len(labels)]))[0])


def test_word_model_words_and_spelled_words():
    tok = WordTokenizer(words=["yes", "no"])
    yes, no = tok.encode("yes")[0], tok.encode("no")[0]
    spelled = tok.encode("ab")  # a, b, space
    labels = [0, yes, 0, *spelled[:2], 0, spelled[2], no, no, 0]
    words = greedy_words(posteriors(labels, tok.num_classes), tok, FRAME)
    assert [(w.word, round(w.start / FRAME), round(w.end / FRAME)) for w in words] == [
        ("yes", 1, 2), ("ab", 3, 5), ("no", 7, 9)]


def test_sentencepiece_words_start_at_their_marked_piece(tiny_dir, tmp_path):
    tok = SentencePieceTokenizer(model_path=tmp_path / "sp.model",
                                 train_manifest=tiny_dir / "train.jsonl", vocab_size=40)
    text = " ".join(dict.fromkeys(w for u in read_manifest(tiny_dir / "train.jsonl")
                                  for w in u.text.split()))
    labels = [0]
    for piece in tok.encode(text):
        labels += [piece, 0]
    words = greedy_words(posteriors(labels, tok.num_classes), tok, FRAME)
    assert [w.word for w in words] == text.split() and len(words) > 1
    assert all(a.end <= b.start for a, b in zip(words, words[1:], strict=False))


def test_another_decoders_words_keep_the_agreeing_times_and_align_the_rest_between_them():
    """A beam/LM hypothesis that differs from the greedy one: matched words keep their greedy
    frames, the others are force-aligned inside the gap their neighbours leave."""
    tok = CharTokenizer()
    ids = {c: tok.encode(c)[0] for c in "abcxy "}
    labels = [0, ids["a"], 0, ids[" "], 0, ids["x"], 0, 0, ids[" "], 0, 0, ids["c"], 0]
    lp = posteriors(labels, tok.num_classes)
    lp[6, ids["b"]] = lp[6, 0]  # "b" nearly as likely as blank at frame 6
    words = transcript_words(lp, tok, "a b c", FRAME)
    assert [w.word for w in words] == ["a", "b", "c"]
    # the greedy frames
    assert round(words[0].start / FRAME) == 1 and round(words[2].start / FRAME) == 11
    assert 2 <= words[1].start / FRAME and words[1].end / FRAME <= 11  # inside the gap
    assert words[1].confidence < 0.5 < words[0].confidence  # the model did not favour "b"
    # more letters than frames
    longer = transcript_words(lp, tok, "a b y y y y y y y y y y y y c", FRAME)
    assert [w.word for w in longer] == "a b y y y y y y y y y y y y c".split()
    assert all(a.start <= b.start for a, b in zip(longer, longer[1:], strict=False))


def test_snap_to_sound_moves_spikes_onto_the_words_sound_and_never_into_the_next_word():
    # (30,) frames
    energy = torch.tensor([-60.0] * 5 + [-5.0] * 10 + [-60.0] * 5 + [-3.0] * 5 + [-60.0] * 5)
    words = [Word("one", 5 * FRAME, 6 * FRAME, 0.9), Word("two", 20 * FRAME, 21 * FRAME, 0.8)]
    out = snap_to_sound(words, energy, FRAME)
    # to the end of its sound
    assert (out[0].start, out[0].end) == pytest.approx((5 * FRAME, 15 * FRAME))
    assert (out[1].start, out[1].end) == pytest.approx((20 * FRAME, 25 * FRAME))
    early = [Word("one", 1 * FRAME, 2 * FRAME, 0.9), Word("two", 18 * FRAME, 19 * FRAME, 0.8)]
    # spikes in the silence before each word: moved to its sound
    out = snap_to_sound(early, energy, FRAME)
    assert (out[0].start, out[0].end) == pytest.approx((5 * FRAME, 15 * FRAME))
    assert (out[1].start, out[1].end) == pytest.approx((20 * FRAME, 25 * FRAME))
    close = [Word("one", 5 * FRAME, 6 * FRAME, 0.9), Word("two", 9 * FRAME, 10 * FRAME, 0.8)]
    # stops at the next word
    assert snap_to_sound(close, energy, FRAME)[0].end == pytest.approx(9 * FRAME)
    quiet = [Word("uh", 26 * FRAME, 27 * FRAME, 0.2)]  # no speech after it: the spike stays
    assert snap_to_sound(quiet, energy, FRAME)[0].start == pytest.approx(26 * FRAME)
    assert out[0].confidence == 0.9 and [w.word for w in out] == ["one", "two"]
    wav = torch.cat([torch.zeros(480 * 2), torch.ones(480)])
    assert frame_energy_db(wav, 480, 3).tolist()[2] == 0.0 and frame_energy_db(wav, 480, 3)[0] < -60


def test_cues_break_at_pauses_and_line_length():
    words = [{"word": w, "start": s, "end": s + 0.3, "confidence": 1.0}
             for w, s in [("a", 0.0), ("b", 0.4), ("c", 3.0)]
             + [(f"w{i:02d}", 4.0 + 0.4 * i) for i in range(12)]]
    out = cues(words)
    assert out[0] == (0.0, 0.7, "a b")  # the 2.3 s pause closes the first cue
    assert all(len(text) <= 42 for _, _, text in out) and len(out) >= 3
    assert [w for _, _, t in out for w in t.split()] == [w["word"] for w in words]


SRT_CUE = re.compile(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d\d\d) --> "
                     r"(\d\d):(\d\d):(\d\d),(\d\d\d)\n(.+)\n")
VTT_CUE = re.compile(r"(\d\d):(\d\d):(\d\d)\.(\d\d\d) --> (\d\d):(\d\d):(\d\d)\.(\d\d\d)\n(.+)\n")


def _seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    """Strict SubRip: numbered cues from 1, one blank line after each, nothing else."""
    blocks = text.split("\n\n")
    assert blocks[-1] == "", "an SRT file ends with a blank line"
    out = []
    for n, block in enumerate(blocks[:-1], 1):
        m = SRT_CUE.fullmatch(block + "\n")
        assert m, f"not an SRT cue: {block!r}"
        assert int(m.group(1)) == n
        out.append((_seconds(*m.group(2, 3, 4, 5)), _seconds(*m.group(6, 7, 8, 9)), m.group(10)))
    return out


def parse_vtt(text: str) -> list[tuple[float, float, str]]:
    assert text.startswith("WEBVTT\n\n")
    blocks = text[len("WEBVTT\n\n"):].split("\n\n")
    assert blocks[-1] == ""
    out = []
    for block in blocks[:-1]:
        m = VTT_CUE.fullmatch(block + "\n")
        assert m, f"not a WebVTT cue: {block!r}"
        out.append((_seconds(*m.group(1, 2, 3, 4)), _seconds(*m.group(5, 6, 7, 8)), m.group(9)))
    return out


def assert_in_order_inside(spans: list[tuple[float, float]], duration: float) -> None:
    assert spans, "no timed words"
    for (a, b), (c, _) in zip(spans, spans[1:] + [(duration, duration)], strict=False):
        assert 0 <= a < b <= duration + 1e-3 and a <= c


@pytest.fixture(scope="module")
def long_file(tiny_dir, tmp_path_factory) -> tuple[str, float]:
    """~20 s of real AN4 speech in one FLAC: long enough to be cut in pieces at chunk_seconds=4."""
    utts = read_manifest(tiny_dir / "train.jsonl")
    wav = np.concatenate([sf.read(u.audio_filepath, dtype="float32")[0] for u in utts])
    path = tmp_path_factory.mktemp("long") / "AN4 utterances.flac"
    sf.write(path, wav, 16000)
    return str(path), len(wav) / 16000


def test_json_words_are_the_text_in_order_inside_the_audio(tiny_checkpoint, long_file):
    path, duration = long_file
    for ends in ("audio", "spike"):
        (r,) = transcribe(str(tiny_checkpoint), [path], device="cpu", chunk_seconds=4.0,
                          search_seconds=1.0, word_times=ends)
        assert " ".join(w["word"] for w in r["words"]) == r["text"] and r["text"]
        assert_in_order_inside([(w["start"], w["end"]) for w in r["words"]], duration)
        assert all(0 < w["confidence"] <= 1 for w in r["words"])
        assert json.loads(format_results([r], "json"))["words"] == r["words"]
    whole = transcribe(str(tiny_checkpoint), [path], device="cpu", chunk_seconds=60.0,
                       word_times="spike")[0]
    # chunking keeps the timeline
    assert len(whole["words"]) == pytest.approx(len(r["words"]), rel=0.2)


def test_cli_writes_valid_srt_vtt_and_ctm(tiny_checkpoint, long_file, tiny_dir, tmp_path):
    path, duration = long_file
    other = read_manifest(tiny_dir / "test.jsonl")[0].audio_filepath
    run = [sys.executable, "-m", "asr.transcribe", f"checkpoint={tiny_checkpoint}", "device=cpu",
           "chunk_seconds=4"]
    srt = subprocess.run([*run, f"audio='{path}'", "format=srt"], cwd=ROOT, capture_output=True,
                         text=True)
    assert srt.returncode == 0, srt.stderr
    cues_srt = parse_srt(srt.stdout)
    assert_in_order_inside([(a, b) for a, b, _ in cues_srt], duration)
    out = tmp_path / "subs"
    vtt = subprocess.run([*run, f"audio=['{path}','{other}']", "format=vtt", f"output={out}"],
                         cwd=ROOT, capture_output=True, text=True)
    assert vtt.returncode == 0, vtt.stderr
    cues_vtt = parse_vtt((out / "AN4 utterances.vtt").read_text())
    # one timeline, two formats
    assert [(round(a, 3), round(b, 3), t) for a, b, t in cues_vtt] == cues_srt
    assert parse_vtt((out / f"{other.rsplit('/', 1)[-1].rsplit('.', 1)[0]}.vtt").read_text())
    ctm = subprocess.run([*run, f"audio=['{path}','{other}']", "format=ctm"], cwd=ROOT,
                         capture_output=True, text=True)
    assert ctm.returncode == 0, ctm.stderr
    rows = [line.split(" ") for line in ctm.stdout.splitlines()]
    assert {r[0] for r in rows} == {"AN4_utterances", other.rsplit("/", 1)[-1].rsplit(".", 1)[0]}
    mine = [r for r in rows if r[0] == "AN4_utterances"]
    assert all(len(r) == 6 and r[1] == "1" and float(r[3]) > 0 and 0 < float(r[5]) <= 1
               for r in rows)
    assert_in_order_inside([(float(r[2]), float(r[2]) + float(r[3])) for r in mine], duration)
    assert " ".join(r[4] for r in mine) == " ".join(t for _, _, t in cues_srt)
    many = subprocess.run([*run, f"audio=['{path}','{other}']", "format=srt"], cwd=ROOT,
                          capture_output=True, text=True)
    assert (many.returncode != 0 and "output=<folder>" in many.stderr
            and "Traceback" not in many.stderr)
