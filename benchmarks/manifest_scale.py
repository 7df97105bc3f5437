"""What the training data's start-up costs at a million utterances: time, and resident bytes an utterance.

    python benchmarks/manifest_scale.py [--utterances 1000000] [--dir DIR]

Writes a synthetic LibriSpeech-like manifest (``--utterances`` lines of ~300 bytes: ids and relative paths as
LibriSpeech's, transcripts of random letters, apostrophes and spaces, durations 1-35 s, one line in a thousand with
a digit the tokenizer rejects) and measures, each in a fresh process (resident set size before and after, so a
number counts what stays in memory):

(a) old: ``read_manifest`` (a list of :class:`~asr.data.manifest.Utterance`);
(b) new: what the DataModule does for training: ``ASRDataModule._load`` (a ``ManifestTable`` of the kept lines, the
    filter run over every line), a ``BucketBatchSampler`` over the table's durations (``len()``: epoch 0's packing)
    and the first epoch's batches (an iterator at its first batch: the epoch's arrays and draw seeds alive);
(c) after ``os.fork()``, a child (as a loader worker) touches every utterance's duration, then (new) iterates one
    epoch of the sampler: the pages it wrote (``Private_Dirty`` of ``/proc/self/smaps_rollup``) per utterance.

Last, the durations taken from every line of the table into a list (``[u.duration for u in ds.utterances]``)
instead of from its array (``ds.durations``): what that costs.

The settings are the LibriSpeech recipe's: 600 padded seconds a batch, 40 buckets, durations 0.1-36 s, speed
perturbation (draw seeds), character tokenizer, 4x subsampling of 10 ms frames. It prints numbers and asserts none.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LETTERS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ' "
# English-like letter frequencies are not needed: the filter's cost depends on the length, not the letters
WEIGHTS = np.array([0.78 / 26] * 26 + [0.01, 0.21])


def write_synthetic(path: Path, n: int, seed: int = 0) -> None:
    """``n`` LibriSpeech-like manifest lines (~300 bytes each), audio paths relative to ``path``'s folder."""
    rng = np.random.default_rng(seed)
    durations = np.round(rng.uniform(1.0, 35.0, n), 3)
    lengths = np.maximum(2, (durations * rng.uniform(5.0, 10.0, n)).astype(np.int64))  # ~300-byte lines
    speakers = rng.integers(100, 9999, n)
    chapters = rng.integers(10000, 199999, n)
    bad = rng.random(n) < 0.001
    with path.open("w", encoding="utf-8") as f:
        for lo in range(0, n, 100_000):
            hi = min(n, lo + 100_000)
            chars = rng.choice(np.frombuffer(LETTERS, np.uint8), int(lengths[lo:hi].sum()), p=WEIGHTS)
            text, pos, lines = chars.tobytes().decode("ascii"), 0, []
            for i in range(lo, hi):
                words = " ".join(text[pos: pos + lengths[i]].split()) or "A"
                pos += lengths[i]
                uid = f"{speakers[i]}-{chapters[i]}-{i % 10000:04d}"
                lines.append(json.dumps({
                    "audio_filepath": f"LibriSpeech/train-other-500/{speakers[i]}/{chapters[i]}/{uid}.flac",
                    "duration": float(durations[i]),
                    "text": words + " 1ST" if bad[i] else words,
                    "id": uid,
                    "speaker": str(speakers[i]),
                }))
            f.write("\n".join(lines) + "\n")


def rss() -> int:
    """Resident bytes of this process, after a garbage collection."""
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def private_dirty() -> int:
    """Bytes of this process's pages no other process maps (written since the fork: copies and new allocations)."""
    with open("/proc/self/smaps_rollup") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Private_Dirty:"))


def in_child(work: list) -> list[int]:
    """Fork; the child runs each step of ``work`` and reports its ``Private_Dirty`` growth after each."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: as a loader worker forked from the main process
        os.close(read)
        start, grown = private_dirty(), []
        for step in work:
            step()
            grown.append(private_dirty() - start)
        os.write(write, json.dumps(grown).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        out = json.loads(f.read())
    os.waitpid(pid, 0)
    return out


def measure_old(manifest: str) -> dict:
    from asr.data.manifest import read_manifest

    before = rss()
    start = time.perf_counter()
    utts = read_manifest(manifest)
    seconds = time.perf_counter() - start
    resident = rss() - before
    child = in_child([lambda: sum(u.duration for u in utts)])
    return {"utterances": len(utts), "seconds": seconds, "resident": resident, "child": child}


def measure_new(manifest: str) -> dict:
    import torch  # noqa: F401  (imported before the first measurement: its memory is not the data's)

    from asr.data.datamodule import ASRDataModule
    from asr.data.sampler import BucketBatchSampler
    from asr.text import CharTokenizer

    settings = {"max_batch_seconds": 600.0, "num_buckets": 40}
    dm = ASRDataModule(CharTokenizer(), manifest, manifest, min_duration=0.1, max_duration=36.0, num_workers=0,
                       speed_perturb=[0.9, 1.0, 1.1], output_frames=lambda samples: samples // 640, **settings)
    before = rss()
    t0 = time.perf_counter()
    ds = dm._load(manifest, "train", train=True)
    t1 = time.perf_counter()
    sampler = BucketBatchSampler(ds.durations, shuffle=True, drop_last=True, draw_seeds=True, **settings)
    batches = len(sampler)
    t2 = time.perf_counter()
    epoch = iter(sampler)
    next(epoch)
    t3 = time.perf_counter()
    resident = rss() - before
    child = in_child([lambda: float(ds.durations.sum()), lambda: sum(1 for _ in sampler)])
    t4 = time.perf_counter()
    rest = sum(1 for _ in epoch)
    t5 = time.perf_counter()
    before = rss()
    listed = [u.duration for u in ds.utterances]  # the durations read from every line instead of the table's array
    t6 = time.perf_counter()
    listed_resident = rss() - before
    del listed
    return {"utterances": len(ds), "rejected": len(dm.rejected), "batches": batches, "resident": resident,
            "child": child, "load": t1 - t0, "sampler": t2 - t1, "first_batch": t3 - t2, "epoch": t5 - t4,
            "rest": rest, "listed": t6 - t5, "listed_resident": listed_resident}


def run_fresh(what: str, manifest: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--measure", what, "--manifest", str(manifest)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(n: int, size: int, old: dict, new: dict) -> None:
    per = lambda b, k: f"{b / k:8.1f}"  # noqa: E731
    setup = new["load"] + new["sampler"] + new["first_batch"]
    print(f"manifest: {n} lines, {size / 2**20:.0f} MiB; new path keeps {new['utterances']} "
          f"({new['rejected']} rejected), {new['batches']} batches an epoch")
    print(f"{'':48s} {'seconds':>8s} {'B/utt main':>11s} {'B/utt child':>12s}")
    print(f"{'(a) old: read_manifest':48s} {old['seconds']:8.1f} {per(old['resident'], n):>11s} "
          f"{per(old['child'][0], n):>12s}  (child: touch durations)")
    print(f"{'(b) new: table + filter (ASRDataModule._load)':48s} {new['load']:8.1f}")
    print(f"{'    + BucketBatchSampler (epoch 0 packed: len)':48s} {new['sampler']:8.1f}")
    print(f"{'    + first epoch (iterator at batch 1)':48s} {new['first_batch']:8.1f}")
    print(f"{'    = start-up, resident':48s} {setup:8.1f} {per(new['resident'], n):>11s} "
          f"{per(new['child'][0], n):>12s}  (child: touch durations)")
    print(f"{'(c) new: child iterates one epoch of the sampler':48s} {'':8s} {'':11s} "
          f"{per(new['child'][1], n):>12s}  (cumulative)")
    print(f"{'    the rest of the epoch, in the main process':48s} {new['epoch']:8.1f}")
    print(f"{'[u.duration for u in dataset.utterances] (list)':48s} {new['listed']:8.1f} "
          f"{per(new['listed_resident'], n):>11s}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--utterances", type=int, default=1_000_000)
    p.add_argument("--dir", help="where to write the manifest (default: a temporary folder, removed)")
    p.add_argument("--measure", choices=["old", "new"], help=argparse.SUPPRESS)
    p.add_argument("--manifest", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(json.dumps((measure_old if args.measure == "old" else measure_new)(args.manifest)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(args.dir or tmp) / "train.jsonl"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        write_synthetic(manifest, args.utterances)
        print(f"wrote {manifest} in {time.perf_counter() - start:.1f} s")
        old, new = run_fresh("old", manifest), run_fresh("new", manifest)
        report(args.utterances, manifest.stat().st_size, old, new)


if __name__ == "__main__":
    main()
