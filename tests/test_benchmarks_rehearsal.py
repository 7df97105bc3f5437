"""The rehearsal benchmark's corpus builder (benchmarks/rehearsal.py) on a few seconds of audio:
LibriSpeech's layout as the LibriSpeech recipe reads it, no two files equal, upper-case
transcripts, the durations it says it wrote, resumable and deterministic. From the full AN4
archive and the LibriSpeech samples in ../shared/data, or the committed AN4 cut without them."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from asr.data.corpora.librispeech import prepare, read_subset, subset_dir
from asr.data.manifest import read_manifest
from tests.conftest import AN4_ARCHIVE, LIBRI, ROOT, TINY_ARCHIVE


def _load_rehearsal():
    path = ROOT / "benchmarks" / "rehearsal.py"
    spec = importlib.util.spec_from_file_location("rehearsal", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("rehearsal", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


rehearsal = _load_rehearsal()
ARCHIVE = AN4_ARCHIVE if AN4_ARCHIVE.is_file() else TINY_ARCHIVE
LIBRI_DIR = LIBRI if LIBRI.is_dir() else None
# 40 s of training audio in 15 s chapters, 10 s per evaluation subset: a few utterances a chapter
SIZE = {"hours": 40 / 3600, "eval_minutes": 10 / 60, "chapter_seconds": 15.0,
        "eval_chapter_seconds": 10.0}


def _build(work: Path, workers: int = 2):
    return rehearsal.build_corpus(work, an4_archive=ARCHIVE, libri_dir=LIBRI_DIR, seed=3,
                                  workers=workers, progress=False, **SIZE)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.glob("LibriSpeech/*/*/*/*.flac"))}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    work = tmp_path_factory.mktemp("rehearsal")
    return work, _build(work)


def test_corpus_has_librispeech_layout_and_reads_as_written(built):
    work, stats = built
    corpus = work / "LibriSpeech"
    assert stats.built == stats.chapters == 3 + 4
    for subset in rehearsal.SUBSETS:
        folder = subset_dir(corpus, subset)
        assert folder == corpus / subset and folder.is_dir()
        utts, rejected = read_subset(folder, workers=1, progress=False)
        assert rejected == []
        written = {}
        for mark in sorted((work / ".built" / subset).glob("*.json")):
            written.update({u["id"]: u for u in json.loads(mark.read_text())["utterances"]})
        assert sorted(written) == [u.id for u in utts] and utts
        for u in utts:
            spk, chap, _ = u.id.split("-")
            assert Path(u.audio_filepath) == folder / spk / chap / f"{u.id}.flac"
            assert u.duration == round(written[u.id]["frames"] / rehearsal.SAMPLE_RATE, 4)
            assert 0.5 < u.duration <= rehearsal.MAX_SECONDS
            assert u.text == written[u.id]["text"] and re.fullmatch(r"[A-Z']+( [A-Z']+)*", u.text)
        planned = (SIZE["hours"] * 3600 if subset == rehearsal.TRAIN_SUBSET
                   else SIZE["eval_minutes"] * 60)
        assert sum(u.duration for u in utts) == pytest.approx(stats.corpus_seconds[subset],
                                                              abs=0.01)
        assert stats.corpus_seconds[subset] >= planned


def test_no_two_files_are_equal(built):
    work, _ = built
    digests = _digests(work)
    assert len(digests) >= 7 and len(set(digests.values())) == len(digests)


def test_the_recipe_prepare_reads_the_copy(built, tmp_path):
    work, stats = built
    out = prepare(str(tmp_path / "data"), str(tmp_path / "dl"), subsets=rehearsal.SUBSETS,
                  train_subsets=[rehearsal.TRAIN_SUBSET], train_name="train-100h",
                  root=str(work / "LibriSpeech"), stages=["download", "manifests"], workers=1,
                  progress=False)
    train = read_manifest(out["train-100h"])
    assert sum(u.duration for u in train) == pytest.approx(
        stats.corpus_seconds[rehearsal.TRAIN_SUBSET], abs=0.01)
    assert (tmp_path / "data" / "rejected.jsonl").read_text() == ""


def test_rebuild_is_resumed_and_deterministic(built, tmp_path):
    work, _ = built
    before = _digests(work)
    mark = next((work / ".built" / rehearsal.TRAIN_SUBSET).glob("*.json"))
    chapter = json.loads(mark.read_text())["spec"]
    mark.unlink()  # as if the build had been cut during this chapter
    again = _build(work, workers=1)
    assert again.built == 1 and again.chapters == 7
    assert _digests(work) == before
    assert json.loads(mark.read_text())["spec"] == chapter
    # another folder, same seed: the same files
    assert _digests(_build(tmp_path, workers=1).root) == before
