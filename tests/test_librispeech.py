"""LibriSpeech: archives in the official layout, built from the 7 genuine sample utterances
(shared data: skipped without them), are served by a real HTTP server on 127.0.0.1 (one that
honours Range and can cut a transfer mid-way), then downloaded, verified, extracted and prepared.
The download code itself is also tested on the committed AN4 fixture (test_an4_download.py), the
data check in test_data.py."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import soundfile as sf
import torch

from asr.data.corpora import librispeech
from asr.data.download import DownloadError
from asr.data.manifest import Utterance, read_manifest, write_manifest
from asr.text import SentencePieceTokenizer, tokenizer_from_state_dict
from tests.conftest import LIBRI, needs_libri

pytestmark = needs_libri
SAMPLE_SUBSETS = ("dev-clean", "test-clean")


def sample_transcripts() -> dict[str, str]:
    out = {}
    for trans in LIBRI.glob("*/*/*/*.trans.txt"):
        for line in trans.read_text().splitlines():
            uid, text = line.split(" ", 1)
            out[uid] = text
    return out


def build_archive(dest: Path, subset: str, extra: tuple[str, bytes] | None = None) -> Path:
    """``<subset>.tar.gz`` in the official layout: ``LibriSpeech/<subset>/<spk>/<chapter>/...``."""
    with tarfile.open(dest, "w:gz") as tf:
        tf.add(LIBRI / "SPEAKERS.TXT", arcname="LibriSpeech/SPEAKERS.TXT")
        tf.add(LIBRI / subset, arcname=f"LibriSpeech/{subset}")
        if extra:
            info = tarfile.TarInfo(extra[0])
            info.size = len(extra[1])
            tf.addfile(info, io.BytesIO(extra[1]))
    return dest


@pytest.fixture
def server(range_server):
    return range_server


@pytest.fixture
def served(server, monkeypatch):
    """Sample archives on the server, with their checksums standing in for the published ones."""
    for subset in SAMPLE_SUBSETS:
        archive = build_archive(server.root / f"{subset}.tar.gz", subset)
        monkeypatch.setitem(librispeech.SHA256, subset,
                            hashlib.sha256(archive.read_bytes()).hexdigest())
    return server


def _prepare(tmp_path: Path, base_url: str, **kw) -> dict[str, str]:
    return librispeech.prepare(
        str(tmp_path / "libri"), str(tmp_path / "downloads"), subsets=SAMPLE_SUBSETS,
        train_subsets=["dev-clean"], train_name="train",
        base_url=base_url, workers=2, retries=3, progress=False, **kw,
    )


def test_download_resume_extract_prepare(served, tmp_path):
    served.cut.add("dev-clean.tar.gz")
    manifests = _prepare(tmp_path, served.url)
    # the cut transfer was resumed with a Range request, not restarted
    ranges = [r for n, r in served.requests if n == "dev-clean.tar.gz"]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and int(ranges[1][6:-1]) > 0
    assert not list((tmp_path / "downloads").glob("*.part"))

    truth = sample_transcripts()
    utts = read_manifest(manifests["dev-clean"]) + read_manifest(manifests["test-clean"])
    assert sorted(u.id for u in utts) == sorted(truth) and len(utts) == 7
    for u in utts:
        info = sf.info(u.audio_filepath)
        assert abs(u.duration - info.frames / info.samplerate) < 1e-3
        assert u.text == truth[u.id]
        assert u.speaker == u.id.split("-")[0]
        assert Path(u.audio_filepath).is_relative_to((tmp_path / "libri").resolve())
    line = json.loads(Path(manifests["test-clean"]).read_text().splitlines()[0])
    assert set(line) == {"audio_filepath", "duration", "text", "id", "speaker"}
    assert not Path(line["audio_filepath"]).is_absolute()  # the data folder can move
    assert Path(manifests["train"]).read_text() == Path(manifests["dev-clean"]).read_text()
    assert (tmp_path / "libri" / "rejected.jsonl").read_text() == ""

    # rerun: every stage is marked done, nothing is fetched (the server is not even asked)
    served.requests.clear()
    again = _prepare(tmp_path, "http://127.0.0.1:9/unreachable")
    assert again == manifests and served.requests == []


def test_wrong_checksum_fails_and_leaves_nothing(server, tmp_path):
    # not the official archive: SHA256 differs
    build_archive(server.root / "dev-clean.tar.gz", "dev-clean")
    published = (r"SHA256 [0-9a-f]{64} is none of \['sha256:76f87d09[0-9a-f]+'\]; "
                 r"the download was removed")
    with pytest.raises(DownloadError, match=published):
        librispeech.prepare(str(tmp_path / "libri"), str(tmp_path / "dl"), subsets=["dev-clean"],
                            train_subsets=["dev-clean"], base_url=server.url, retries=1,
                            progress=False)
    assert not list((tmp_path / "dl").iterdir())  # neither the archive nor a .part file
    assert not (tmp_path / "libri" / ".done" / "dev-clean.extracted").exists()


def test_archive_with_parent_member_is_refused(server, tmp_path, monkeypatch):
    archive = build_archive(server.root / "dev-clean.tar.gz", "dev-clean",
                            extra=("../escaped.txt", b"x"))
    monkeypatch.setitem(librispeech.SHA256, "dev-clean",
                        hashlib.sha256(archive.read_bytes()).hexdigest())
    with pytest.raises(ValueError, match="refusing"):
        librispeech.prepare(str(tmp_path / "libri"), str(tmp_path / "dl"), subsets=["dev-clean"],
                            train_subsets=["dev-clean"], base_url=server.url,
                            progress=False)
    assert (not (tmp_path / "escaped.txt").exists()
            and not (tmp_path / "libri" / "LibriSpeech").exists())
    assert not (tmp_path / "libri" / ".done" / "dev-clean.extracted").exists()


def test_existing_copy_with_bad_files_is_prepared_with_rejections(tmp_path):
    root = tmp_path / "LibriSpeech"
    shutil.copytree(LIBRI, root)
    chapter = root / "test-clean" / "1089" / "134686"
    (chapter / "1089-134686-0001.flac").write_bytes(b"not a flac")  # unreadable
    # transcript, no audio
    (root / "test-clean" / "1089" / "134691" / "1089-134691-0000.flac").unlink()
    # audio, no transcript
    shutil.copy(chapter / "1089-134686-0000.flac", chapter / "1089-134686-0099.flac")
    cut = root / "test-clean" / "1995" / "1837" / "1995-1837-0001.flac"
    # valid header, half the frames: a cut download
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    # one id on two transcript lines: which text is right is unknown
    trans = root / "test-clean" / "1089" / "134691" / "1089-134691.trans.txt"
    trans.write_text(trans.read_text() + "1089-134691-0001 ANOTHER TEXT\n")
    manifests = librispeech.prepare(str(tmp_path / "m"), str(tmp_path / "dl"),
                                    subsets=SAMPLE_SUBSETS, train_subsets=["dev-clean"],
                                    root=str(root), workers=1, progress=False)
    assert [u.id for u in read_manifest(manifests["test-clean"])] == ["1089-134686-0000"]
    rejected = {r["id"]: r["reason"]
                for r in map(json.loads, (tmp_path / "m" / "rejected.jsonl").open())}
    assert "truncated audio" in rejected["1995-1837-0001"]
    assert "unreadable audio" in rejected["1089-134686-0001"]
    assert "1089-134691-0000.flac is missing" in rejected["1089-134691-0000"]
    assert "no transcript line" in rejected["1089-134686-0099"]
    assert "repeated id" in rejected["1089-134691-0001"]
    assert Path(read_manifest(manifests["dev-clean"])[0].audio_filepath).is_relative_to(root)
    assert not (tmp_path / "dl").exists()  # an existing copy: nothing downloaded

    with pytest.raises(FileNotFoundError, match="data.root=.* lacks the subset"):
        librispeech.prepare(str(tmp_path / "m"), str(tmp_path / "dl"), subsets=["test-other"],
                            train_subsets=["test-other"], root=str(root), progress=False)


def test_sentencepiece_tokenizer_trains_roundtrips_and_survives_weights_only_load(tmp_path):
    manifest = tmp_path / "train.jsonl"
    write_manifest(manifest, [Utterance("x.flac", 1.0, t, i)
                              for i, t in sample_transcripts().items()])
    tok = SentencePieceTokenizer(train_manifest=str(manifest), vocab_size=60)
    assert (tmp_path / "train.bpe60.model").is_file()  # saved beside the manifest, reused next time
    text = "he hoped there would be stew for dinner"
    ids = tok.encode(text)
    assert 0 not in ids and max(ids) < tok.num_classes and tok.decode(ids) == text
    assert tok.unknown_chars("zebra 7") == {"z", "7"}
    with pytest.raises(ValueError, match="not covered"):
        tok.encode("zebra")
    torch.save({"tok": tok.state_dict()}, tmp_path / "t.pt")
    state = torch.load(tmp_path / "t.pt", weights_only=True)["tok"]
    again = tokenizer_from_state_dict(state)
    assert again.encode(text) == ids and again.num_classes == tok.num_classes
    assert SentencePieceTokenizer(str(tmp_path / "train.bpe60.model")).encode(text) == ids
    with pytest.raises(ValueError, match="unknown tokenizer type"):
        tokenizer_from_state_dict({"type": "wordpiece"})
