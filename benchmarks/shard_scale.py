"""Benchmark (not a test): start-up time and resident bytes per utterance of shard training at N utterances.

    python benchmarks/shard_scale.py [--utterances 1000000] [--ranks 8] [--workers 6]

Writes a synthetic shard index (``index.json`` + ``durations.npy``, LibriSpeech-like durations, ~1000 s a shard; no
tars: the plan never opens them), then times what a rank does before its first batch: :class:`ShardIndex`, the
:class:`ShardBatchSampler`'s epoch length (every stream of every rank planned), the first batch of the epoch, and the
whole epoch's plan; prints the RSS growth per utterance. The file-mode figures: ``benchmarks/manifest_scale.py``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from asr.data.shard_loader import ShardBatchSampler, ShardIndex


def rss() -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1]) * 1024


def write_index(folder: Path, n: int, shard_seconds: float = 1000.0) -> None:
    durations = np.clip(np.random.default_rng(0).gamma(4.0, 3.1, n), 1.0, 35.0).astype(np.float32)
    per = int(shard_seconds / float(durations.mean()))
    starts = range(0, n, per)
    shards = [{"name": f"shard-{i:06d}.tar", "utterances": int(min(per, n - a)),
               "seconds": float(durations[a: a + per].sum()), "bytes": 0, "sha256": ""} for i, a in enumerate(starts)]
    (folder / "index.json").write_text(json.dumps({"shards": shards}))
    np.save(folder / "durations.npy", durations)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utterances", type=int, default=1_000_000)
    ap.add_argument("--ranks", type=int, default=8)
    ap.add_argument("--workers", type=int, default=6, help="loader workers per rank (the LibriSpeech recipes: 6)")
    ap.add_argument("--batch-seconds", type=float, default=600.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_index(folder, args.utterances)
        before, start = rss(), time.perf_counter()
        index = ShardIndex(folder)
        sampler = ShardBatchSampler(index, args.batch_seconds, args.workers, num_replicas=args.ranks, rank=0, seed=1)
        length = len(sampler)
        ready = time.perf_counter() - start
        batches = iter(sampler)
        next(batches)
        first = time.perf_counter() - start
        resident = rss() - before
        rest = 1 + sum(1 for _ in batches)
        whole = time.perf_counter() - start
    n = args.utterances
    print(f"{n} utterances in {len(index.names)} shards, {args.ranks} ranks x {args.workers} workers: "
          f"{length} batches a rank an epoch ({rest} yielded)")
    print(f"start-up (index + epoch length): {ready:.2f} s; first batch at {first:.2f} s; whole epoch planned and "
          f"iterated at {whole:.2f} s")
    print(f"resident after the first batch: {resident / n:.1f} bytes per utterance (durations are a memory-mapped "
          f"file: shared by the loader workers, which receive planned batches, never the index)")


if __name__ == "__main__":
    main()
