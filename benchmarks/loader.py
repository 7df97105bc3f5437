"""Benchmark (not a test): what the training loader costs per CPU core on real FLAC, and the cores one GPU needs.

    python benchmarks/loader.py [--manifest train.jsonl] [--hours 0.25] [--dir /tmp/asr-loader-bench]
                                [--batch-seconds 600] [--repeats 3] [--cpu N]

Input: the FLAC files of a manifest, by default the ``train-clean-100`` part of a small corpus made by the rehearsal
builder (``benchmarks/rehearsal.py``: real AN4 and LibriSpeech speech, LibriSpeech's layout and lengths). Each row runs
on ONE core (``sched_setaffinity`` to one CPU, one torch and OpenMP thread) over all the files, and gives the audio
seconds delivered per wall second (after speed perturbation, the seconds the model trains on); the median of
``--repeats`` runs after an untimed one, the files in the page cache (a cold disk is slower):

- decode: ``soundfile.read`` of the 16 kHz FLAC;
- + resample: the project's ``load_audio`` on 8 kHz and 22.05 kHz FLAC copies (real corpora come at those rates);
- + speed perturbation: ``torchaudio.functional.resample`` from ``16000 x f`` to 16 kHz, f alternating 0.9 / 1.1
  (every utterance perturbed; ``asr/data/dataset.py`` draws from [0.9, 1.0, 1.1], so a third of them skip it);
- + collate: the same plus the tokenizer and ``asr.data.dataset.collate`` over length-bucketed batches;
- file mode: the whole training loader of ``ASRDataModule`` (``AudioDataset`` + ``BucketBatchSampler`` + collate,
  ``num_workers=0``), as the recipe sets it (no speed perturbation) and with ``speed_perturb=[0.9,1.0,1.1]``;
- shard mode: the same ``ASRDataModule`` with ``train_shards`` (tar shards written by ``python -m asr.shard``).

and ``cores per GPU = 6000 / rate``: the loader cores that keep a GPU training at 6,000 audio-s/s busy.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import soundfile as sf
import torch
import torchaudio.functional as AF

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import rehearsal  # noqa: E402  (benchmarks/ on the path first)

from asr.audio import load_audio  # noqa: E402
from asr.data.dataset import collate  # noqa: E402
from asr.data.manifest import Utterance, read_manifest, write_manifest  # noqa: E402
from asr.data.sampler import BucketBatchSampler  # noqa: E402
from asr.text import CharTokenizer, normalize_text  # noqa: E402

SR = 16000
GPU_RATE = 6000.0
SPEEDS = (0.9, 1.1)


def pin_one_core(cpu: int | None) -> int:
    """This process (and the threads torch makes) on one CPU of those allowed; returns it."""
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[-1] if cpu is None else cpu
    os.sched_setaffinity(0, {cpu})
    torch.set_num_threads(1)
    return cpu


def corpus_manifest(work: Path, hours: float, shared: Path) -> Path:
    """``<work>/train.jsonl``: the training subset of a rehearsal corpus of ``hours`` (built once, then reused)."""
    from asr.data.corpora.librispeech import read_subset

    stats = rehearsal.build_corpus(work, hours, shared / "an4_sphere.tar.gz",
                                   shared / "librispeech-samples" / "LibriSpeech", eval_minutes=0, progress=False)
    manifest = work / "train.jsonl"
    if stats.built or not manifest.is_file():
        utts, rejected = read_subset(work / "LibriSpeech" / rehearsal.TRAIN_SUBSET, workers=1, progress=False)
        assert not rejected, rejected[:3]
        write_manifest(manifest, utts)
    return manifest


def rate_copies(utts: Sequence[Utterance], work: Path, rate: int) -> list[str]:
    """FLAC copies of ``utts`` at ``rate`` Hz under ``<work>/rate-<rate>/`` (written once)."""
    folder = work / f"rate-{rate}"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for u in utts:
        path = folder / f"{u.id}.flac"
        if not path.is_file():
            wav = AF.resample(load_audio(u.audio_filepath, SR), SR, rate)
            tmp = path.with_name(path.stem + ".tmp.flac")
            sf.write(str(tmp), wav.numpy(), rate, format="FLAC", subtype="PCM_16")
            os.replace(tmp, path)
        out.append(str(path))
    return out


def timed(fn: Callable[[], float], repeats: int) -> tuple[float, list[float]]:
    """(median, all) of ``repeats`` runs of ``fn`` (which returns audio seconds delivered), in audio-s/s, after one
    untimed run (the first is slower: resampling kernels, allocator, caches)."""
    fn()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        seconds = fn()
        rates.append(seconds / (time.perf_counter() - start))
    return statistics.median(rates), rates


def speed(wav: torch.Tensor, i: int) -> torch.Tensor:
    """Speed perturbation as ``asr/data/dataset.py`` does it, factor 0.9 or 1.1 in turn."""
    factor = SPEEDS[i % len(SPEEDS)]
    return AF.resample(wav, int(round(SR * factor)), SR)


def datamodule_pass(manifest: Path, batch_seconds: float, speed_perturb: Sequence[float] | None,
                    shards: Path | None = None) -> Callable[[], float]:
    """One epoch of ``ASRDataModule``'s training loader with no workers (file mode, or shard mode with ``shards``).

    A fresh DataModule each time (its setup, a manifest or index read, is timed too: milliseconds): a ShardDataset
    read through once holds the stream's position and yields nothing on a second pass over the same epoch.
    """
    from asr.data.datamodule import ASRDataModule

    kwargs = {"train_shards": str(shards)} if shards is not None else {}

    def run() -> float:
        dm = ASRDataModule(CharTokenizer(), str(manifest), str(manifest), max_batch_seconds=batch_seconds,
                           num_buckets=_buckets(manifest), num_workers=0, speed_perturb=speed_perturb, **kwargs)
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.batch_sampler.set_epoch(0)
        return sum(float(b.audio_lengths.sum()) for b in loader) / SR

    return run


def _buckets(manifest: Path) -> int:
    """The recipe's 40 duration buckets, fewer on a small corpus (a few utterances a bucket at least)."""
    return max(1, min(40, len(read_manifest(manifest)) // 20))


def write_shards(manifest: Path, out: Path) -> Path | None:
    """``python -m asr.shard`` of ``manifest`` into ``out`` (reused when its index is there); None without it."""
    if importlib.util.find_spec("asr.shard") is None or importlib.util.find_spec("asr.data.shard_dataset") is None:
        return None
    if not (out / "index.json").is_file() or (out / "index.json").stat().st_mtime < manifest.stat().st_mtime:
        proc = subprocess.run([sys.executable, "-m", "asr.shard", f"manifest={manifest}", f"out={out}",
                               "shard_seconds=300"], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            print(f"python -m asr.shard failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
            return None
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, help="a JSONL manifest of 16 kHz FLAC (default: a rehearsal corpus)")
    ap.add_argument("--hours", type=float, default=0.25, help="size of the default corpus")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/asr-loader-bench"), help="work folder")
    ap.add_argument("--shared", type=Path, default=rehearsal.default_shared(), help="the shared real speech")
    ap.add_argument("--batch-seconds", type=float, default=600.0, help="padded seconds a batch (the 100h recipe's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpu", type=int, help="the CPU to run on (default: the last one allowed)")
    args = ap.parse_args(argv)
    work = args.dir.resolve()
    work.mkdir(parents=True, exist_ok=True)

    manifest = args.manifest.resolve() if args.manifest else corpus_manifest(work, args.hours, args.shared)
    utts = read_manifest(manifest)
    files = [u.audio_filepath for u in utts]
    total = sum(u.duration for u in utts)
    copies = {rate: rate_copies(utts, work, rate) for rate in (8000, 22050)}
    shards = write_shards(manifest, work / "shards")
    cpu = pin_one_core(args.cpu)
    tokenizer = CharTokenizer()
    shard_tars = sorted(shards.glob("*.tar")) if shards is not None else []
    for path in [*files, *copies[8000], *copies[22050], *shard_tars]:  # untimed: all in the page cache from here on
        Path(path).read_bytes()

    def decode() -> float:
        return sum(len(sf.read(p, dtype="float32")[0]) for p in files) / SR

    def decode_resample(rate: int) -> Callable[[], float]:
        return lambda: sum(load_audio(p, SR).numel() for p in copies[rate]) / SR

    def decode_speed() -> float:
        return sum(speed(load_audio(p, SR), i).numel() for i, p in enumerate(files)) / SR

    sampler = BucketBatchSampler([u.duration for u in utts], args.batch_seconds, num_buckets=_buckets(manifest), seed=0)
    batches = list(sampler)

    def decode_speed_collate() -> float:
        seconds = 0.0
        for batch in batches:
            items = [(speed(load_audio(files[i], SR), i), torch.tensor(tokenizer.encode(normalize_text(utts[i].text))),
                      utts[i].id) for i in batch]
            seconds += float(collate(items).audio_lengths.sum()) / SR
        return seconds

    rows: list[tuple[str, Callable[[], float] | str]] = [
        ("decode FLAC 16 kHz (soundfile)", decode),
        ("decode + resample 8 kHz -> 16 kHz", decode_resample(8000)),
        ("decode + resample 22.05 kHz -> 16 kHz", decode_resample(22050)),
        ("decode + speed perturb (0.9/1.1)", decode_speed),
        ("decode + speed perturb + collate", decode_speed_collate),
        ("file mode: ASRDataModule loader (recipe)", datamodule_pass(manifest, args.batch_seconds, None)),
        ("file mode: + speed_perturb [0.9,1.0,1.1]", datamodule_pass(manifest, args.batch_seconds, [0.9, 1.0, 1.1])),
    ]
    if shards is None:
        rows.append(("shard mode", "skipped: asr.shard / asr.data.shard_dataset not in this checkout yet"))
    else:
        rows += [
            ("shard mode: ASRDataModule loader (recipe)", datamodule_pass(manifest, args.batch_seconds, None, shards)),
            ("shard mode: + speed_perturb [0.9,1.0,1.1]",
             datamodule_pass(manifest, args.batch_seconds, [0.9, 1.0, 1.1], shards)),
        ]

    print(f"{len(files)} FLAC files, {total / 60:.1f} min of audio ({manifest}); CPU {cpu} only, "
          f"{torch.get_num_threads()} torch thread, median of {args.repeats}; batches of {args.batch_seconds:g} padded "
          f"s; load average {os.getloadavg()[0]:.2f} (other processes share the machine)")
    print(f"{'what (one core)':<44} {'audio-s/s':>10} {'repeats':>22} {'cores per GPU @6000':>20}")
    for name, fn in rows:
        if isinstance(fn, str):
            print(f"{name:<44} {fn}")
            continue
        rate, rates = timed(fn, args.repeats)
        print(f"{name:<44} {rate:>10.0f} {' '.join(f'{r:.0f}' for r in rates):>22} {GPU_RATE / rate:>20.1f}",
              flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
