"""Hugging Face datasets (asr/data/formats/huggingface.py) built with the real ``datasets`` library
from the AN4 fixture: ``save_to_disk`` folders (Dataset, DatasetDict, shards), Parquet files and
folders, audiofolders; bytes read in place, and every row taken or rejected with its reason."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from asr.data.formats.huggingface import read_huggingface
from asr.data.manifest import Utterance, read_manifest
from asr.data.reading import load_utterance
from tests.format_sources import wav_copies

datasets = pytest.importorskip("datasets", reason="datasets (pip install .[formats]) builds them")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """``datasets`` never reaches the network, and caches under ``tmp_path``."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def _columns(utts: list[Utterance], wavs: list[Path]) -> dict[str, list]:
    return {"audio": [str(p) for p in wavs], "text": [u.text for u in utts],
            "speaker_id": [u.speaker for u in utts], "id": [u.id for u in utts]}


def _saved(utts: list[Utterance], wavs: list[Path], folder: Path) -> Path:
    """A ``Dataset`` of the WAV files' paths cast to ``Audio()``, saved with ``save_to_disk``."""
    ds = datasets.Dataset.from_dict(_columns(utts, wavs)).cast_column("audio", datasets.Audio())
    ds.save_to_disk(str(folder))
    return folder


def _same(imported, utts: list[Utterance]) -> None:
    """``imported`` took every row: the manifest's ids, texts, speakers, durations and samples."""
    assert imported.rejected == []
    got = imported.utterances
    assert [(u.id, u.text, u.speaker) for u in got] == [(u.id, u.text, u.speaker) for u in utts]
    for u, ref in zip(got, utts, strict=True):
        assert u.duration == pytest.approx(ref.duration, abs=1e-3)
        assert torch.equal(load_utterance(u, 16000), load_utterance(ref, 16000)), u.id


def _audio_cells(file: Path) -> list[dict]:
    """The audio column of an Arrow (IPC stream) or Parquet file, as written."""
    if file.suffix == ".parquet":
        return pq.read_table(file).column("audio").to_pylist()
    return pa.ipc.open_stream(pa.memory_map(str(file))).read_all().column("audio").to_pylist()


def test_save_to_disk_embeds_the_bytes_and_they_are_read_in_place(tiny_dir, tmp_path):
    utts = read_manifest(tiny_dir / "test.jsonl")
    wavs = wav_copies(utts, tmp_path / "wav")
    saved = _saved(utts, wavs, tmp_path / "saved")
    (arrow,) = sorted(saved.glob("data-*.arrow"))
    info = json.loads((saved / "dataset_info.json").read_text())
    assert info["features"]["audio"]["_type"] == "Audio"
    # datasets 5.2 embeds local files on save_to_disk: the WAV bytes as they were, the base name
    cells = _audio_cells(arrow)
    assert [c["bytes"] for c in cells] == [p.read_bytes() for p in wavs]
    assert [c["path"] for c in cells] == [p.name for p in wavs]
    shutil.rmtree(tmp_path / "wav")  # only the Arrow file holds the audio now

    got = read_huggingface(saved)
    _same(got, utts)
    assert [(u.audio_filepath, u.row, u.column) for u in got.utterances] == [
        (str(arrow), i, "audio") for i in range(len(utts))]


def test_binary_column_in_shards_with_generated_ids(tiny_dir, tmp_path):
    utts = read_manifest(tiny_dir / "train.jsonl")[:6]
    wavs = wav_copies(utts, tmp_path / "wav")
    ds = datasets.Dataset.from_dict({"speech": [p.read_bytes() for p in wavs],
                                     "sentence": [u.text for u in utts],
                                     "speaker": [u.speaker for u in utts]})
    ds.save_to_disk(str(tmp_path / "saved"), num_shards=2)
    shards = sorted((tmp_path / "saved").glob("data-*.arrow"))
    assert len(shards) == 2
    with pytest.raises(ValueError, match="hf.audio_column="):  # no Audio feature, no struct
        read_huggingface(tmp_path / "saved")

    got = read_huggingface(tmp_path / "saved", audio_column="speech")
    assert [u.id for u in got.utterances] == [f"row-{i}" for i in range(6)]  # counted over shards
    _same(got, [Utterance(u.audio_filepath, u.duration, u.text, f"row-{i}", u.speaker)
                for i, u in enumerate(utts)])
    assert [(Path(u.audio_filepath), u.row) for u in got.utterances] == [
        (shards[0], 0), (shards[0], 1), (shards[0], 2), (shards[1], 0), (shards[1], 1),
        (shards[1], 2)]


def test_dataset_dict_needs_its_split(tiny_dir, tmp_path):
    train = read_manifest(tiny_dir / "train.jsonl")[:6]
    test = read_manifest(tiny_dir / "test.jsonl")
    dd = datasets.DatasetDict({
        name: datasets.Dataset.from_dict(_columns(u, wav_copies(u, tmp_path / name)))
        .cast_column("audio", datasets.Audio()) for name, u in (("train", train), ("test", test))})
    dd.save_to_disk(str(tmp_path / "dd"), num_shards={"train": 2, "test": 1})

    _same(read_huggingface(tmp_path / "dd", split="test"), test)
    got = read_huggingface(tmp_path / "dd", split="train")
    _same(got, train)
    assert len({u.audio_filepath for u in got.utterances}) == 2
    with pytest.raises(ValueError, match=r"splits \['train', 'test'\].*hf\.split="):
        read_huggingface(tmp_path / "dd")
    with pytest.raises(ValueError, match="'dev' is not one of them"):
        read_huggingface(tmp_path / "dd", split="dev")


def test_parquet_keeps_paths_unless_the_dataset_holds_bytes(tiny_dir, tmp_path):
    utts = read_manifest(tiny_dir / "test.jsonl")
    wavs = wav_copies(utts, tmp_path / "wav")
    paths_only = tmp_path / "paths.parquet"
    ds = datasets.Dataset.from_dict(_columns(utts, wavs)).cast_column("audio", datasets.Audio())
    ds.to_parquet(str(paths_only))
    # to_parquet writes the table as it is: no bytes, the absolute paths
    assert _audio_cells(paths_only) == [{"bytes": None, "path": str(p)} for p in wavs]
    got = read_huggingface(paths_only)
    _same(got, utts)
    assert [(u.audio_filepath, u.row) for u in got.utterances] == [(str(p), None) for p in wavs]

    # a dataset loaded from save_to_disk holds the bytes: to_parquet writes them (row groups of 3)
    embedded = datasets.load_from_disk(str(_saved(utts, wavs, tmp_path / "saved")))
    hub = tmp_path / "hub" / "data"
    embedded.to_parquet(str(hub / "test-00000-of-00001.parquet"), batch_size=3)
    embedded.select(range(2)).to_parquet(str(hub / "train-00000-of-00001.parquet"))
    file = hub / "test-00000-of-00001.parquet"
    assert pq.ParquetFile(file).metadata.num_row_groups == 2
    assert [c["bytes"] for c in _audio_cells(file)] == [p.read_bytes() for p in wavs]
    shutil.rmtree(tmp_path / "wav")

    for source, split in ((file, None), (tmp_path / "hub", "test")):
        got = read_huggingface(source, split=split)
        _same(got, utts)
        assert [(u.audio_filepath, u.row) for u in got.utterances] == [
            (str(file), i) for i in range(len(utts))]
    with pytest.raises(ValueError, match=r"splits \['test', 'train'\].*hf\.split="):
        read_huggingface(tmp_path / "hub")
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(file, alone / "test.parquet")
    _same(read_huggingface(alone), utts)  # one file in the folder: no split to choose
    converted = tmp_path / "converted" / "default"  # the Hub's refs/convert/parquet layout
    for name in ("train", "test"):
        (converted / name).mkdir(parents=True)
        shutil.copy(file, converted / name / "0000.parquet")
    _same(read_huggingface(converted, split="test"), utts)


def _write_metadata(folder: Path, utts: list[Utterance], wavs: list[Path], kind: str) -> None:
    rows = [{"file_name": p.name, "id": u.id, "transcription": u.text, "speaker_id": u.speaker}
            for u, p in zip(utts, wavs, strict=True)]
    if kind == "csv":
        with (folder / "metadata.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_audiofolder_rows_are_the_ones_datasets_sees(tiny_dir, tmp_path):
    utts = read_manifest(tiny_dir / "test.jsonl")
    folder = tmp_path / "af"
    wavs = wav_copies(utts, folder)
    _write_metadata(folder, utts, wavs, "csv")
    got = read_huggingface(folder)
    _same(got, utts)
    assert [(u.audio_filepath, u.row) for u in got.utterances] == [(str(p), None) for p in wavs]

    # The library as the reference for which rows an audiofolder has, in which order, with which
    # values. Its Audio feature imports torchcodec even to store a path, so the builder is told to
    # keep every column, file_name included, as a string.
    strings = datasets.Features({k: datasets.Value("string")
                                 for k in ("file_name", "id", "transcription", "speaker_id")})
    ref = datasets.load_dataset("audiofolder", data_dir=str(folder), features=strings,
                                cache_dir=str(tmp_path / "cache"), split="train")
    assert [str(folder / f) for f in ref["file_name"]] == [u.audio_filepath for u in got.utterances]
    assert list(zip(ref["id"], ref["transcription"], ref["speaker_id"], strict=True)) == [
        (u.id, u.text, u.speaker) for u in got.utterances]

    splits = tmp_path / "af_splits"  # one folder per split, metadata.jsonl
    for name, part in (("train", utts[:2]), ("test", utts[2:])):
        _write_metadata(splits / name, part, wav_copies(part, splits / name), "jsonl")
    _same(read_huggingface(splits, split="test"), utts[2:])
    with pytest.raises(ValueError, match="hf.split="):
        read_huggingface(splits)


@pytest.mark.parametrize("layout", ["parquet", "save_to_disk"])
def test_every_row_is_taken_or_rejected_with_its_reason(tiny_dir, tmp_path, layout):
    utts = read_manifest(tiny_dir / "test.jsonl")
    wavs = wav_copies(utts, tmp_path / "wav")
    good = [p.read_bytes() for p in wavs]
    rows = [  # (audio, text, id, the reason it is rejected or None)
        ({"bytes": good[0], "path": None}, utts[0].text, "a", None),
        ({"bytes": None, "path": None}, "no audio", "b", "no audio bytes"),
        ({"bytes": None, "path": "/nonexistent/b.wav"}, "gone", "c", "is no file"),
        ({"bytes": good[1], "path": None}, "", "d", "empty text"),
        ({"bytes": good[2], "path": None}, "again", "a", "repeated id"),
        ({"bytes": b"not audio at all", "path": None}, "junk", "e", "unreadable audio"),
        ({"bytes": None, "path": str(wavs[3])}, utts[3].text, "f", None),  # the file
    ]
    if layout == "save_to_disk":  # it embeds every path: fails on a missing file or no path
        rows = [r for r in rows if r[2] not in ("b", "c")]
    ds = datasets.Dataset.from_dict({"audio": [r[0] for r in rows], "text": [r[1] for r in rows],
                                     "id": [r[2] for r in rows]})
    ds = ds.cast_column("audio", datasets.Audio(decode=False))
    source = tmp_path / ("rows.parquet" if layout == "parquet" else "saved")
    if layout == "parquet":
        ds.to_parquet(str(source), batch_size=4)  # a batch size: no size estimate reading paths
    else:
        ds.save_to_disk(str(source))

    got = read_huggingface(source)
    assert len(got.utterances) + len(got.rejected) == len(rows)
    assert [u.id for u in got.utterances] == ["a", "f"]
    _same(type(got)(got.utterances), [
        Utterance(u.audio_filepath, u.duration, u.text, i)
        for i, u in (("a", utts[0]), ("f", utts[3]))])
    expected = [(r[2], r[3]) for r in rows if r[3] is not None]
    assert [r["id"] for r in got.rejected] == [uid for uid, _ in expected]
    for rejected, (_, reason) in zip(got.rejected, expected, strict=True):
        assert reason in rejected["reason"], rejected
    # the row with only a path: read from the file, or from the bytes save_to_disk embedded
    assert got.utterances[1].row == (None if layout == "parquet" else len(rows) - 1)
    with pytest.raises(ValueError, match="hf.text_column="):
        read_huggingface(source, text_column="words")
