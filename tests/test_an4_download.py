"""AN4 preparation: the committed fixture archive fetched over a real HTTP server on 127.0.0.1
(cut mid-way and resumed), its checksum, safe extraction, the manifests, the prepare command's
stages; the full archive where the shared data is present."""

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import soundfile as sf
from hydra.utils import instantiate

from asr.data.corpora.an4 import AN4_CHECKSUMS, parse_transcription, prepare
from asr.data.download import DownloadError, download, extract_tar, file_hash, verify
from asr.data.manifest import read_manifest
from tests.conftest import (
    AN4_ARCHIVE,
    ROOT,
    TINY_ARCHIVE,
    compose_config,
    compose_train,
    needs_an4,
)

TINY_SHA256 = hashlib.sha256(TINY_ARCHIVE.read_bytes()).hexdigest()


def test_parse_both_transcript_styles(tmp_path):
    f = tmp_path / "t.transcription"
    f.write_text("<s> YES </s> (an251-fash-b)\nRUBOUT G M E F THREE NINE (an406-fcaw-b)\n"
                 "<s>  ENTER SIX </s>  (x-1)\n")
    assert parse_transcription(f) == {
        "an251-fash-b": "YES",
        "an406-fcaw-b": "RUBOUT G M E F THREE NINE",
        "x-1": "ENTER SIX",
    }
    f.write_text("no id here\n")
    with pytest.raises(ValueError, match=r"t.transcription:1"):
        parse_transcription(f)


def _check_manifests(data: Path, sizes: tuple[int, int, int],
                     test_speakers: int) -> dict[str, list]:
    splits = {s: read_manifest(data / f"{s}.jsonl") for s in ("train", "dev", "test")}
    assert tuple(len(splits[s]) for s in ("train", "dev", "test")) == sizes
    # unseen dev speakers
    assert not {u.speaker for u in splits["dev"]} & {u.speaker for u in splits["train"]}
    assert len({u.speaker for u in splits["test"]}) == test_speakers
    for u in splits["train"][:50] + splits["dev"][:20] + splits["test"][:50]:
        assert ("<s>" not in u.text and "</s>" not in u.text
                and u.text == u.text.lower().strip() and u.text)
        info = sf.info(u.audio_filepath)
        assert info.samplerate == 16000 and abs(info.frames / 16000 - u.duration) < 1e-3
    assert (data / "rejected.jsonl").read_text() == ""
    return splits


def test_an4_manifests_from_the_fixture(tiny_dir):
    splits = _check_manifests(tiny_dir, (25, 5, 4), test_speakers=3)
    # bare style
    assert {u.id: u.text for u in splits["test"]}["an409-fcaw-b"] == "go"
    # <s> ... </s> style
    assert {u.id: u.text for u in splits["train"] + splits["dev"]}["an253-fash-b"] == "go"
    line = json.loads((tiny_dir / "test.jsonl").read_text().splitlines()[0])
    # relative to the manifest: the folder can move
    assert not Path(line["audio_filepath"]).is_absolute()


def test_an4_manifests_from_the_full_archive(an4_dir):
    splits = _check_manifests(an4_dir, (845, 103, 130), test_speakers=10)
    # bare style
    assert {u.id: u.text for u in splits["test"]}["an406-fcaw-b"] == "rubout g m e f three nine"
    # <s> ... </s> style
    assert {u.id: u.text for u in splits["train"] + splits["dev"]}["an251-fash-b"] == "yes"


def test_an4_prepare_is_deterministic_and_skips_when_done(tiny_dir, tmp_path):
    again = prepare(str(tmp_path / "again"), str(TINY_ARCHIVE.parent),
                    checksums=[f"sha256:{TINY_SHA256}"], dev_size=5, seed=0, progress=False)
    for split in ("train", "dev", "test"):
        assert Path(again[split]).read_text() == (tiny_dir / f"{split}.jsonl").read_text()
    # done: nothing is fetched, checked or read again
    skipped = prepare(str(tiny_dir), str(tmp_path / "no-cache"),
                      url="http://127.0.0.1:9/unreachable", progress=False)
    assert skipped == {s: str(tiny_dir / f"{s}.jsonl") for s in ("train", "dev", "test")}
    assert not (tmp_path / "no-cache").exists()


def test_an4_fetched_over_http_resumed_verified_extracted_then_cached(range_server, tmp_path):
    """The fixture archive served on 127.0.0.1; the first transfer is cut half-way, the download
    resumes with a Range request, the checksum is verified, the corpus extracted and prepared; a
    second prepare asks the server nothing."""
    (range_server.root / "an4_sphere.tar.gz").write_bytes(TINY_ARCHIVE.read_bytes())
    range_server.cut.add("an4_sphere.tar.gz")
    url = f"{range_server.url}/an4_sphere.tar.gz"
    manifests = prepare(str(tmp_path / "an4"), str(tmp_path / "downloads"), url=url,
                        checksums=[f"sha256:{TINY_SHA256}"], dev_size=5, progress=False)
    ranges = [r for n, r in range_server.requests if n == "an4_sphere.tar.gz"]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and int(ranges[1][6:-1]) > 0
    archive = tmp_path / "downloads" / "an4_sphere.tar.gz"
    assert (archive.read_bytes() == TINY_ARCHIVE.read_bytes()
            and not list(archive.parent.glob("*.part")))
    assert [len(read_manifest(manifests[s])) for s in ("train", "dev", "test")] == [25, 5, 4]
    range_server.requests.clear()
    assert prepare(str(tmp_path / "an4"), str(tmp_path / "downloads"), url=url,
                   progress=False) == manifests
    # the cached archive is used as long as it verifies, without the server
    assert download("http://127.0.0.1:9/gone", archive,
                    checksums=[f"md5:{file_hash(TINY_ARCHIVE, 'md5')}"], progress=False) == archive
    assert range_server.requests == []


def test_download_checksum_mismatch_leaves_nothing(http_dir, tmp_path):
    srv, base = http_dir
    (srv / "f.bin").write_bytes(b"x" * 1000)
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError,
                       match=r"MD5 [0-9a-f]{32} is none of \['md5:0+'\]; the download was removed"):
        download(f"{base}/f.bin", dest, checksums=["md5:" + "0" * 32], progress=False)
    assert not dest.exists() and not (tmp_path / "f.bin.part").exists()
    with pytest.raises(ValueError, match="sha256:<hex> or md5:<hex>"):
        verify(srv / "f.bin", ["crc32:1234"])
    assert verify(srv / "f.bin", ["md5:" + "0" * 32,
                                  f"sha256:{hashlib.sha256(b'x' * 1000).hexdigest()}"]) is None


def test_download_missing_url_fails_clearly(http_dir, tmp_path):
    _, base = http_dir
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{base}/nope.tar.gz", tmp_path / "nope.tar.gz", progress=False)


# ------------------------------------------------------------------------------------ AN4 checksums
def test_an4_prepare_refuses_an_archive_matching_none_of_its_checksums(tmp_path):
    """The AN4 recipe with an archive that is none of the known copies (here: the fixture): refused
    before anything is extracted, with the archive's digests and the setting that accepts it; with
    that setting it is prepared."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "an4_sphere.tar.gz").write_bytes(TINY_ARCHIVE.read_bytes())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "asr.prepare", "recipe=an4", "stage=download",
                           f"paths.data_dir={tmp_path / 'data'}", f"paths.download_dir={downloads}",
                           f"paths.exp_dir={tmp_path / 'exp'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert (proc.returncode == 2 and len(err) == 1
            and "Traceback" not in proc.stderr), proc.stderr[-2000:]
    assert f"SHA256 {TINY_SHA256}" in err[0] and f"MD5 {file_hash(TINY_ARCHIVE, 'md5')}" in err[0]
    assert all(c in err[0] for c in AN4_CHECKSUMS) and "prepare.checksums" in err[0]
    assert (not (tmp_path / "data" / "an4" / "an4").exists()
            and not (tmp_path / "data" / "an4" / ".extracted").exists())
    assert (downloads / "an4_sphere.tar.gz").is_file()  # the user's copy is left alone

    base = ["recipe=an4", f"paths.data_dir={tmp_path / 'data'}", f"paths.download_dir={downloads}",
            f"paths.output_dir={tmp_path / 'run'}", "prepare.dev_size=5", "+prepare.progress=false"]
    accepted = instantiate(compose_train([*base,
                                          f"++prepare.checksums=[sha256:{TINY_SHA256}]"]).prepare)
    assert [len(read_manifest(accepted[s])) for s in ("train", "dev", "test")] == [25, 5, 4]
    unchecked = instantiate(compose_train([*base, f"paths.data_dir={tmp_path / 'other'}",
                                           "++prepare.checksums=null"]).prepare)
    assert Path(unchecked["test"]).read_text() == Path(accepted["test"]).read_text()


def test_tiny_recipe_checksum_is_its_fixture_archive():
    """recipes/tiny verifies the committed archive: rebuilding the fixture means updating the
    recipe's checksum."""
    checksums = list(compose_train(["recipe=tiny", "paths.output_dir=unused"]).prepare.checksums)
    assert checksums == [f"sha256:{TINY_SHA256}"] and verify(TINY_ARCHIVE, checksums) is None
    assert verify(TINY_ARCHIVE, AN4_CHECKSUMS) is not None  # not one of the full corpus's copies


@needs_an4
def test_default_checksums_accept_the_shared_full_archive():
    assert verify(AN4_ARCHIVE, AN4_CHECKSUMS) is None
    assert f"md5:{file_hash(AN4_ARCHIVE, 'md5')}" in AN4_CHECKSUMS
    # the defaults
    assert compose_train(["recipe=an4", "paths.output_dir=unused"]).prepare.get("checksums") is None


# --------------------------------------------------------------------------------------- extraction
def _tar_with(tmp_path: Path, name: str, **link) -> Path:
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        ok = tarfile.TarInfo("an4/ok.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        info = tarfile.TarInfo(name)
        if link:
            info.type = tarfile.SYMTYPE
            info.linkname = link["to"]
            tf.addfile(info)
        else:
            info.size = 4
            tf.addfile(info, io.BytesIO(b"evil"))
    return path


@pytest.mark.parametrize(
    "name,link", [("../escape.txt", None), ("an4/../../escape.txt", None),
                  ("/tmp/abs-escape.txt", None), ("an4/link", "../../etc/passwd"),
                  ("an4/abslink", "/etc/passwd")]
)
def test_extract_refuses_escaping_members(tmp_path, name, link):
    archive = _tar_with(tmp_path, name, **({"to": link} if link else {}))
    target = tmp_path / "out"
    with pytest.raises(ValueError, match="refusing"):
        extract_tar(archive, target, progress=False)
    assert not (target / "an4" / "ok.txt").exists()  # checked before anything is written
    assert not (tmp_path / "escape.txt").exists()


def test_extract_reports_corrupt_archive(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tar")
    with pytest.raises(ValueError, match="not a readable tar archive"):
        extract_tar(bad, tmp_path / "out", progress=False)


def test_rejected_list_names_reason(tmp_path):
    """A corrupt audio file in the corpus is rejected at prepare with its reason, not a crash."""
    data = tmp_path / "an4"
    extract_tar(TINY_ARCHIVE, data, progress=False)
    (data / ".extracted").touch()
    victim = data / "an4" / "wav" / "an4test_clstk" / "fcaw" / "an409-fcaw-b.sph"
    victim.write_bytes(b"garbage")
    manifests = prepare(str(data), str(tmp_path / "cache"), dev_size=5, progress=False)
    rejected = [json.loads(x) for x in (data / "rejected.jsonl").read_text().splitlines()]
    assert ([r["id"] for r in rejected] == ["an409-fcaw-b"]
            and "unreadable audio" in rejected[0]["reason"])
    assert len(read_manifest(manifests["test"])) == 3


def test_prepare_command_runs_the_an4_stages_one_at_a_time(tmp_path):
    """`python -m asr.prepare recipe=... stage=download|manifests|all` (what error messages tell
    users to run), on the tiny recipe: the AN4 prepare code over the committed fixture."""
    from asr.prepare import run_stage

    cfg = compose_config("prepare", ["recipe=tiny", f"paths.data_dir={tmp_path}",
                                     f"prepare.download_dir={TINY_ARCHIVE.parent}",
                                     "+prepare.progress=false"])
    data = tmp_path / "an4_tiny"
    with pytest.raises(FileNotFoundError, match="run the download stage first"):
        run_stage(cfg.copy(), "manifests")
    assert run_stage(cfg.copy(), "download") == {"manifests": {}}
    assert ((data / "an4" / "etc" / "an4_train.transcription").is_file()
            and not (data / "train.jsonl").exists())
    manifests = run_stage(cfg.copy(), "manifests")["manifests"]
    assert len(read_manifest(manifests["train"])) + len(read_manifest(manifests["dev"])) == 30
    # everything done already: download + manifests skip, check runs
    result = run_stage(cfg.copy(), "all")
    assert (result["manifests"] == manifests
            and set(result["check"]) == {"train", "val", "dev", "test"})
    assert result["check"]["test"]["utterances"] == 4 and result["tokenizer"]["type"] == "char"
    assert json.loads((data / "data_check.json").read_text())["train"]["utterances"] == 25
    with pytest.raises(ValueError, match="stage=nope: choose one of download, manifests, check, "
                                         "tokenizer or all"):
        run_stage(cfg.copy(), "nope")


@needs_an4
def test_fixture_archive_is_cut_from_the_full_corpus_byte_for_byte(tmp_path, monkeypatch):
    """tests/fixtures/make_an4_tiny.py run on the shared full archive rebuilds the committed
    fixture exactly."""
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "fixtures"))
    import make_an4_tiny

    # not over the committed file
    monkeypatch.setattr(make_an4_tiny, "OUT", tmp_path / "an4_sphere.tar.gz")
    make_an4_tiny.main(str(AN4_ARCHIVE))
    assert (tmp_path / "an4_sphere.tar.gz").read_bytes() == TINY_ARCHIVE.read_bytes()


@pytest.mark.parametrize("retries", [0, -1])
def test_download_without_attempts_says_so(tmp_path, retries):
    with pytest.raises(ValueError, match=f"retries={retries}, give 1 or more"):
        download("http://127.0.0.1:9/x.tar.gz", tmp_path / "x.tar.gz", retries=retries)
    assert not list(tmp_path.iterdir())
