"""Builders of the other toolkits' formats from one of our manifests, with the real libraries:
the same utterances (ids, texts, speakers, samples) as a Kaldi data dir (whole files, segments of
long recordings, sox/flac pipes), a Lhotse CutSet or RecordingSet + SupervisionSet, and a
Hugging Face dataset (``save_to_disk``, Parquet with the bytes embedded, ``audiofolder``).
Used by tests/test_formats.py and tests/test_readme.py."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from asr.data.manifest import Utterance
from asr.data.reading import load_utterance

SR = 16000
GAP = 4800  # samples of silence between the utterances of a long recording


def _table(folder: Path, name: str, rows: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(f"{k} {v}\n" for k, v in rows.items()), encoding="utf-8")


def kaldi_dir(utts: Sequence[Utterance], folder: Path, kind: str = "files") -> Path:
    """A Kaldi data dir: ``files`` (wav.scp names each file), ``segments`` (one WAV per speaker,
    the utterances at exact sample offsets) or ``pipes`` (``sox x.sph -t wav - |`` and
    ``flac -c -d -s x.flac |``, alternately)."""
    folder.mkdir(parents=True, exist_ok=True)
    _table(folder, "text", {u.id: u.text for u in utts})
    _table(folder, "utt2spk", {u.id: u.speaker for u in utts})
    if kind == "files":
        _table(folder, "wav.scp", {u.id: str(Path(u.audio_filepath).resolve()) for u in utts})
    elif kind == "pipes":
        wav = {}
        for i, u in enumerate(utts):
            if i % 2:
                flac = folder / f"{u.id}.flac"
                sf.write(flac, load_utterance(u, SR).numpy(), SR, subtype="PCM_16")
                wav[u.id] = f"flac -c -d -s {flac.resolve()} |"
            else:
                wav[u.id] = f"sox {Path(u.audio_filepath).resolve()} -t wav - |"
        _table(folder, "wav.scp", wav)
    else:
        wav, segments = {}, {}
        for spk in dict.fromkeys(u.speaker for u in utts):
            parts, pos = [], 0
            for u in (u for u in utts if u.speaker == spk):
                samples = load_utterance(u, SR).numpy()
                segments[u.id] = f"rec-{spk} {pos / SR:.6f} {(pos + len(samples)) / SR:.6f}"
                parts += [samples, np.zeros(GAP, np.float32)]
                pos += len(samples) + GAP
            sf.write(folder / f"rec-{spk}.wav", np.concatenate(parts), SR, subtype="PCM_16")
            wav[f"rec-{spk}"] = str((folder / f"rec-{spk}.wav").resolve())
        _table(folder, "wav.scp", wav)
        _table(folder, "segments", segments)
    return folder


def lhotse_manifests(utts: Sequence[Utterance], cuts: Path | None = None,
                     recordings: Path | None = None, supervisions: Path | None = None) -> None:
    """Lhotse manifests of ``utts`` (one recording each): a CutSet at ``cuts`` and/or a
    RecordingSet and SupervisionSet at ``recordings`` and ``supervisions``."""
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
    from lhotse.audio.backend import audio_backend

    with audio_backend("LibsndfileBackend"):  # lhotse's default reads SPHERE with sph2pipe
        recs = [Recording.from_file(str(Path(u.audio_filepath).resolve()), recording_id=u.id)
                for u in utts]
    sups = [SupervisionSegment(id=u.id, recording_id=u.id, start=0.0, duration=r.duration,
                               text=u.text, speaker=u.speaker)
            for u, r in zip(utts, recs, strict=True)]
    rec_set, sup_set = RecordingSet.from_recordings(recs), SupervisionSet.from_segments(sups)
    for path in (cuts, recordings, supervisions):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    if cuts is not None:
        CutSet.from_manifests(rec_set, sup_set).to_file(cuts)
    if recordings is not None:
        rec_set.to_file(recordings)
        sup_set.to_file(supervisions)


def wav_copies(utts: Sequence[Utterance], folder: Path) -> list[Path]:
    """Each utterance as a 16-bit WAV named ``<id>.wav`` in ``folder`` (the same samples)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for u in utts:
        data, rate = sf.read(u.audio_filepath, dtype="int16")
        sf.write(folder / f"{u.id}.wav", data, rate, subtype="PCM_16", format="WAV")
        paths.append(folder / f"{u.id}.wav")
    return paths


def _dataset(utts: Sequence[Utterance], wavs: Sequence[Path]):
    import datasets

    columns = {"audio": [str(p) for p in wavs], "text": [u.text for u in utts],
               "speaker_id": [u.speaker for u in utts], "id": [u.id for u in utts]}
    return datasets.Dataset.from_dict(columns).cast_column("audio", datasets.Audio())


def hf_saved(splits: dict[str, Sequence[Utterance]], folder: Path, scratch: Path) -> Path:
    """A ``DatasetDict`` of ``{split: utterances}`` saved with ``save_to_disk`` (the WAV bytes
    embedded: the copies in ``scratch`` may go)."""
    import datasets

    dd = datasets.DatasetDict({name: _dataset(utts, wav_copies(utts, scratch / name))
                               for name, utts in splits.items()})
    dd.save_to_disk(str(folder))
    return folder


def hf_parquet(utts: Sequence[Utterance], path: Path, scratch: Path) -> Path:
    """A Parquet file with the WAV bytes embedded (``to_parquet`` of a saved dataset)."""
    import datasets

    saved = scratch / "saved"
    _dataset(utts, wav_copies(utts, scratch / "wav")).save_to_disk(str(saved))
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.load_from_disk(str(saved)).to_parquet(str(path), batch_size=8)
    return path


def hf_audiofolder(utts: Sequence[Utterance], folder: Path) -> Path:
    """An ``audiofolder``: WAV files and ``metadata.csv`` (file_name, id, transcription,
    speaker_id)."""
    wavs = wav_copies(utts, folder)
    with (folder / "metadata.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "id", "transcription", "speaker_id"])
        for u, p in zip(utts, wavs, strict=True):
            w.writerow([p.name, u.id, u.text, u.speaker])
    return folder
