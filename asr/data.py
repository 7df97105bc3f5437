"""Manifests, audio loading, length-bucketed batching and the Lightning DataModule.

A manifest is JSON Lines with NeMo's keys, one utterance a line::

    {"audio_filepath": "wav/a.sph", "duration": 2.3, "text": "yes", "id": "an251-fash-b", "speaker": "fash"}

Relative paths are relative to the manifest's folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytorch_lightning as L
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch.utils.data import DataLoader, Dataset, Sampler

from asr.text import Tokenizer, normalize_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Utterance:
    """One line of a manifest."""

    audio_filepath: str
    duration: float
    text: str
    id: str = ""
    speaker: str = ""


def read_manifest(path: str | os.PathLike) -> list[Utterance]:
    """Read a JSONL manifest; relative audio paths are resolved against the manifest's folder.

    Raises:
        FileNotFoundError: the manifest does not exist (the message says how to make one).
        ValueError: a line is not valid JSON or lacks ``audio_filepath``/``duration``/``text``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"manifest {path} does not exist; run the recipe's prepare stage first "
            f"(`python -m asr.prepare recipe=<name> stage=all`, e.g. recipe=an4) or point the "
            f"data.*_manifest settings at your own JSONL files"
        )
    base = path.parent
    utts = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                audio = Path(d["audio_filepath"])
                utts.append(
                    Utterance(
                        audio_filepath=str(audio if audio.is_absolute() else base / audio),
                        duration=float(d["duration"]),
                        text=str(d["text"]),
                        id=str(d.get("id", d["audio_filepath"])),
                        speaker=str(d.get("speaker", "")),
                    )
                )
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise ValueError(
                    f"{path}:{lineno}: not a manifest line ({err.__class__.__name__}: {err}); each line must be "
                    f'a JSON object with "audio_filepath", "duration" and "text"'
                ) from None
    return utts


def write_manifest(path: str | os.PathLike, utterances: Sequence[Utterance]) -> None:
    """Write a JSONL manifest atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for u in utterances:
            f.write(json.dumps(asdict(u), ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_audio(path: str | os.PathLike, sample_rate: int = 16000) -> torch.Tensor:
    """Decode an audio file (anything libsndfile reads: SPHERE, FLAC, WAV, ...) to mono float32.

    Multi-channel audio is averaged to mono; other sample rates are resampled to ``sample_rate``.

    Returns:
        (S,) float32 waveform in [-1, 1].
    """
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (S, C)
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]))
    if sr != sample_rate:
        wav = AF.resample(wav, sr, sample_rate)
    return wav


def probe_audio(path: str | os.PathLike) -> tuple[sf._SoundFileInfo | None, str | None]:
    """Header check of an audio file, plus a read of its last samples: ``(info, None)`` or ``(None, reason)``.

    Catches what ``soundfile.info`` alone lets through: a file with no samples, a SPHERE file shorter than
    its header's ``sample_count``, a WAV whose chunk sizes disagree with the file, and a compressed file
    (FLAC) whose end does not decode. Only the header and the last few hundred samples are read.
    """
    try:
        info = sf.info(str(path))
        if info.frames == 0:
            return None, "audio has no samples"
        if "should be" in info.extra_info:  # libsndfile's note on a WAV/AIFF chunk longer than the file
            bad = next(ln for ln in info.extra_info.splitlines() if "should be" in ln)
            return None, f"truncated audio: header and file size disagree ({bad.strip()})"
        if info.format == "NIST":
            with open(path, "rb") as f:
                head = f.read(1024).decode("ascii", "replace")
            declared = next((int(ln.split()[-1]) for ln in head.splitlines() if ln.startswith("sample_count")), None)
            if declared is not None and declared > info.frames:
                return None, f"truncated audio: header says {declared} samples, file holds {info.frames}"
        try:
            with sf.SoundFile(str(path)) as f:
                f.seek(max(0, f.frames - 256))
                tail = f.read(256, dtype="float32")
            ending = None if len(tail) == min(256, info.frames) else f"{len(tail)} of the last 256 samples read"
        except (sf.LibsndfileError, RuntimeError) as err:  # the header opened: the file ends early
            ending = f"libsndfile: {err}"
        if ending:
            return None, f"truncated audio: {info.frames} samples in the header, the end does not decode ({ending})"
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, StopIteration) as err:
        return None, f"unreadable audio: {err}"
    return info, None


def ctc_min_frames(ids: Sequence[int]) -> int:
    """Fewest output frames CTC needs for a label: one per token, plus a blank between each repeated pair."""
    return len(ids) + sum(a == b for a, b in zip(ids[:-1], ids[1:], strict=True))


class Batch(NamedTuple):
    """A padded batch of utterances.

    audio: (B, S) float waveforms, zero-padded; audio_lengths: (B,) samples;
    targets: (B, L) token ids, zero-padded; target_lengths: (B,); ids: utterance ids;
    dropped: ``(id, reason)`` of utterances whose audio failed to load (not in the batch).
    """

    audio: torch.Tensor
    audio_lengths: torch.Tensor
    targets: torch.Tensor
    target_lengths: torch.Tensor
    ids: list[str]
    dropped: tuple[tuple[str, str], ...] = ()


class LoadFailure(NamedTuple):
    """What :class:`AudioDataset` yields for an utterance whose audio cannot be used."""

    id: str
    reason: str


class AudioDataset(Dataset):
    """Utterances -> (waveform, token ids, id); decoding happens here, features on the model's device.

    With ``tokenizer=None`` the token ids are empty (decoding only needs audio). With ``speed_perturb``
    (e.g. ``[0.9, 1.0, 1.1]``) each read picks one factor at random and resamples the waveform so it
    plays that much faster (tempo and pitch, as Kaldi's ``sox speed``). With ``cache`` each decoded waveform, and
    each speed-perturbed copy of it, is kept in memory: later reads skip the file, the decoder and the resampler.
    :meth:`fill_cache` fills it up front in this process, so loader workers forked afterwards share it.
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        tokenizer: Tokenizer | None,
        sample_rate: int = 16000,
        speed_perturb: Sequence[float] | None = None,
        cache: bool = False,
    ) -> None:
        self.utterances = list(utterances)
        # index -> decoded waveform; (index, factor) -> that waveform at speed ``factor``
        self.cache: dict[int | tuple[int, float], torch.Tensor] | None = {} if cache else None
        self.tokenizer = tokenizer
        self.sample_rate = sample_rate
        self.speed_perturb = [float(f) for f in speed_perturb or []]
        for f in self.speed_perturb:
            if not 0.5 <= f <= 2.0:
                raise ValueError(f"data.speed_perturb factors must lie in [0.5, 2], got {f}")

    def __len__(self) -> int:
        return len(self.utterances)

    def _decoded(self, index: int) -> torch.Tensor | LoadFailure:
        """Utterance ``index``'s waveform at ``sample_rate``, from the cache when it holds it."""
        wav = self.cache.get(index) if self.cache is not None else None
        if wav is not None:
            return wav
        u = self.utterances[index]
        try:
            wav = load_audio(u.audio_filepath, self.sample_rate)
        except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as err:
            return LoadFailure(u.id, f"{u.audio_filepath}: {err.__class__.__name__}: {err}")
        if wav.numel() == 0:
            return LoadFailure(u.id, f"{u.audio_filepath}: no samples")
        if not bool(torch.isfinite(wav).all()):
            return LoadFailure(u.id, f"{u.audio_filepath}: NaN or inf samples")
        if self.cache is not None:
            self.cache[index] = wav
        return wav

    def _perturbed(self, index: int, wav: torch.Tensor, factor: float) -> torch.Tensor:
        """``wav`` played ``factor`` times faster: read as if recorded at sample_rate * factor, brought back to
        sample_rate, so 1/factor as long (cached with the waveform when the cache is on)."""
        out = self.cache.get((index, factor)) if self.cache is not None else None
        if out is None:
            out = AF.resample(wav, int(round(self.sample_rate * factor)), self.sample_rate)
            if self.cache is not None:
                self.cache[(index, factor)] = out
        return out

    def fill_cache(self) -> None:
        """Decode every utterance, and resample it to each speed of ``speed_perturb``, into the cache now.

        Done in the main process before the loader starts, the loader's worker processes (forked) share these
        tensors instead of each decoding and resampling on its own: on 2 CPU cores that work would otherwise
        take turns with the model's steps. Unreadable files stay out and fail on their reads as before.
        """
        if self.cache is None:
            raise ValueError("fill_cache needs a dataset made with cache=True (data.cache_audio=true)")
        start = time.perf_counter()
        speeds = [f for f in self.speed_perturb if f != 1.0]
        for index in range(len(self)):
            wav = self._decoded(index)
            if isinstance(wav, LoadFailure):
                continue
            for factor in speeds:
                self._perturbed(index, wav, factor)
        nbytes = sum(t.numel() * t.element_size() for t in self.cache.values())
        log.info("cached %d utterances%s in memory: %.0f MB, %.1f s", len(self),
                 f" at speeds {[1.0, *speeds]}" if speeds else "", nbytes / 2**20, time.perf_counter() - start)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str] | LoadFailure:
        """(waveform, token ids, id), or a :class:`LoadFailure` when the audio cannot be used.

        A file that went missing, is corrupt or truncated, or decodes to no or non-finite samples must not
        kill a long run: ``collate`` drops it from its batch and lists it in ``Batch.dropped``.
        """
        u = self.utterances[index]
        wav = self._decoded(index)
        if isinstance(wav, LoadFailure):
            return wav
        if self.speed_perturb:
            factor = random.choice(self.speed_perturb)
            if factor != 1.0:
                wav = self._perturbed(index, wav, factor)
        ids = self.tokenizer.encode(normalize_text(u.text)) if self.tokenizer is not None else []
        tokens = torch.tensor(ids, dtype=torch.long)
        return wav, tokens, u.id


def collate(items: Sequence[tuple[torch.Tensor, torch.Tensor, str] | LoadFailure]) -> Batch:
    """Pad waveforms and targets into a :class:`Batch`; failed loads go to ``Batch.dropped`` (may leave B = 0)."""
    dropped = tuple((f.id, f.reason) for f in items if isinstance(f, LoadFailure))
    items = [it for it in items if not isinstance(it, LoadFailure)]
    if not items:
        empty = torch.zeros(0, dtype=torch.long)
        return Batch(torch.zeros(0, 0), empty, torch.zeros(0, 1, dtype=torch.long), empty, [], dropped)
    wavs, tokens, ids = zip(*items, strict=True)
    audio_lengths = torch.tensor([w.numel() for w in wavs], dtype=torch.long)
    target_lengths = torch.tensor([t.numel() for t in tokens], dtype=torch.long)
    audio = torch.zeros(len(wavs), int(audio_lengths.max()))
    targets = torch.zeros(len(tokens), max(1, int(target_lengths.max())), dtype=torch.long)
    for i, (w, t) in enumerate(zip(wavs, tokens, strict=True)):
        audio[i, : w.numel()] = w
        targets[i, : t.numel()] = t
    return Batch(audio, audio_lengths, targets, target_lengths, list(ids), dropped)


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length utterances, bounded by padded audio seconds, DDP-aware.

    Utterances are split by duration into ``num_buckets`` equal-count buckets. Each epoch, the order within
    each bucket and the order of the batches are shuffled with ``seed + epoch``, so every epoch differs but
    every run (and every rank) sees the same sequence. A batch holds as many utterances as fit in
    ``max_batch_seconds`` of *padded* audio (longest utterance x count), so memory is bounded.

    Under DDP each rank takes every ``world_size``-th batch; the batch list is first trimmed (training) or
    wrapped (evaluation) to a multiple of the world size, so all ranks run the same number of steps.
    Rank and world size are read from ``torch.distributed`` when it is initialised, else from the arguments.

    Args:
        durations: seconds per utterance, in dataset order.
        max_batch_seconds: bound on longest-duration x batch-size.
        num_buckets: number of duration buckets (1 = global shuffle, padding grows).
        shuffle: shuffle within buckets and across batches each epoch.
        drop_last: under DDP, drop the batches that do not divide evenly (else wrap around).
        seed: base seed of the per-epoch shuffle.
        num_replicas, rank: override the distributed world (for tests).
    """

    def __init__(
        self,
        durations: Sequence[float],
        max_batch_seconds: float,
        num_buckets: int = 20,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if max_batch_seconds <= 0:
            raise ValueError(f"data.max_batch_seconds must be > 0, got {max_batch_seconds}")
        self.durations = np.asarray(durations, dtype=np.float64)
        self.max_batch_seconds = float(max_batch_seconds)
        self.num_buckets = max(1, int(num_buckets))
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0
        self._num_replicas = num_replicas
        self._rank = rank
        order = np.argsort(self.durations, kind="stable")
        self._buckets = [b for b in np.array_split(order, self.num_buckets) if len(b)]

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of each epoch."""
        self.epoch = epoch

    @property
    def world(self) -> tuple[int, int]:
        """(num_replicas, rank) in force."""
        if self._num_replicas is not None:
            return self._num_replicas, self._rank or 0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        return 1, 0

    def _all_batches(self) -> list[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        batches: list[list[int]] = []
        for bucket in self._buckets:
            idx = list(bucket)
            if self.shuffle:
                rng.shuffle(idx)
            batch: list[int] = []
            longest = 0.0
            for i in idx:
                d = float(self.durations[i])
                if batch and max(longest, d) * (len(batch) + 1) > self.max_batch_seconds:
                    batches.append(batch)
                    batch, longest = [], 0.0
                batch.append(int(i))
                longest = max(longest, d)
            if batch:
                batches.append(batch)
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def _rank_batches(self) -> list[list[int]]:
        batches = self._all_batches()
        world, rank = self.world
        if world > 1:
            if self.drop_last:
                batches = batches[: len(batches) // world * world]
            else:
                n = math.ceil(len(batches) / world) * world
                batches = batches + batches[: n - len(batches)]
            batches = batches[rank::world]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._rank_batches()

    def __len__(self) -> int:
        return len(self._rank_batches())


class ASRDataModule(L.LightningDataModule):
    """Train/validation/test loaders over JSONL manifests.

    Args:
        tokenizer: encodes transcripts; utterances with characters outside its vocabulary are dropped
            (and counted in the log).
        train_manifest, val_manifest, test_manifest: JSONL paths (test is optional).
        sample_rate: audio is resampled to this rate.
        max_batch_seconds: padded seconds per training batch (see :class:`BucketBatchSampler`).
        eval_batch_seconds: the same for validation/test batches (no gradients, so larger).
        num_buckets: duration buckets of the sampler.
        min_duration, max_duration: training utterances outside this range (seconds) are dropped.
        num_workers: loader processes (0 = decode in the main process).
        speed_perturb: speed factors drawn per training utterance and read (e.g. ``[0.9, 1.0, 1.1]``).
        cache_audio: decode the training audio, and its speed-perturbed copies, into memory once at setup
            (shared with the loader workers): no epoch reads, decodes or resamples a file again. ~4 MB a
            minute of 16 kHz audio per speed; AN4 with 3 speeds ~0.5 GB. For small corpora only.
        seed: seed of the per-epoch shuffle.
        output_frames: samples -> model output frames ((N,) tensors); when given, training utterances too
            short for their label under CTC (frames < :func:`ctc_min_frames`) are dropped and counted,
            as they would give an infinite loss.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        train_manifest: str,
        val_manifest: str,
        test_manifest: str | None = None,
        sample_rate: int = 16000,
        max_batch_seconds: float = 60.0,
        eval_batch_seconds: float = 200.0,
        num_buckets: int = 20,
        min_duration: float = 0.1,
        max_duration: float = 30.0,
        num_workers: int = 1,
        speed_perturb: Sequence[float] | None = None,
        cache_audio: bool = False,
        seed: int = 0,
        output_frames: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.speed_perturb = list(speed_perturb or [])
        self.cache_audio = cache_audio
        self.tokenizer = tokenizer
        self.output_frames = output_frames
        self.train_manifest = train_manifest
        self.val_manifest = val_manifest
        self.test_manifest = test_manifest
        self.sample_rate = sample_rate
        self.max_batch_seconds = max_batch_seconds
        self.eval_batch_seconds = eval_batch_seconds
        self.num_buckets = num_buckets
        self.min_duration = min_duration
        self.max_duration = max_duration
        self.num_workers = num_workers
        self.seed = seed
        self.datasets: dict[str, AudioDataset] = {}
        # utterances dropped from the manifests, with the reason: {"id", "split", "manifest", "reason"}
        self.rejected: list[dict[str, str]] = []

    def _load(self, manifest: str, split: str, filter_duration: bool, train: bool = False) -> AudioDataset:
        utts = read_manifest(manifest)
        kept: list[Utterance] = []
        dropped: dict[str, list[str]] = {"text": [], "duration": [], "ctc": []}
        frames = None
        if filter_duration and self.output_frames is not None:
            samples = torch.tensor([round(u.duration * self.sample_rate) for u in utts], dtype=torch.long)
            frames = self.output_frames(samples).tolist()
        for i, u in enumerate(utts):
            text = normalize_text(u.text)
            if not text or self.tokenizer.unknown_chars(text):
                unknown = "".join(sorted(self.tokenizer.unknown_chars(text)))
                reason, why = "text", f"characters outside the tokenizer: {unknown!r}" if text else "empty text"
            elif filter_duration and not (self.min_duration <= u.duration <= self.max_duration):
                reason, why = "duration", f"duration {u.duration} s outside data.min_duration..data.max_duration"
            elif frames is not None and frames[i] < (need := ctc_min_frames(self.tokenizer.encode(text))):
                reason, why = "ctc", f"too short for its label under CTC ({frames[i]} frames < {need})"
            else:
                kept.append(u)
                continue
            dropped[reason].append(u.id)
            self.rejected.append({"id": u.id, "split": split, "manifest": str(manifest), "reason": why})
        for reason, what in (
            ("ctc", "too short for their label under CTC after subsampling (they would give an infinite loss)"),
            ("text", "with empty text or characters outside the tokenizer"),
            ("duration", f"outside data.min_duration..data.max_duration ({self.min_duration}..{self.max_duration} s)"),
        ):
            ids = dropped[reason]
            if ids:
                log.warning("%s (%s): dropped %d utterances %s: %s%s", manifest, split, len(ids), what,
                            ", ".join(ids[:20]), " ..." if len(ids) > 20 else "")
        if not kept:
            raise ValueError(f"{split} manifest {manifest} has no usable utterances (of {len(utts)})")
        return AudioDataset(kept, self.tokenizer, self.sample_rate, self.speed_perturb if train else None,
                            cache=self.cache_audio and train)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.datasets["train"] = self._load(
                self.train_manifest, "train", filter_duration=True, train=True
            )
            if self.cache_audio:
                self.datasets["train"].fill_cache()
        if stage in (None, "fit", "validate"):
            self.datasets["val"] = self._load(self.val_manifest, "val", filter_duration=False)
        if stage in (None, "test") and self.test_manifest:
            self.datasets["test"] = self._load(self.test_manifest, "test", filter_duration=False)

    def _loader(self, split: str, train: bool) -> DataLoader:
        ds = self.datasets[split]
        sampler = BucketBatchSampler(
            [u.duration for u in ds.utterances],
            self.max_batch_seconds if train else self.eval_batch_seconds,
            # evaluation batches are cut from one sorted list: least padding, same batches every time
            num_buckets=self.num_buckets if train else 1,
            shuffle=train,
            drop_last=train,
            seed=self.seed,
        )
        return DataLoader(
            ds,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            # each DataLoader iterator draws a seed from its generator: evaluation loaders get their own, so
            # validating (or not, see validate_from) leaves the training run's random numbers as they were
            generator=None if train else torch.Generator(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
