"""Benchmark (not a test): prepare a synthetic LibriSpeech-layout tree of short FLAC files, report files/s.

    python benchmarks/prepare_librispeech.py [--files 20000] [--workers 0] [--dir /tmp/ls-bench]

A 960 h prepare reads ~281k FLAC headers; at N files/s it takes 281241 / N seconds. The tree is built
once (real FLAC files written by soundfile, 0.5-2 s of noise each, 16 kHz) and reused on later runs; the
timing covers asr.data.corpora.librispeech.read_subset: listing, transcript parsing, header reads, rejections.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from asr.data.corpora.librispeech import read_subset

WORDS = "the of and to a in that he was it his i with as for had you not be her on at by which".split()


def build_tree(root: Path, files: int, per_chapter: int = 50, seed: int = 0) -> Path:
    """``<root>/train-synthetic/<spk>/<chapter>/*.flac`` + ``*.trans.txt`` with ``files`` utterances."""
    subset = root / "train-synthetic"
    done = subset / f".built-{files}"
    if done.exists():
        return subset
    rng = np.random.default_rng(seed)
    n = 0
    chapter = 0
    while n < files:
        spk, chap = 100 + chapter // 4, 1000 + chapter
        folder = subset / str(spk) / str(chap)
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for u in range(min(per_chapter, files - n)):
            uid = f"{spk}-{chap}-{u:04d}"
            samples = int(rng.integers(8000, 32000))
            sf.write(folder / f"{uid}.flac", (rng.standard_normal(samples) * 0.05).astype(np.float32), 16000)
            lines.append(f"{uid} {' '.join(rng.choice(WORDS, size=8)).upper()}\n")
            n += 1
        (folder / f"{spk}-{chap}.trans.txt").write_text("".join(lines))
        chapter += 1
    done.touch()
    return subset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--workers", type=int, default=0, help="0 = one process per CPU")
    ap.add_argument("--dir", default="/tmp/asr-librispeech-bench")
    args = ap.parse_args()
    start = time.perf_counter()
    subset = build_tree(Path(args.dir), args.files)
    print(f"tree: {subset} ({time.perf_counter() - start:.1f} s to build or find)")
    workers = args.workers or os.cpu_count() or 1
    start = time.perf_counter()
    utts, rejected = read_subset(subset, workers=workers, progress=False)
    elapsed = time.perf_counter() - start
    assert len(utts) == args.files and not rejected, (len(utts), rejected[:3])
    rate = len(utts) / elapsed
    print(f"prepared {len(utts)} files in {elapsed:.2f} s with {workers} worker(s): {rate:.0f} files/s "
          f"({os.cpu_count()} CPUs); a 960 h prepare (281,241 files) would take {281241 / rate / 60:.1f} min")


if __name__ == "__main__":
    main()
