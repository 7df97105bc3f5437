"""MUSAN and RIRS_NOISES: tiny archives in the official layouts (short real WAV files) served by a
real HTTP server on 127.0.0.1, downloaded (resumed, verified), extracted safely, skipped on a rerun;
``python -m asr.prepare_noise`` run as a user runs it."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.data.corpora.noise import (
    MUSAN_CHECKSUMS,
    MUSAN_URL,
    RIRS_CHECKSUMS,
    RIRS_URL,
    fetch_musan,
    fetch_rirs,
)
from asr.data.download import DownloadError, extract_zip, file_hash
from tests.conftest import ROOT, compose_config

MUSAN_FILES = ("musan/music/fma/music-fma-0000.wav",
               "musan/noise/free-sound/noise-free-sound-0000.wav",
               "musan/speech/librivox/speech-librivox-0000.wav")
RIRS_FILES = ("RIRS_NOISES/simulated_rirs/smallroom/Room001/Room001-00001.wav",
              "RIRS_NOISES/simulated_rirs/mediumroom/Room001/Room001-00001.wav",
              "RIRS_NOISES/real_rirs_isotropic_noises/RVB2014_type1_rir_largeroom1_1_a.wav",
              "RIRS_NOISES/pointsource_noises/noise-free-sound-0001.wav")


def _wav(seed: int) -> bytes:
    """0.1 s of 16 kHz noise as a real WAV file."""
    buf = io.BytesIO()
    sf.write(buf, np.random.default_rng(seed).uniform(-0.1, 0.1, 1600), 16000, format="WAV")
    return buf.getvalue()


def build_musan(dest: Path, drop: str | None = None) -> Path:
    """``musan.tar.gz`` in the official layout (``musan/{music,noise,speech}/<source>/*.wav``),
    without the files of folder ``drop``."""
    with tarfile.open(dest, "w:gz") as tf:
        for i, name in enumerate(MUSAN_FILES + ("musan/README",)):
            if drop and f"/{drop}/" in name:
                continue
            data = _wav(i) if name.endswith(".wav") else b"MUSAN\n"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return dest


def build_rirs(dest: Path, extra: zipfile.ZipInfo | None = None, extra_data: bytes = b"x") -> Path:
    """``rirs_noises.zip`` in the official layout (``RIRS_NOISES/...``), plus member ``extra``."""
    with zipfile.ZipFile(dest, "w") as zf:
        for i, name in enumerate(RIRS_FILES):
            zf.writestr(name, _wav(10 + i))
        if extra is not None:
            zf.writestr(extra, extra_data)
    return dest


def md5(path: Path) -> list[str]:
    return [f"md5:{file_hash(path, 'md5')}"]


def test_musan_downloaded_extracted_and_returned(range_server, tmp_path):
    archive = build_musan(range_server.root / "musan.tar.gz")
    folder = fetch_musan(tmp_path / "data", tmp_path / "dl", url=f"{range_server.url}/musan.tar.gz",
                         checksums=md5(archive), progress=False)
    assert folder == tmp_path / "data" / "musan"
    assert all((folder / part).is_dir() for part in ("music", "noise", "speech"))
    for name in MUSAN_FILES:
        info = sf.info(tmp_path / "data" / name)
        assert info.samplerate == 16000 and info.frames == 1600
    assert (tmp_path / "dl" / "musan.tar.gz").read_bytes() == archive.read_bytes()
    assert not list((tmp_path / "dl").glob("*.part"))


def test_rirs_downloaded_extracted_and_returned(range_server, tmp_path):
    archive = build_rirs(range_server.root / "rirs_noises.zip")
    folder = fetch_rirs(tmp_path / "data", tmp_path / "dl",
                        url=f"{range_server.url}/rirs_noises.zip", checksums=md5(archive),
                        progress=False)
    assert folder == tmp_path / "data" / "RIRS_NOISES"
    assert {p.name for p in folder.iterdir()} == {"simulated_rirs", "real_rirs_isotropic_noises",
                                                  "pointsource_noises"}
    for name in RIRS_FILES:
        assert sf.info(tmp_path / "data" / name).frames == 1600


def test_defaults_are_the_official_archives():
    """The code's and the entry point's defaults: OpenSLR's URLs and published MD5s."""
    assert MUSAN_URL == "https://www.openslr.org/resources/17/musan.tar.gz"
    assert MUSAN_CHECKSUMS == ("md5:0c472d4fc0c5141eca47ad1ffeb2a7df",)
    assert RIRS_URL == "https://www.openslr.org/resources/28/rirs_noises.zip"
    assert RIRS_CHECKSUMS == ("md5:e6f48e257286e05de56413b4779d8ffb",)
    cfg = compose_config("prepare_noise", ["paths.data_dir=/d", "paths.output_dir=unused"])
    assert (cfg.musan_url, tuple(cfg.musan_checksums)) == (MUSAN_URL, MUSAN_CHECKSUMS)
    assert (cfg.rirs_url, tuple(cfg.rirs_checksums)) == (RIRS_URL, RIRS_CHECKSUMS)
    assert (cfg.data_dir, cfg.download_dir) == ("/d", "/d/downloads")


@pytest.mark.parametrize("corpus", ["musan", "rirs"])
def test_checksum_mismatch_names_the_setting_and_leaves_nothing(range_server, tmp_path, corpus):
    """A tiny archive is not the official one: the default checksums refuse it, naming the
    setting that would accept it."""
    if corpus == "musan":
        build_musan(range_server.root / "musan.tar.gz")
        fetch, url = fetch_musan, f"{range_server.url}/musan.tar.gz"
    else:
        build_rirs(range_server.root / "rirs_noises.zip")
        fetch, url = fetch_rirs, f"{range_server.url}/rirs_noises.zip"
    with pytest.raises(DownloadError, match=rf"MD5 [0-9a-f]{{32}} is none of .*the download was "
                                            rf"removed.*{corpus}_checksums"):
        fetch(tmp_path / "data", tmp_path / "dl", url=url, progress=False)
    assert not list((tmp_path / "dl").iterdir())  # neither the archive nor a .part file
    assert not (tmp_path / "data").exists()


def test_rerun_and_cached_archive_do_not_touch_the_network(range_server, tmp_path):
    archive = build_rirs(range_server.root / "rirs_noises.zip")
    url = f"{range_server.url}/rirs_noises.zip"
    first = fetch_rirs(tmp_path / "data", tmp_path / "dl", url=url, checksums=md5(archive),
                       progress=False)
    range_server.close()
    range_server.requests.clear()
    # done: the marker is there, nothing is fetched nor extracted again
    (first / "simulated_rirs" / "smallroom" / "Room001" / "Room001-00001.wav").unlink()
    assert fetch_rirs(tmp_path / "data", tmp_path / "dl", url=url, checksums=md5(archive),
                      progress=False) == first
    assert not (first / "simulated_rirs" / "smallroom" / "Room001" / "Room001-00001.wav").exists()
    # elsewhere, the archive in download_dir is verified and extracted without the server
    other = fetch_rirs(tmp_path / "other", tmp_path / "dl", url=url, checksums=md5(archive),
                       progress=False)
    assert (other / "simulated_rirs" / "smallroom" / "Room001" / "Room001-00001.wav").is_file()
    assert range_server.requests == []


def test_partial_download_is_resumed(range_server, tmp_path):
    """A ``.part`` file of the first half (an interrupted earlier run): only the rest is asked
    for, with a Range request."""
    archive = build_musan(range_server.root / "musan.tar.gz")
    data = archive.read_bytes()
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "musan.tar.gz.part").write_bytes(data[: len(data) // 2])
    fetch_musan(tmp_path / "data", tmp_path / "dl", url=f"{range_server.url}/musan.tar.gz",
                checksums=md5(archive), progress=False)
    assert range_server.requests == [("musan.tar.gz", f"bytes={len(data) // 2}-")]
    assert (tmp_path / "dl" / "musan.tar.gz").read_bytes() == data
    assert (tmp_path / "data" / MUSAN_FILES[0]).is_file()


def test_archive_without_the_layout_is_refused(range_server, tmp_path):
    archive = build_musan(range_server.root / "musan.tar.gz", drop="speech")
    with pytest.raises(ValueError, match=r"musan.tar.gz holds no musan/speech/: it is not the "
                                         r"official musan.tar.gz \(check the musan_url setting"):
        fetch_musan(tmp_path / "data", tmp_path / "dl", url=f"{range_server.url}/musan.tar.gz",
                    checksums=md5(archive), progress=False)
    assert not (tmp_path / "data" / ".done" / "musan.extracted").exists()


def _symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("member,data,message", [
    (zipfile.ZipInfo("../evil"), b"x", "member '../evil' would be written outside"),
    (zipfile.ZipInfo("RIRS_NOISES/../../evil"), b"x", "member 'RIRS_NOISES/../../evil' would"),
    (zipfile.ZipInfo("/tmp/abs-evil"), b"x", "member '/tmp/abs-evil' would be written outside"),
    (_symlink("RIRS_NOISES/link"), b"../../evil",
     "link 'RIRS_NOISES/link' -> '../../evil' escapes"),
    (_symlink("RIRS_NOISES/abs"), b"/etc/passwd",
     "link 'RIRS_NOISES/abs' -> '/etc/passwd' escapes"),
], ids=["parent", "inner-parent", "absolute", "symlink-parent", "symlink-absolute"])
def test_zip_with_escaping_member_is_refused(range_server, tmp_path, member, data, message):
    archive = build_rirs(range_server.root / "rirs_noises.zip", member, data)
    with pytest.raises(ValueError, match=f"archive {message}.*refusing to extract"):
        extract_zip(archive, tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="refusing to extract"):
        fetch_rirs(tmp_path / "data", tmp_path / "dl", url=f"{range_server.url}/rirs_noises.zip",
                   checksums=None, progress=False)
    # every member is checked before anything is written
    assert not list((tmp_path / "out").iterdir())
    assert not (tmp_path / "data" / "RIRS_NOISES").exists()
    assert not (tmp_path / "evil").exists() and not (tmp_path / "data" / ".done").exists()


def test_extract_zip_reports_a_corrupt_archive(tmp_path):
    bad = tmp_path / "rirs_noises.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="rirs_noises.zip is not a readable zip archive"):
        extract_zip(bad, tmp_path / "out", progress=False)


def _prepare_noise(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``python -m asr.prepare_noise`` as a user runs it, with data and runs under ``tmp_path``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "asr.prepare_noise", f"paths.data_dir={tmp_path / 'data'}",
         f"paths.exp_dir={tmp_path / 'exp'}", "progress=false", *overrides],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


def test_prepare_noise_command_prints_the_folder_and_its_setting(range_server, tmp_path):
    rirs = build_rirs(range_server.root / "rirs_noises.zip")
    proc = _prepare_noise(tmp_path, "corpus=rirs", f"rirs_url={range_server.url}/rirs_noises.zip",
                          f"rirs_checksums=[{md5(rirs)[0]}]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = (tmp_path / "data" / "RIRS_NOISES").resolve()
    line = f"rirs: {folder}  (use: audio_augment.reverb.rir_folder={folder}/simulated_rirs)"
    assert line in proc.stdout.splitlines(), proc.stdout
    assert (tmp_path / "data" / "downloads" / "rirs_noises.zip").is_file()
    assert (folder / "simulated_rirs" / "smallroom" / "Room001" / "Room001-00001.wav").is_file()

    # both corpora: musan is fetched (unchecked), rirs is done already and not asked for again
    build_musan(range_server.root / "musan.tar.gz")
    range_server.requests.clear()
    proc = _prepare_noise(tmp_path, "corpus=[musan,rirs]", "musan_checksums=null",
                          f"musan_url={range_server.url}/musan.tar.gz")
    assert proc.returncode == 0, proc.stderr[-3000:]
    musan = (tmp_path / "data" / "musan").resolve()
    assert [x for x in proc.stdout.splitlines() if x.startswith(("musan:", "rirs:"))] == [
        f"musan: {musan}  (use: audio_augment.noise.folder={musan})", line]
    assert [name for name, _ in range_server.requests] == ["musan.tar.gz"]


def test_prepare_noise_command_fails_in_one_line(range_server, tmp_path):
    """A URL the server does not have, then a corpus that does not exist: one ``error:`` line
    naming what to change, no traceback."""
    for overrides, wanted in (
        (["corpus=[musan]", f"musan_url={range_server.url}/nope.tar.gz"], "HTTP 404"),
        (["corpus=noise"], "corpus=noise: choose corpus=musan, corpus=rirs or corpus=[musan,rirs]"),
        ([], "corpus is not set: choose corpus=musan"),
    ):
        proc = _prepare_noise(tmp_path, *overrides)
        err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert len(err) == 1 and wanted in err[0], proc.stderr[-3000:]
    assert not (tmp_path / "data" / "musan").exists()
