"""Kaldi data dirs (asr/data/formats/kaldi.py) built from the AN4 fixture: whole files, segments
of long recordings, sox/flac pipes, and every utterance taken or rejected with its reason."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.audio import load_audio
from asr.data.formats.kaldi import read_kaldi
from asr.data.manifest import read_manifest
from asr.data.reading import audio_bytes, load_utterance

ROOT = Path(__file__).resolve().parents[1]
needs_tools = pytest.mark.skipif(not (shutil.which("sox") and shutil.which("flac")),
                                 reason="sox and flac (apt install sox flac) run the wav.scp pipes")


def _write(folder: Path, name: str, rows: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(f"{k} {v}\n" for k, v in rows.items()), encoding="utf-8")


def _kaldi_dir(folder: Path, utts, wav: dict[str, str]) -> Path:
    _write(folder, "wav.scp", wav)
    _write(folder, "text", {u.id: u.text for u in utts})
    _write(folder, "utt2spk", {u.id: u.speaker for u in utts})
    return folder


def _same_audio(imported, reference) -> None:
    by_id = {u.id: u for u in reference}
    assert [u.id for u in imported] == [u.id for u in reference]
    for u in imported:
        ref = by_id[u.id]
        assert (u.text, u.speaker) == (ref.text, ref.speaker)
        assert torch.equal(load_utterance(u, 16000), load_utterance(ref, 16000)), u.id


def test_files_are_read_with_texts_speakers_and_durations(tiny_dir, tmp_path):
    utts = read_manifest(tiny_dir / "test.jsonl")
    folder = _kaldi_dir(tmp_path / "k", utts, {u.id: u.audio_filepath for u in utts})
    got = read_kaldi(folder)
    assert got.rejected == []
    _same_audio(got.utterances, utts)
    for u, ref in zip(got.utterances, utts, strict=True):
        assert u.offset is None and not u.pipe
        assert u.duration == pytest.approx(ref.duration, abs=1e-4)


def _long_recordings(utts, folder: Path) -> tuple[dict[str, str], dict[str, str]]:
    """One 16-bit WAV per speaker, their utterances end to end with 0.3 s of silence between:
    ``wav.scp`` and ``segments`` rows at the exact sample offsets."""
    wav, segments, by_speaker = {}, {}, {}
    for u in utts:
        by_speaker.setdefault(u.speaker, []).append(u)
    gap = np.zeros(4800, np.float32)
    for spk, group in by_speaker.items():
        parts, pos = [], 0
        for u in group:
            samples = load_utterance(u, 16000).numpy()
            segments[u.id] = f"rec-{spk} {pos / 16000:.6f} {(pos + len(samples)) / 16000:.6f}"
            parts += [samples, gap]
            pos += len(samples) + len(gap)
        path = folder / f"rec-{spk}.wav"
        sf.write(path, np.concatenate(parts), 16000, subtype="PCM_16")
        wav[f"rec-{spk}"] = str(path)
    return wav, segments


def test_segments_of_long_recordings_read_at_their_offsets(tiny_dir, tmp_path):
    utts = read_manifest(tiny_dir / "train.jsonl")
    folder = tmp_path / "k"
    folder.mkdir()
    wav, segments = _long_recordings(utts, folder)
    _kaldi_dir(folder, utts, wav)
    _write(folder, "segments", segments)
    got = read_kaldi(folder)
    assert got.rejected == []
    assert len({u.audio_filepath for u in got.utterances}) == len(wav) < len(utts)
    assert all(u.offset is not None for u in got.utterances)
    _same_audio(got.utterances, utts)
    # a tar shard holds each segment alone, cut out losslessly (FLAC of the 16-bit samples)
    for u in got.utterances[:3]:
        data, ext = audio_bytes(u)
        assert ext == "flac"
        assert torch.equal(load_audio(io.BytesIO(data)), load_utterance(u, 16000))


@needs_tools
def test_sox_and_flac_pipes_run_only_when_allowed(tiny_dir, tmp_path):
    utts = read_manifest(tiny_dir / "test.jsonl")
    wav = {}
    for i, u in enumerate(utts):
        if i % 2:
            flac = tmp_path / f"{u.id}.flac"
            sf.write(flac, load_utterance(u, 16000).numpy(), 16000, subtype="PCM_16")
            wav[u.id] = f"flac -c -d -s {flac} |"
        else:
            wav[u.id] = f"sox {Path(u.audio_filepath).resolve()} -t wav - |"
    folder = _kaldi_dir(tmp_path / "k", utts, wav)
    with pytest.raises(ValueError, match=r"wav.scp:1 is a shell command.*allow_pipes=true"):
        read_kaldi(folder)
    got = read_kaldi(folder, allow_pipes=True)
    assert got.rejected == [] and all(u.pipe for u in got.utterances)
    _same_audio(got.utterances, utts)


def test_every_utterance_is_taken_or_rejected_with_its_reason(tiny_dir, tmp_path):
    utts = read_manifest(tiny_dir / "train.jsonl")[:8]
    folder = tmp_path / "k"
    folder.mkdir()
    wav, segments = _long_recordings(utts, folder)
    wav["rec-ark"] = "raw.ark:1234"
    wav["rec-gone"] = str(tmp_path / "gone.wav")
    a, b, c, d = (u.id for u in utts[:4])
    rec, start, _ = segments[a].split()
    segments.update({
        "ark-utt": "rec-ark 0.00 1.00",
        "gone-utt": "rec-gone 0.00 1.00",
        "no-text": f"{rec} 0.00 0.50",
        b: f"{rec} {start} 999.0",  # far past the recording's end
    })
    _kaldi_dir(folder, utts, wav)
    texts = {u.id: u.text for u in utts} | {"ark-utt": "x", "gone-utt": "y", "no-audio": "z"}
    _write(folder, "text", texts)
    _write(folder, "segments", segments)
    with (folder / "segments").open("a") as f:
        f.write(f"{c} {segments[c]}\n")  # the same id twice
    got = read_kaldi(folder)
    reasons = {r["id"]: r["reason"] for r in got.rejected}
    assert "Kaldi archive" in reasons["ark-utt"]
    assert "unreadable audio" in reasons["gone-utt"] and "gone.wav" in reasons["gone-utt"]
    assert "no transcript" in reasons["no-text"]
    assert "no audio" in reasons["no-audio"]
    assert "past the recording" in reasons[b]
    assert "more than one line" in reasons[c]
    taken = {u.id for u in got.utterances}
    assert taken == {u.id for u in utts} - {b, c}
    assert d in taken
    everything = set(texts) | set(segments)
    assert taken | set(reasons) == everything and not taken & set(reasons)


def test_import_command_writes_the_manifest_and_the_rejected_list(tiny_dir, tmp_path):
    utts = read_manifest(tiny_dir / "test.jsonl")
    wav = {u.id: u.audio_filepath for u in utts} | {"lost": str(tmp_path / "lost.wav")}
    folder = _kaldi_dir(tmp_path / "k", utts, wav)
    _write(folder, "text", {u.id: u.text for u in utts} | {"lost": "help"})
    out = tmp_path / "out" / "test.jsonl"
    run = subprocess.run([sys.executable, "-m", "asr.import_data", f"source=kaldi:{folder}",
                          f"out={out}", f"paths.exp_dir={tmp_path / 'exp'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"{len(utts)} utterances" in run.stdout and "rejected 1" in run.stdout
    assert f"data.train_manifest={out.resolve()}" in run.stdout
    _same_audio(read_manifest(out), utts)
    rejected = [json.loads(line) for line in (out.parent / "test.rejected.jsonl").open()]
    assert [r["id"] for r in rejected] == ["lost"]
    _write(folder, "wav.scp", {u.id: f"cat {u.audio_filepath} |" for u in utts})
    run = subprocess.run([sys.executable, "-m", "asr.import_data", f"source=kaldi:{folder}",
                          f"out={out}", f"paths.exp_dir={tmp_path / 'exp'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "allow_pipes=true" in run.stderr
    assert "Traceback" not in run.stderr
