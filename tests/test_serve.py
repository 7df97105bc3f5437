"""python -m asr.serve: a real server process on 127.0.0.1, the real ``openai`` client, real AN4
audio. The served texts must be the ones :meth:`asr.Recognizer.transcribe` gives."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest
import soundfile as sf
import torch

from asr.recognizer import Recognizer
from tests.conftest import ROOT

START_SECONDS = 180  # a cold start imports torch and loads the model: slow on a busy machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


@contextmanager
def serve(checkpoint: Path, log: Path, *overrides: str):
    """``python -m asr.serve checkpoint=... port=<free>`` until the block ends; yields its URL
    once ``/health`` answers."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "asr.serve", f"checkpoint={checkpoint}",
                                 f"port={port}", "access_log=false", *overrides],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if get_json(f"{url}/health")["status"] == "ok":
                    break
            except (OSError, ValueError):
                if time.monotonic() > deadline:
                    pytest.fail(f"no /health after {START_SECONDS} s:\n{log.read_text()}")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    """One server for the module: 1 MB uploads at most; a batch's first request waits 200 ms for
    company, so that concurrent requests surely share a forward pass."""
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with serve(tiny_checkpoint, log, "max_upload_mb=1", "batch.max_wait_ms=200") as url:
        yield url


@pytest.fixture(scope="module")
def test_files(tiny_dir) -> list[Path]:
    rows = [json.loads(line) for line in (tiny_dir / "test.jsonl").read_text().splitlines()]
    return [tiny_dir / r["audio_filepath"] for r in rows]


@pytest.fixture(scope="module")
def expected(tiny_checkpoint, test_files) -> list[str]:
    """What the library gives for the same files."""
    return [t.text for t in Recognizer.load(tiny_checkpoint).transcribe(test_files)]


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)


def post(url: str, fields: dict[str, str], files: dict[str, tuple[str, bytes]]):
    """``(status, headers, body bytes)`` of a multipart POST to ``/v1/audio/transcriptions``."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts += [(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{name}"'
               f"\r\nContent-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
              for k, (name, data) in files.items()]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"{url}/v1/audio/transcriptions", data=body, headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def assert_openai_error(status: int, body: bytes, want: int, param: str | None = "file") -> dict:
    assert status == want, body
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert error["message"] and error["code"], error
    return error


def test_openai_client_gets_the_texts_the_recognizer_gives(server, test_files, expected):
    api = client(server)
    [model] = api.models.list().data
    assert model.id == "best"  # the checkpoint's stem (tests/conftest.py: .../best.ckpt)
    got = []
    for path in test_files:
        with open(path, "rb") as f:
            got.append(api.audio.transcriptions.create(model=model.id, file=f).text)
    assert got == expected and all(got)


def test_subtitles_and_verbose_json_parse(server, test_files, expected):
    api = client(server)
    with open(test_files[0], "rb") as f:
        srt = api.audio.transcriptions.create(model="best", file=f, response_format="srt")
    cues = re.findall(r"(\d+)\n(\d\d:\d\d:\d\d,\d{3}) --> (\d\d:\d\d:\d\d,\d{3})\n(.+)\n\n", srt)
    assert cues and "".join(c[0] + c[1] + c[2] + c[3] for c in cues) and cues[0][0] == "1", srt
    assert " ".join(c[3] for c in cues) == expected[0]
    with open(test_files[0], "rb") as f:
        vtt = api.audio.transcriptions.create(model="best", file=f, response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n") and re.search(
        r"\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}\n\S", vtt), vtt
    with open(test_files[1], "rb") as f:
        text = api.audio.transcriptions.create(model="best", file=f, response_format="text")
    assert text.strip() == expected[1]
    with open(test_files[1], "rb") as f:
        v = api.audio.transcriptions.create(
            model="best", file=f, response_format="verbose_json",
            timestamp_granularities=["word", "segment"]).model_dump()
    assert v["task"] == "transcribe" and v["language"] == "english" and v["text"] == expected[1]
    duration = sf.info(str(test_files[1])).duration
    assert abs(v["duration"] - duration) < 0.01
    assert " ".join(w["word"] for w in v["words"]) == expected[1]
    for w in v["words"]:
        assert 0 <= w["start"] <= w["end"] <= v["duration"] and 0 < w["confidence"] <= 1, w
    assert v["segments"] and all(s["start"] <= s["end"] and 0 < s["confidence"] <= 1
                                 for s in v["segments"])


def raw_upload(url: str, declared: int, send: int, chunked: bool = False) -> bytes:
    """Headers of a multipart upload declaring ``declared`` bytes (or chunked), then ``send``
    bytes of body, never its end; what the server answers. (Sending no more than the server
    reads before it answers, one byte over its limit, spares the connection a reset that would
    lose the answer.)"""
    host, port = url.removeprefix("http://").split(":")
    length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {declared}"
    head = (f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {host}\r\n{length}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nConnection: close\r\n\r\n")
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(head.encode())
        block = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        block += b"\0" * (64 * 1024 - len(block))
        for k in range(0, send, len(block)):
            part = block[: send - k]
            s.sendall(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def test_bad_requests_get_openai_errors_and_the_server_goes_on(server, test_files, expected,
                                                              tmp_path):
    api = client(server)
    audio = test_files[0].read_bytes()
    flac = tmp_path / "a.flac"
    sf.write(flac, *sf.read(test_files[0]))
    (tmp_path / "notes.txt").write_text("not audio at all\n" * 20)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "cut.flac").write_bytes(flac.read_bytes()[: flac.stat().st_size // 2])
    for name, code in [("notes.txt", "invalid_audio"), ("empty.wav", "empty_file"),
                       ("cut.flac", "invalid_audio")]:
        with open(tmp_path / name, "rb") as f, pytest.raises(openai.BadRequestError) as err:
            api.audio.transcriptions.create(model="best", file=f)
        assert err.value.status_code == 400 and err.value.body["code"] == code, err.value.body
        assert name in err.value.body["message"], err.value.body
        with open(test_files[0], "rb") as f:  # the server goes on
            assert api.audio.transcriptions.create(model="best", file=f).text == expected[0]
    cases = [({"model": "best"}, {}, 400, "missing_file"),
             ({}, {"file": ("../../etc/passwd", audio)}, 400, "invalid_file_name"),
             ({"response_format": "xml"}, {"file": ("a.sph", audio)}, 400, "invalid_value"),
             ({"model": "whisper-1"}, {"file": ("a.sph", audio)}, 404, "model_not_found")]
    for fields, files, status, code in cases:
        got, _, body = post(server, fields, files)
        param = {"invalid_value": "response_format", "model_not_found": "model"}.get(code, "file")
        assert assert_openai_error(got, body, status, param)["code"] == code
        assert post(server, {}, {"file": ("a.sph", audio)})[0] == 200
    # over the limit (1 MB here) before the body is read: a Content-Length over it is refused on
    # its own (a client that sends the body regardless may see the connection close instead:
    # curl asks `Expect: 100-continue` and gets the 413)...
    answer = raw_upload(server, declared=50 * 2**20, send=0)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "file_too_large"
    # ... and a body without one is counted as it comes: the answer comes before the body ends
    answer = raw_upload(server, declared=0, send=2**20 + 1, chunked=True)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert post(server, {}, {"file": ("a.sph", audio)})[0] == 200
    assert get_json(f"{server}/health")["status"] == "ok"


def test_concurrent_requests_share_a_forward_pass_and_give_the_same_texts(server, test_files,
                                                                         expected):
    api = client(server).audio.transcriptions.with_raw_response
    before = get_json(f"{server}/health")

    def one(i: int) -> tuple[str, int]:
        with open(test_files[i % len(test_files)], "rb") as f:
            raw = api.create(model="best", file=f)
        return raw.parse().text, int(raw.headers["x-batch-size"])

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    assert [text for text, _ in results] == [expected[i % len(expected)] for i in range(8)]
    after = get_json(f"{server}/health")
    assert after["requests"] - before["requests"] == 8
    assert after["largest_batch"] > 1 and after["batched_requests"] > before["batched_requests"]
    assert max(size for _, size in results) > 1


def test_a_bad_setting_is_named(tiny_checkpoint):
    out = subprocess.run([sys.executable, "-m", "asr.serve", f"checkpoint={tiny_checkpoint}",
                          "batch.max_seconds=0"], cwd=ROOT, capture_output=True, text=True,
                         timeout=START_SECONDS)
    assert out.returncode == 2 and "batch.max_seconds must be a positive number" in out.stderr


def test_a_full_queue_refuses_and_the_worker_goes_on(tiny_checkpoint):
    """In process: while the worker's thread runs a long file, a queue of one holds one request
    and refuses the next; both accepted ones are then answered."""
    from asr.serve.batcher import BatchWorker, QueueFull

    rec = Recognizer.load(tiny_checkpoint)
    worker = BatchWorker(rec, rec.decoder, queue_size=1)
    try:
        long = torch.randn(600 * rec.sample_rate) * 0.1  # ten minutes: pieces of 30 s, a while
        accepted = [worker.submit(long)]
        with pytest.raises(QueueFull):
            for _ in range(3):
                accepted.append(worker.submit(torch.randn(rec.sample_rate) * 0.1))
        assert len(accepted) <= 2
        results = [f.result(timeout=300) for f in accepted]
        assert [round(t.duration) for t, _ in results] == [600, 1][: len(results)]
        assert worker.health()["requests"] == len(accepted)
    finally:
        worker.close()
