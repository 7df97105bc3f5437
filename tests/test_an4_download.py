"""AN4 preparation from the real archive, fetched over a real HTTP server on 127.0.0.1, and safe extraction."""

import functools
import http.server
import io
import json
import tarfile
import threading
from pathlib import Path

import pytest
import soundfile as sf

from asr.corpora.an4 import parse_transcription, prepare
from asr.data import read_manifest
from asr.download import DownloadError, download, extract_tar, md5sum
from tests.conftest import AN4_ARCHIVE, needs_an4


@pytest.fixture
def http_dir(tmp_path):
    """Serve tmp_path/srv over HTTP on 127.0.0.1 (a real server, Range requests are not honoured)."""
    root = tmp_path / "srv"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_parse_both_transcript_styles(tmp_path):
    f = tmp_path / "t.transcription"
    f.write_text("<s> YES </s> (an251-fash-b)\nRUBOUT G M E F THREE NINE (an406-fcaw-b)\n<s>  ENTER SIX </s>  (x-1)\n")
    assert parse_transcription(f) == {
        "an251-fash-b": "YES",
        "an406-fcaw-b": "RUBOUT G M E F THREE NINE",
        "x-1": "ENTER SIX",
    }
    f.write_text("no id here\n")
    with pytest.raises(ValueError, match=r"t.transcription:1"):
        parse_transcription(f)


def test_an4_manifests_from_real_archive(an4_dir):
    train, dev, test = (read_manifest(an4_dir / f"{s}.jsonl") for s in ("train", "dev", "test"))
    assert len(train) + len(dev) == 948 and len(test) == 130
    assert len(dev) >= 100
    assert not {u.speaker for u in dev} & {u.speaker for u in train}  # dev speakers are unseen in train
    assert len({u.speaker for u in test}) == 10
    for u in train[:50] + dev[:20] + test[:50]:
        assert "<s>" not in u.text and "</s>" not in u.text and u.text == u.text.lower().strip() and u.text
        info = sf.info(u.audio_filepath)
        assert info.samplerate == 16000 and abs(info.frames / 16000 - u.duration) < 1e-3
    by_id = {u.id: u.text for u in test}
    assert by_id["an406-fcaw-b"] == "rubout g m e f three nine"  # bare style
    assert {u.id: u.text for u in train + dev}["an251-fash-b"] == "yes"  # <s> ... </s> style
    assert (an4_dir / "rejected.jsonl").read_text() == ""


def test_an4_prepare_is_deterministic_and_skips_when_done(an4_dir, tmp_path):
    again = prepare(str(an4_dir), str(tmp_path / "no-cache"), url="http://127.0.0.1:9/unreachable", progress=False)
    assert Path(again["dev"]).read_text() == (an4_dir / "dev.jsonl").read_text()


@needs_an4
def test_an4_downloaded_over_http_then_cached(http_dir, tmp_path):
    srv, base = http_dir
    (srv / "an4_sphere.tar.gz").symlink_to(AN4_ARCHIVE)
    cache = tmp_path / "downloads"
    archive = download(f"{base}/an4_sphere.tar.gz", cache / "an4_sphere.tar.gz", md5=md5sum(AN4_ARCHIVE),
                       progress=False)
    assert archive.stat().st_size == AN4_ARCHIVE.stat().st_size
    assert not (cache / "an4_sphere.tar.gz.part").exists()
    # second call: the cached file is used, the server is not needed
    assert download("http://127.0.0.1:9/gone", archive, progress=False) == archive


def test_download_checksum_mismatch_leaves_nothing(http_dir, tmp_path):
    srv, base = http_dir
    (srv / "f.bin").write_bytes(b"x" * 1000)
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match="MD5"):
        download(f"{base}/f.bin", dest, md5="0" * 32, progress=False)
    assert not dest.exists() and not (tmp_path / "f.bin.part").exists()


def test_download_missing_url_fails_clearly(http_dir, tmp_path):
    _, base = http_dir
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{base}/nope.tar.gz", tmp_path / "nope.tar.gz", progress=False)


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
    "name,link", [("../escape.txt", None), ("an4/../../escape.txt", None), ("/tmp/abs-escape.txt", None),
                  ("an4/link", "../../etc/passwd"), ("an4/abslink", "/etc/passwd")]
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
    if not AN4_ARCHIVE.is_file():
        pytest.skip(f"AN4 archive not found at {AN4_ARCHIVE}")
    data = tmp_path / "an4"
    extract_tar(AN4_ARCHIVE, data, progress=False)
    (data / ".extracted").touch()
    victim = data / "an4" / "wav" / "an4test_clstk" / "fcaw" / "an406-fcaw-b.sph"
    victim.write_bytes(b"garbage")
    manifests = prepare(str(data), str(tmp_path / "cache"), progress=False)
    rejected = [json.loads(x) for x in (data / "rejected.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rejected] == ["an406-fcaw-b"] and "unreadable audio" in rejected[0]["reason"]
    assert len(read_manifest(manifests["test"])) == 129


@needs_an4
def test_prepare_command_runs_the_an4_stages_one_at_a_time(tmp_path):
    """`python -m asr.prepare recipe=an4 stage=download|manifests|all` (what error messages tell users to run)."""
    from hydra import compose, initialize_config_dir

    from asr.prepare import run_stage
    from tests.conftest import ROOT

    data = tmp_path / "an4"
    overrides = ["recipe=an4", f"prepare.data_dir={data}", f"paths.download_dir={AN4_ARCHIVE.parent}",
                 "+prepare.progress=false"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="prepare", overrides=overrides)
    with pytest.raises(FileNotFoundError, match="run the download stage first"):
        run_stage(cfg.copy(), "manifests")
    assert run_stage(cfg.copy(), "download") == {"manifests": {}}
    assert (data / "an4" / "etc" / "an4_train.transcription").is_file() and not (data / "train.jsonl").exists()
    manifests = run_stage(cfg.copy(), "manifests")["manifests"]
    assert len(read_manifest(manifests["train"])) + len(read_manifest(manifests["dev"])) == 948
    result = run_stage(cfg.copy(), "all")  # everything done already: download + manifests skip, check runs
    assert result["manifests"] == manifests and set(result["check"]) == {"train", "val", "dev", "test"}
