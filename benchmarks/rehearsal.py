"""Benchmark (not a test): a dress rehearsal of the LibriSpeech 100h recipe on an N-hour corpus made from real speech.

    python benchmarks/rehearsal.py [--hours 0.5] [--dir /tmp/asr-rehearsal] [--steps 200] [--modes file,shard]
                                   [--batch-seconds 16] [--workers 2] [--shared ../shared/data]

1. Builds ``<dir>/LibriSpeech/{train-clean-100,dev-clean,dev-other,test-clean,test-other}/<spk>/<chap>/`` in
   LibriSpeech's layout (FLAC, ``<spk>-<chap>.trans.txt`` with upper-case transcripts) from the real CMU AN4 archive
   and the 7 LibriSpeech utterances of ``../shared/data``: every output utterance is 1-4 source utterances
   concatenated (their transcripts too), each piece speed-changed (0.85-1.15, by resampling) and gain-changed, so no
   two files are equal; durations are LibriSpeech-like (mostly 2-20 s, at most 30 s). The training subset comes from
   AN4's training part and the LibriSpeech samples, the four evaluation subsets (``--eval-minutes`` each) from AN4's
   test part. One process per core, one chapter (10 minutes of audio) at a time; a finished chapter is not rebuilt
   (a marker per chapter under ``<dir>/.built``), so a cut build continues; deterministic for a ``--seed``.
2. Runs the recipe's stages, each in a fresh process, timed, with its peak RSS (the largest single process of the
   stage, loader workers included, from ``wait4``): prepare (manifests of the existing copy, ``data.root``), the
   data check, ``python -m asr.shard`` (when the project has it), and ``--steps`` CPU training steps of the 100h
   recipe's model (``python -m asr.train recipe=librispeech-100h``; no validation, no evaluation) once per
   ``--modes`` entry: ``file`` (decoding from the manifest's files) and ``shard`` (``data.train_shards=...``).
3. Prints one table: stage, seconds, audio-s/s, peak RSS, padding and the share of time waiting for data. For the
   training rows those three come from a callback added to the run (:class:`StepClock`), over the steps after the
   first ``--warmup`` (whole-run wall seconds in the ``seconds`` column); the project's own ThroughputMonitor
   values (``perf/*`` in the run's metrics.csv, mean of its logging windows) are printed below as a cross-check.

The 100h recipe's 600 padded seconds a batch take minutes a step on a CPU; ``--batch-seconds`` (16 by default) keeps
``--hours 0.5`` with both modes near 10 minutes on 2 cores. The prepare stage starts from fresh manifests on every
run (the corpus is kept), and the corpus files are in the page cache right after the build: a cold disk is slower.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import multiprocessing as mp
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as L

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
SAMPLE_RATE = 16000
TRAIN_SUBSET = "train-clean-100"
EVAL_SUBSETS = ("dev-clean", "dev-other", "test-clean", "test-other")
SUBSETS = (TRAIN_SUBSET, *EVAL_SUBSETS)
# speakers of each subset are numbered from here (LibriSpeech's ids are integers too); chapters from 10 x that
FIRST_SPEAKER = {TRAIN_SUBSET: 100, "dev-clean": 5100, "dev-other": 5300, "test-clean": 5500, "test-other": 5700}
CHAPTER_SECONDS = 600.0  # train-clean-100: 585 chapters, ~10 min each
EVAL_CHAPTER_SECONDS = 60.0
CHAPTERS_PER_SPEAKER = 2
MAX_PIECES = 4
MAX_SECONDS = 30.0
SPEEDS = np.round(np.arange(0.85, 1.15 + 1e-9, 0.005), 3)  # 16000 * f is a multiple of 80: small resampling kernels
DEFAULT_BATCH_SECONDS = 16.0


def default_shared() -> Path:
    """``$ASR_SHARED_DATA``, else ``../shared/data`` beside the project."""
    return Path(os.environ.get("ASR_SHARED_DATA", ROOT.parent / "shared" / "data"))


# ----------------------------------------------------------------------------------------------------------------
# corpus builder


@dataclasses.dataclass(frozen=True)
class Source:
    """A source utterance: 16-bit samples at 16 kHz and its upper-case transcript."""

    id: str
    text: str
    samples: np.ndarray  # int16


@dataclasses.dataclass(frozen=True)
class ChapterSpec:
    """One chapter to build: its place in the corpus and how many seconds of audio it holds (at least)."""

    subset: str
    speaker: int
    chapter: int
    index: int
    seconds: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.speaker}-{self.chapter}"


@dataclasses.dataclass
class BuildStats:
    """What :func:`build_corpus` did: all chapters of the plan, those built now, and the audio seconds written."""

    root: Path
    chapters: int
    built: int
    seconds_written: float
    wall: float
    corpus_seconds: dict[str, float]

    @property
    def rate(self) -> float:
        return self.seconds_written / max(self.wall, 1e-9)


def _read_int16(path: Path) -> np.ndarray:
    import soundfile as sf

    data, sr = sf.read(str(path), dtype="int16", always_2d=True)
    if sr != SAMPLE_RATE:
        raise ValueError(f"{path}: {sr} Hz, the builder expects {SAMPLE_RATE} Hz sources")
    return np.ascontiguousarray(data[:, 0])


def extract_an4(archive: Path, work: Path) -> Path:
    """``archive`` extracted once into ``<work>/sources/<archive stem>/`` (marked done); returns the folder holding
    ``an4/``."""
    from asr.data.download import extract_tar

    target = work / "sources" / archive.name.replace(".tar.gz", "")
    mark = target / ".extracted"
    if not mark.exists() or mark.read_text() != str(archive.resolve()):
        if target.exists():
            shutil.rmtree(target)
        extract_tar(archive, target, progress=False)
        mark.write_text(str(archive.resolve()))
    return target


def load_sources(an4_archive: Path, work: Path, libri_dir: Path | None = None) -> tuple[list[Source], list[Source]]:
    """(training pool: AN4 train + the LibriSpeech samples, evaluation pool: AN4 test), sorted by id.

    The AN4 archive is extracted once into ``work``; utterances listed but absent (a cut of AN4) are skipped.
    """
    from asr.data.corpora.an4 import parse_transcription

    root = extract_an4(an4_archive, work) / "an4"
    pools: list[list[Source]] = []
    for split in ("train", "test"):
        texts = parse_transcription(root / "etc" / f"an4_{split}.transcription")
        pool = []
        for fid in (root / "etc" / f"an4_{split}.fileids").read_text().split():
            path, uid = root / "wav" / f"{fid}.sph", Path(fid).name
            if path.is_file() and texts.get(uid, "").strip():
                pool.append(Source(uid, " ".join(texts[uid].upper().split()), _read_int16(path)))
        pools.append(sorted(pool, key=lambda s: s.id))
    if libri_dir is not None and Path(libri_dir).is_dir():
        for trans in sorted(Path(libri_dir).glob("*/*/*/*.trans.txt")):
            for line in trans.read_text(encoding="utf-8").splitlines():
                uid, _, text = line.strip().partition(" ")
                flac = trans.parent / f"{uid}.flac"
                if flac.is_file() and text.strip():
                    pools[0].append(Source(uid, " ".join(text.upper().split()), _read_int16(flac)))
        pools[0].sort(key=lambda s: s.id)
    if not pools[0] or not pools[1]:
        raise ValueError(f"{an4_archive}: no usable AN4 training or test utterances")
    return pools[0], pools[1]


def plan_corpus(hours: float, eval_minutes: float, seed: int, chapter_seconds: float = CHAPTER_SECONDS,
                eval_chapter_seconds: float = EVAL_CHAPTER_SECONDS) -> list[ChapterSpec]:
    """The chapters of the corpus: ``hours`` of training audio in chapters of ``chapter_seconds`` (the last one takes
    the rest), ``eval_minutes`` in each evaluation subset (none with 0); two chapters per speaker."""
    specs = []
    for subset, total, size in ((TRAIN_SUBSET, hours * 3600, chapter_seconds),
                                *((s, eval_minutes * 60, eval_chapter_seconds) for s in EVAL_SUBSETS)):
        for i in range(max(0, math.ceil(total / size - 1e-9))):  # no chapter for 0 seconds
            speaker = FIRST_SPEAKER[subset] + i // CHAPTERS_PER_SPEAKER
            seconds = min(size, total - i * size)
            specs.append(ChapterSpec(subset, speaker, 10 * FIRST_SPEAKER[subset] + i, i, round(seconds, 3), seed))
    return specs


_POOLS: dict[str, list[Source]] = {}  # set before the worker processes fork (shared, not copied)
_RESAMPLERS: dict[float, object] = {}


def _speed(samples: np.ndarray, factor: float) -> np.ndarray:
    """int16 samples played ``factor`` times faster (tempo and pitch), as float32 in [-1, 1]."""
    import torch
    import torchaudio.transforms as T

    wav = torch.from_numpy(samples.astype(np.float32) / 32768.0)
    if factor == 1.0:
        return wav.numpy()
    if factor not in _RESAMPLERS:  # the kernel is made once per factor and process
        _RESAMPLERS[factor] = T.Resample(int(round(SAMPLE_RATE * factor)), SAMPLE_RATE)
    with torch.no_grad():
        return _RESAMPLERS[factor](wav).numpy()


def _target_seconds(rng: np.random.Generator) -> float:
    """A LibriSpeech-like duration: mostly 10-17 s, some short, a tail to 30 s."""
    if rng.random() < 0.12:
        return float(rng.uniform(2.0, 8.0))
    return float(np.clip(rng.normal(13.5, 4.0), 2.0, MAX_SECONDS - 2.0))


def synthesize(pool: Sequence[Source], rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One utterance: 1-4 pieces of ``pool``, each at its own speed and gain, short pauses between; (float32 samples
    at 16 kHz, the pieces' transcripts joined)."""
    target = _target_seconds(rng)
    parts: list[np.ndarray] = []
    texts: list[str] = []
    total = 0.0
    while len(texts) < MAX_PIECES and total < target:
        # of 3 random candidates, the one closest to the share of the target still missing per piece left: few
        # pieces still reach LibriSpeech's lengths from AN4's short utterances
        need = (target - total) / (MAX_PIECES - len(texts))
        gap = float(rng.uniform(0.15, 0.5)) if texts else 0.0
        choices = []
        for _ in range(3):
            src = pool[int(rng.integers(len(pool)))]
            factor = float(SPEEDS[int(rng.integers(len(SPEEDS)))])
            seconds = len(src.samples) / SAMPLE_RATE / factor + gap
            if total + seconds <= MAX_SECONDS:
                choices.append((abs(seconds - need), src.id, src, factor, seconds))
        if not choices:
            break
        _, _, src, factor, seconds = min(choices, key=lambda c: c[:2])
        piece = _speed(src.samples, factor)
        gain = 10 ** (float(rng.uniform(-9.0, 3.0)) / 20)
        peak = float(np.abs(piece).max()) or 1.0
        piece = piece * min(gain, 0.95 / peak)
        if gap:  # a pause: low noise, as between words in a recording, not digital silence
            parts.append((rng.standard_normal(int(gap * SAMPLE_RATE)) * 1e-4).astype(np.float32))
        parts.append(piece.astype(np.float32))
        texts.append(src.text)
        total += seconds
    return np.concatenate(parts), " ".join(texts)


def _chapter_dir(root: Path, spec: ChapterSpec) -> Path:
    return root / "LibriSpeech" / spec.subset / str(spec.speaker) / str(spec.chapter)


def _marker(root: Path, spec: ChapterSpec) -> Path:
    return root / ".built" / spec.subset / f"{spec.name}.json"


def chapter_record(root: Path, spec: ChapterSpec) -> dict | None:
    """The record of a finished chapter (``{"spec", "utterances": [{"id", "frames", "text"}]}``), or None."""
    mark = _marker(root, spec)
    if not mark.is_file():
        return None
    record = json.loads(mark.read_text())
    return record if record.get("spec") == dataclasses.asdict(spec) else None


def build_chapter(root: Path, spec: ChapterSpec) -> float:
    """Write one chapter's FLAC files and ``trans.txt``, then its marker; returns the audio seconds written."""
    import soundfile as sf
    import torch

    torch.set_num_threads(1)
    folder = _chapter_dir(root, spec)
    if folder.exists():
        shutil.rmtree(folder)  # a chapter cut short is built again from its start
    folder.mkdir(parents=True)
    pool = _POOLS["train" if spec.subset == TRAIN_SUBSET else "eval"]
    rng = np.random.default_rng([spec.seed, SUBSETS.index(spec.subset), spec.index])
    utts, written, n = [], 0.0, 0
    while written < spec.seconds:
        wav, text = synthesize(pool, rng)
        uid = f"{spec.name}-{n:04d}"
        sf.write(str(folder / f"{uid}.flac"), wav, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        utts.append({"id": uid, "frames": len(wav), "text": text})
        written += len(wav) / SAMPLE_RATE
        n += 1
    (folder / f"{spec.name}.trans.txt").write_text("".join(f"{u['id']} {u['text']}\n" for u in utts), "utf-8")
    mark = _marker(root, spec)
    mark.parent.mkdir(parents=True, exist_ok=True)
    tmp = mark.with_name(mark.name + ".tmp")
    tmp.write_text(json.dumps({"spec": dataclasses.asdict(spec), "utterances": utts}))
    os.replace(tmp, mark)
    return written


def _remove_unplanned(root: Path, specs: Sequence[ChapterSpec]) -> None:
    """Chapters of an earlier, larger plan in the same folder are deleted (with their markers)."""
    planned = {(s.subset, str(s.speaker), str(s.chapter)) for s in specs}
    for subset in SUBSETS:
        for chapter in sorted((root / "LibriSpeech" / subset).glob("*/*")):
            if chapter.is_dir() and (subset, chapter.parent.name, chapter.name) not in planned:
                shutil.rmtree(chapter)
                (root / ".built" / subset / f"{chapter.parent.name}-{chapter.name}.json").unlink(missing_ok=True)
                if not any(chapter.parent.iterdir()):
                    chapter.parent.rmdir()


def build_corpus(
    work: str | os.PathLike,
    hours: float,
    an4_archive: str | os.PathLike,
    libri_dir: str | os.PathLike | None = None,
    eval_minutes: float = 2.0,
    seed: int = 0,
    workers: int = 0,
    progress: bool = True,
    chapter_seconds: float = CHAPTER_SECONDS,
    eval_chapter_seconds: float = EVAL_CHAPTER_SECONDS,
) -> BuildStats:
    """Build (or finish) the corpus under ``<work>/LibriSpeech``; see the module's docstring.

    Args:
        work: the work folder (the corpus, the extracted AN4 and the chapter markers go here).
        hours: training audio (``train-clean-100``); each evaluation subset gets ``eval_minutes``.
        an4_archive: ``an4_sphere.tar.gz`` (the full corpus, or the tests' cut of it).
        libri_dir: the LibriSpeech samples (``.../LibriSpeech``) to add to the training pool, or None.
        seed: the same seed, hours and sources give the same files.
        workers: processes (0 = one per CPU).
        progress: a progress line on stderr.

    Returns:
        :class:`BuildStats` (seconds written now and their wall time, per-subset corpus seconds).
    """
    work = Path(work)
    start = time.perf_counter()
    specs = plan_corpus(hours, eval_minutes, seed, chapter_seconds, eval_chapter_seconds)
    _remove_unplanned(work, specs)
    todo = [s for s in specs if chapter_record(work, s) is None]
    written = 0.0
    if todo:
        _POOLS["train"], _POOLS["eval"] = load_sources(Path(an4_archive), work,
                                                       Path(libri_dir) if libri_dir else None)
        workers = min(workers or os.cpu_count() or 1, len(todo))
        todo.sort(key=lambda s: -s.seconds)  # long chapters first: the last ones to finish are short
        total = sum(s.seconds for s in todo)
        results = []
        if workers == 1:
            results_iter = (build_chapter(work, s) for s in todo)
            pool = None
        else:
            pool = mp.get_context("fork").Pool(workers)
            results_iter = pool.imap_unordered(_build_one, [(work, s) for s in todo])
        tty = sys.stderr.isatty()
        try:
            for seconds in results_iter:
                results.append(seconds)
                written += seconds
                # a line rewritten in place on a terminal, else one line per 10 % of the chapters
                if progress and (tty or len(results) % max(1, len(todo) // 10) == 0 or len(results) == len(todo)):
                    elapsed = time.perf_counter() - start
                    print(("\r" if tty else "") + f"build: {len(results)}/{len(todo)} chapters, {written / 3600:.2f}/"
                          f"{total / 3600:.2f} h, {written / elapsed:.0f} audio-s/s", end="" if tty else "\n",
                          file=sys.stderr, flush=True)
        finally:
            if pool is not None:
                pool.close()
                pool.join()
            _POOLS.clear()
        if progress and tty:
            print(file=sys.stderr)
    corpus = {s: 0.0 for s in SUBSETS}
    for spec in specs:
        record = chapter_record(work, spec)
        corpus[spec.subset] += sum(u["frames"] for u in record["utterances"]) / SAMPLE_RATE
    return BuildStats(work, len(specs), len(todo), written, time.perf_counter() - start, corpus)


def _build_one(args: tuple[Path, ChapterSpec]) -> float:
    return build_chapter(*args)


# ----------------------------------------------------------------------------------------------------------------
# stages


@dataclasses.dataclass
class StageResult:
    name: str
    seconds: float
    peak_rss_mb: float
    returncode: int
    log: Path
    audio_rate: float | None = None
    padding: float | None = None
    data_wait: float | None = None
    note: str = ""


def run_stage(name: str, cmd: Sequence[str], log: Path, env: dict[str, str] | None = None) -> StageResult:
    """``cmd`` in a fresh process (output to ``log``): wall seconds and the peak RSS of its largest
    process (``wait4``'s ru_maxrss covers the children it waited for: loader workers, header readers)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, **(env or {})})
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C: the stage goes too, not left running behind the benchmark
            proc.kill()
            proc.wait()
            raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    result = StageResult(name, seconds, usage.ru_maxrss / 1024, proc.returncode, log)
    if proc.returncode:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        print(f"[{name}] FAILED (exit {proc.returncode}), last lines of {log}:\n{tail}", flush=True)
    return result


class StepClock(L.Callback):
    """A Lightning callback (added to a run by a Hydra override, see :func:`train_command`): over the training steps
    after the first ``warmup``, the audio seconds trained per wall second, the share of padding in the batches and
    the share of wall time spent waiting for the next batch (from the end of one step, or an epoch's start, to the
    start of the next step). Writes them as JSON to ``out`` when the fit ends.

    Epoch ends (checkpoint writes) fall outside the timed intervals; the wait for an epoch's first batch (loader
    workers starting) falls inside.
    """

    def __init__(self, out: str, warmup: int = 5, sample_rate: int = SAMPLE_RATE) -> None:
        self.out, self.warmup, self.sample_rate = Path(out), warmup, sample_rate
        self.steps = self.timed_steps = 0
        self.audio = self.padded = self.wait = self.wall = 0.0
        self.last_end: float | None = None
        self.batch_start = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.last_end = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batch_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        self.steps += 1
        if self.steps > self.warmup and self.last_end is not None:
            self.timed_steps += 1
            self.wait += self.batch_start - self.last_end
            self.wall += now - self.last_end
            self.audio += float(batch.audio_lengths.sum()) / self.sample_rate
            self.padded += batch.audio.numel() / self.sample_rate
        self.last_end = now

    def on_fit_end(self, trainer, pl_module) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps({
            "steps": self.steps, "timed_steps": self.timed_steps, "audio_seconds": self.audio,
            "timed_wall": self.wall, "audio_sec_per_sec": self.audio / max(self.wall, 1e-9),
            "padding": 1 - self.audio / max(self.padded, 1e-9), "data_wait": self.wait / max(self.wall, 1e-9),
        }) + "\n")


def recipe_overrides(work: Path) -> list[str]:
    """The 100h recipe on the built copy (``data.root``), with its data and runs inside ``work``."""
    return ["recipe=librispeech-100h", f"data.root={work / 'LibriSpeech'}", f"paths.data_dir={work / 'data'}",
            f"paths.download_dir={work / 'downloads'}", f"paths.exp_dir={work / 'exp'}", "+prepare.progress=false"]


def shard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("asr.shard") is not None


def train_command(work: Path, mode: str, steps: int, batch_seconds: float, workers: int, warmup: int,
                  shards: Path) -> list[str]:
    """``python -m asr.train`` for ``steps`` CPU steps in fp32: no validation, no evaluation after the fit, no data
    check (its own stage), a :class:`StepClock` writing ``<run dir>/step_clock.json``."""
    run = work / "runs" / f"train-{mode}"
    cmd = [sys.executable, "-m", "asr.train", *recipe_overrides(work), f"hydra.run.dir={run}",
           f"trainer.max_steps={steps}", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true",
           "+trainer.limit_val_batches=0", "eval_manifests=null", "data_check=false", "checkpoint.every_n_minutes=null",
           "trainer.log_every_n_steps=10", "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
           f"data.max_batch_seconds={batch_seconds}", f"data.num_workers={workers}",
           "+callbacks.step_clock._target_=rehearsal.StepClock", f"+callbacks.step_clock.out={run / 'step_clock.json'}",
           f"+callbacks.step_clock.warmup={warmup}"]
    if mode == "shard":
        cmd.append(f"++data.train_shards={shards}")
    return cmd


def monitor_means(run: Path) -> dict[str, float]:
    """Means of the project's ThroughputMonitor values (``perf/*`` of ``<run>/logs/metrics.csv``) over its logging
    windows, the first one (warm-up) left out when there are others."""
    path = run / "logs" / "metrics.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for key in ("perf/audio_sec_per_sec", "perf/padding", "perf/data_wait"):
        values = [float(r[key]) for r in rows if r.get(key)]
        values = values[1:] if len(values) > 1 else values
        if values:
            out[key] = sum(values) / len(values)
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: Sequence[StageResult]) -> None:
    print(f"\n{'stage':<22} {'seconds':>9} {'audio-s/s':>10} {'peak RSS MB':>12} {'padding %':>10} "
          f"{'data-wait %':>12}  note")
    for r in rows:
        print(f"{r.name:<22} {r.seconds:>9.1f} {_fmt(r.audio_rate, '.1f'):>10} {r.peak_rss_mb:>12.0f} "
              f"{_fmt(None if r.padding is None else 100 * r.padding, '.1f'):>10} "
              f"{_fmt(None if r.data_wait is None else 100 * r.data_wait, '.1f'):>12}  {r.note}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=0.5, help="training audio of the corpus (100 for the note)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/asr-rehearsal"), help="work folder (corpus, runs)")
    ap.add_argument("--steps", type=int, default=200, help="training steps per mode")
    ap.add_argument("--modes", default="file,shard", help="comma-separated: file, shard")
    ap.add_argument("--batch-seconds", type=float, default=DEFAULT_BATCH_SECONDS,
                    help="padded seconds per training batch (the recipe's 600 is minutes a step on a CPU)")
    ap.add_argument("--workers", type=int, default=2, help="training loader processes (the recipe sets 6)")
    ap.add_argument("--warmup", type=int, default=5, help="first training steps left out of the rates")
    ap.add_argument("--eval-minutes", type=float, default=2.0, help="audio in each of the four evaluation subsets")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--build-workers", type=int, default=0, help="corpus builder processes (0 = one per CPU)")
    ap.add_argument("--shared", type=Path, default=default_shared(), help="the shared real speech (an4_sphere.tar.gz, "
                    "librispeech-samples/); default $ASR_SHARED_DATA or ../shared/data beside the project")
    ap.add_argument("--build-only", action="store_true", help="build the corpus and stop")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if bad := [m for m in modes if m not in ("file", "shard")]:
        ap.error(f"--modes: unknown mode(s) {bad}; use file and/or shard")
    archive = args.shared / "an4_sphere.tar.gz"
    if not archive.is_file():
        ap.error(f"{archive} not found: point --shared (or $ASR_SHARED_DATA) at the shared data folder")
    work = args.dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder {work}; {args.hours} h corpus, {args.steps} steps per mode {modes}, batch "
          f"{args.batch_seconds} padded s (recipe: 600), {args.workers} loader worker(s), {os.cpu_count()} CPUs, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}", flush=True)

    stats = build_corpus(work, args.hours, archive, args.shared / "librispeech-samples" / "LibriSpeech",
                         eval_minutes=args.eval_minutes, seed=args.seed, workers=args.build_workers)
    usage = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    corpus_s = stats.corpus_seconds[TRAIN_SUBSET]
    print(f"corpus: {stats.chapters} chapters ({stats.built} built now), train-clean-100 {corpus_s / 3600:.3f} h, "
          f"eval subsets {', '.join(f'{s} {stats.corpus_seconds[s] / 60:.1f} min' for s in EVAL_SUBSETS)}; "
          f"wrote {stats.seconds_written:.0f} audio-s in {stats.wall:.1f} s = {stats.rate:.0f} audio-s/s", flush=True)
    rows = [StageResult("build corpus", stats.wall, usage / 1024, 0, work, stats.rate if stats.built else None,
                        note=f"{stats.built} of {stats.chapters} chapters built now")]
    if args.build_only:
        print_table(rows)
        return 0

    all_s = sum(stats.corpus_seconds.values())
    logs = work / "logs"
    data = work / "data" / "librispeech"
    shutil.rmtree(data, ignore_errors=True)  # prepare from scratch each time (its markers would skip the work)
    common = recipe_overrides(work)
    prepare = [sys.executable, "-m", "asr.prepare", *common]
    r = run_stage("prepare", [*prepare, "stage=manifests", f"hydra.run.dir={work / 'runs' / 'prepare'}"],
                  logs / "prepare.log")
    r.audio_rate, r.note = all_s / r.seconds, "manifests of all 5 subsets (FLAC headers)"
    rows.append(r)
    if r.returncode:
        print_table(rows)
        return 1
    r = run_stage("data check", [*prepare, "stage=check", f"hydra.run.dir={work / 'runs' / 'check'}"],
                  logs / "check.log")
    r.audio_rate, r.note = all_s / r.seconds, "train + val + 4 eval manifests"
    rows.append(r)

    shards = work / "shards"
    failed = r.returncode != 0
    if "shard" in modes:
        if not shard_available():
            print("[shard] asr.shard is not in this checkout yet: shard stage and shard-mode training skipped")
            modes = [m for m in modes if m != "shard"]
        else:
            shutil.rmtree(shards, ignore_errors=True)
            r = run_stage("shard", [sys.executable, "-m", "asr.shard", f"manifest={data / 'train-100h.jsonl'}",
                                    f"out={shards}"], logs / "shard.log")
            r.audio_rate, r.note = corpus_s / r.seconds, "train-100h.jsonl -> tar shards"
            rows.append(r)
            if r.returncode:
                modes = [m for m in modes if m != "shard"]
                failed = True

    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    for mode in modes:
        cmd = train_command(work, mode, args.steps, args.batch_seconds, args.workers, args.warmup, shards)
        run = work / "runs" / f"train-{mode}"
        shutil.rmtree(run, ignore_errors=True)
        r = run_stage(f"train ({mode})", cmd, logs / f"train-{mode}.log", env)
        clock = run / "step_clock.json"
        if r.returncode == 0 and clock.is_file():
            c = json.loads(clock.read_text())
            r.audio_rate, r.padding, r.data_wait = c["audio_sec_per_sec"], c["padding"], c["data_wait"]
            r.note = f"{c['steps']} steps, rates over {c['timed_steps']} after {args.warmup}"
            m = monitor_means(run)
            if m:
                print(f"[train ({mode})] ThroughputMonitor (metrics.csv, mean of 10-step windows after the first): "
                      f"{m.get('perf/audio_sec_per_sec', float('nan')):.1f} audio-s/s, padding "
                      f"{100 * m.get('perf/padding', float('nan')):.1f} %, data wait "
                      f"{100 * m.get('perf/data_wait', float('nan')):.1f} %")
        else:
            failed = True
        rows.append(r)
    print_table(rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
