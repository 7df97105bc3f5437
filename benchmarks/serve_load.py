"""Benchmark (not a test): python -m asr.serve under load, with batching on and off, beside offline transcription.

    python benchmarks/serve_load.py --checkpoint exp/an4/<run>/checkpoints/best.ckpt --manifest data/an4/test.jsonl \
        [--clients 1 8 32] [--seconds 30] [--batching on off] [--device cpu]

For each batching setting a real server process is started (``batch.enabled=true|false``, 127.0.0.1, a free port);
then for each ``--clients`` count that many threads send the manifest's files (round robin, each thread from its own
offset) to ``POST /v1/audio/transcriptions`` for ``--seconds``, each waiting for its answer before sending the next.
Per row: requests answered, throughput (audio seconds transcribed per wall second), p50/p99 latency, errors (any
answer but 200), the largest batch the server ran, and the server's resident memory (VmRSS) when the row starts and
ends. The offline rows time the same files in the same run without HTTP: ``Recognizer.transcribe`` one file at a time,
and one forward pass per batch of at most ``--batch-seconds`` of audio with greedy decoding (the server's upper bound).
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asr.audio import load_audio  # noqa: E402
from asr.data.manifest import read_manifest  # noqa: E402
from asr.recognizer import Recognizer  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def start_server(checkpoint: str, batching: bool, device: str, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "asr.serve", f"checkpoint={checkpoint}", f"port={port}",
                                 f"batch.enabled={str(batching).lower()}", f"device={device}", "queue_size=256",
                                 "access_log=false", "log_level=warning"],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            get_json(f"{url}/health")
            return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    sys.exit(f"the server did not answer /health within 300 s:\n{log.read_text()}")


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def load_clients(url: str, files: list[tuple[bytes, str, float]], clients: int, seconds: float) -> dict:
    """``clients`` threads posting ``files`` for ``seconds``; latencies, audio seconds done and errors."""
    latencies: list[float] = []
    done, errors = [0.0], [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(k: int) -> None:
        i = k * 7
        while time.monotonic() < stop:
            (body, kind, duration) = files[i % len(files)]
            i += 1
            req = urllib.request.Request(f"{url}/v1/audio/transcriptions", data=body,
                                         headers={"Content-Type": kind})
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(req, timeout=300) as r:
                    r.read()
                ok = True
            except (urllib.error.URLError, OSError):
                ok = False
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - t0)
                    done[0] += duration
                else:
                    errors[0] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = sorted(latencies) or [float("nan")]
    return {"requests": len(latencies), "audio_per_s": done[0] / wall, "errors": errors[0],
            "p50": 1000 * statistics.median(lat), "p99": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]}


def offline(checkpoint: str, paths: list[str], device: str, batch_seconds: float,
            seconds: float) -> list[tuple[str, float]]:
    """Audio seconds per second of ``Recognizer.transcribe`` file by file, and of batched forward + greedy decoding;
    each repeated over the files for at least ``seconds``."""
    rec = Recognizer.load(checkpoint, device)
    wavs = [load_audio(p, rec.sample_rate) for p in paths]
    total = sum(w.numel() for w in wavs) / rec.sample_rate
    order = sorted(range(len(wavs)), key=lambda i: wavs[i].numel())

    def batched() -> None:
        group: list[torch.Tensor] = []
        for i in order + [None]:
            if group and (i is None or (len(group) + 1) * wavs[i].numel() > batch_seconds * rec.sample_rate):
                for lp in rec.log_probs(group):
                    rec.decoder.decode(lp[None], torch.tensor([lp.shape[0]]))
                group = []
            if i is not None:
                group.append(wavs[i])

    def speed(run) -> float:
        run()  # warm up
        t0, passes = time.perf_counter(), 0
        while passes == 0 or time.perf_counter() - t0 < seconds:
            run()
            passes += 1
        return passes * total / (time.perf_counter() - t0)

    return [("offline: Recognizer.transcribe, file by file", speed(lambda: rec.transcribe(paths))),
            (f"offline: batched forward (≤ {batch_seconds:g} s) + greedy", speed(batched))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a .ckpt or a model folder")
    ap.add_argument("--manifest", required=True, help="JSON Lines manifest of the files to send (e.g. AN4 test)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--seconds", type=float, default=30.0, help="load time per row")
    ap.add_argument("--batching", nargs="+", choices=["on", "off"], default=["on", "off"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-seconds", type=float, default=200.0, help="offline batches: padded seconds at most")
    ap.add_argument("--log", default="/tmp/serve_load_server.log", help="the server's output")
    args = ap.parse_args()
    paths = [u.audio_filepath for u in read_manifest(args.manifest)]
    files = []
    for p in paths:
        body, kind = multipart(Path(p).name, Path(p).read_bytes())
        files.append((body, kind, sf.info(p).duration))
    print(f"# serve load: {len(paths)} files, {sum(f[2] for f in files):.1f} s of audio, {args.seconds:g} s per row, "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, device {args.device}\n")
    rows = []
    for mode in args.batching:
        proc, url = start_server(args.checkpoint, mode == "on", args.device, Path(args.log))
        try:
            load_clients(url, files, 1, 2.0)  # warm up
            for n in args.clients:
                before = rss_mb(proc.pid)
                r = load_clients(url, files, n, args.seconds)
                rows.append((f"server, batching {mode}", n, r, get_json(f"{url}/health")["largest_batch"],
                             before, rss_mb(proc.pid)))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print("| setting | clients | requests | audio-s/s | p50 ms | p99 ms | errors | largest batch | RSS start MB "
          "| RSS end MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, n, r, largest, before, after in rows:
        print(f"| {name} | {n} | {r['requests']} | {r['audio_per_s']:.1f} | {r['p50']:.0f} | {r['p99']:.0f} | "
              f"{r['errors']} | {largest} | {before:.0f} | {after:.0f} |")
    for name, speed in offline(args.checkpoint, paths, args.device, args.batch_seconds,
                                   min(args.seconds, 10.0)):
        print(f"| {name} | – | {len(paths)} | {speed:.1f} | – | – | – | – | – | – |")


if __name__ == "__main__":
    main()
