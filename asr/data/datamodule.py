"""The Lightning DataModule: train/validation/test loaders over JSONL manifests."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import pytorch_lightning as L
import torch
from torch.utils.data import DataLoader

from asr.data.augment import AudioAugment
from asr.data.dataset import AudioDataset, collate
from asr.data.filter import KINDS, UtteranceFilter
from asr.data.manifest import ManifestTable, Utterance
from asr.data.sampler import BucketBatchSampler
from asr.data.shard_dataset import ShardDataset
from asr.data.shard_loader import ShardBatchSampler, ShardIndex
from asr.text import Tokenizer

log = logging.getLogger(__name__)


class ASRDataModule(L.LightningDataModule):
    """Train/validation/test loaders over JSONL manifests.

    Args:
        tokenizer: encodes transcripts; training utterances it cannot encode are dropped, logged.
        train_manifest, val_manifest, test_manifest: JSONL paths (test is optional).
        sample_rate: audio is resampled to this rate.
        max_batch_seconds: padded seconds per training batch (see :class:`BucketBatchSampler`).
        eval_batch_seconds: the same for validation/test batches (no gradients, so larger).
        num_buckets: duration buckets of the sampler.
        min_duration, max_duration: training utterances outside this range (seconds) are dropped.
        num_workers: loader processes (0 = decode in the main process).
        speed_perturb: speed factors, one drawn per training utterance and read.
        cache_audio: decode the training audio, at every speed, into memory once at setup (shared
            with the loader workers); 4 bytes a sample per speed: for small corpora only.
        seed: seed of the per-epoch shuffle.
        output_frames: (N,) samples -> (N,) model output frames; when given, training utterances
            too short for their label under CTC are dropped (:mod:`asr.data.filter`).
        extra_tokenizers: other tokenizers every label must fit (the intermediate CTC's own units).
        train_shards: train from the tar shards in this folder (``python -m asr.shard``) instead of
            ``train_manifest``; validation and test stay on their manifests.
        shard_url: where the shards' tars are read from, a template with ``{name}``; ``None``:
            beside ``index.json`` in ``train_shards``.
        shuffle_buffer: with shards, the utterances a loader worker sorts into batches together.
        worker_start: how loader workers start: ``fork``, ``forkserver`` or ``spawn``; ``None``:
            the platform's default (fork on Linux, which shares ``cache_audio``'s memory).
        augment: waveform augmentation of training reads (noise, reverberation, non-speech:
            :mod:`asr.data.augment`); validation and test stay clean.
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
        extra_tokenizers: Sequence[Tokenizer] = (),
        train_shards: str | None = None,
        shard_url: str | None = None,
        shuffle_buffer: int = 500,
        worker_start: str | None = None,
        augment: AudioAugment | None = None,
    ) -> None:
        super().__init__()
        self.augment = augment
        if worker_start not in (None, "fork", "forkserver", "spawn"):
            raise ValueError(f"data.worker_start must be null, fork, forkserver or spawn, "
                             f"got {worker_start!r}")
        self.worker_start = worker_start
        if train_shards and cache_audio:
            raise ValueError("data.cache_audio=true reads the training manifest's files; "
                             "it does not apply to data.train_shards: set one of them")
        self.train_shards, self.shard_url, self.shuffle_buffer = (train_shards, shard_url,
                                                                  shuffle_buffer)
        self.speed_perturb = list(speed_perturb or [])
        self.cache_audio = cache_audio
        self.tokenizer = tokenizer
        self.filter = UtteranceFilter([tokenizer, *extra_tokenizers], output_frames, sample_rate,
                                      min_duration, max_duration)
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
        # utterances dropped, with the reason: {"id", "split", "manifest", "reason"}
        self.rejected: list[dict[str, str]] = []
        # (epoch, batches trained) from a checkpoint
        self._resume_at: tuple[int, int] | None = None

    def _load(self, manifest: str, split: str, train: bool = False) -> AudioDataset:
        """A manifest's utterances. Training keeps the usable ones (:mod:`asr.data.filter`) and
        lists the others in :attr:`rejected`; validation and test keep every utterance, as
        evaluation scores them (one whose text a tokenizer cannot encode counts in the WER, not
        in the loss)."""
        dropped: dict[str, list[str]] = {kind: [] for kind in KINDS}
        seen = 0

        def keep(utts: list[Utterance]) -> list[bool]:
            nonlocal seen
            seen += len(utts)
            if not train:
                return [True] * len(utts)
            verdicts = self.filter.rejects(utts, check_duration=True, check_ctc=True)
            for u, rejected in zip(utts, verdicts, strict=True):
                if rejected is not None:
                    kind, why = rejected
                    dropped[kind].append(u.id)
                    self.rejected.append({"id": u.id, "split": split, "manifest": str(manifest),
                                          "reason": why})
            return [rejected is None for rejected in verdicts]

        # the kept lines as offsets into the manifest: no Python object per utterance
        kept = ManifestTable.read(manifest, keep)
        for kind, ids in dropped.items():
            if ids:
                log.warning("%s (%s): dropped %d utterances %s: %s%s", manifest, split, len(ids),
                            KINDS[kind], ", ".join(ids[:20]), " ..." if len(ids) > 20 else "")
        if not len(kept):
            raise ValueError(f"{split} manifest {manifest} has no usable utterances (of {seen})")
        if train:
            return AudioDataset(kept, self.filter.tokenizers, self.sample_rate, self.speed_perturb,
                                cache=self.cache_audio, augment=self.augment)
        return AudioDataset(kept, self.tokenizer, self.sample_rate, strict_labels=False)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_shards:
            self.datasets["train"] = ShardDataset(ShardIndex(self.train_shards, self.shard_url),
                                                  self.filter, self.sample_rate, self.speed_perturb,
                                                  self.augment)
        elif stage in (None, "fit"):
            self.datasets["train"] = self._load(self.train_manifest, "train", train=True)
            if self.cache_audio:
                self.datasets["train"].fill_cache()
        if stage in (None, "fit", "validate"):
            self.datasets["val"] = self._load(self.val_manifest, "val")
        if stage in (None, "test") and self.test_manifest:
            self.datasets["test"] = self._load(self.test_manifest, "test")

    def _batch_sampler(self, split: str, train: bool) -> BucketBatchSampler | ShardBatchSampler:
        ds = self.datasets[split]
        if isinstance(ds, ShardDataset):
            return ShardBatchSampler(ds.index, self.max_batch_seconds, self.num_workers,
                                     self.shuffle_buffer, self.min_duration, self.max_duration,
                                     self.seed)
        return BucketBatchSampler(
            ds.durations,
            self.max_batch_seconds if train else self.eval_batch_seconds,
            # evaluation batches are cut from one sorted list: least padding, same batches always
            num_buckets=self.num_buckets if train else 1,
            shuffle=train,
            drop_last=train,
            seed=self.seed,
            draw_seeds=train,
        )

    def _loader(self, split: str, train: bool) -> DataLoader:
        ds = self.datasets[split]
        sampler = self._batch_sampler(split, train)
        if train and self._resume_at is not None:
            sampler.resume(*self._resume_at)
            self._resume_at = None
        return DataLoader(
            ds,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            multiprocessing_context=self.worker_start if self.num_workers > 0 else None,
            pin_memory=torch.cuda.is_available(),
            # each DataLoader iterator draws a seed from its generator; with their own, the loaders
            # leave the model's random numbers (dropout, SpecAugment) alone, validating or not
            generator=torch.Generator().manual_seed(self.seed),
        )

    def whole_loader(self, split: str) -> DataLoader:
        """Every utterance of the ``val`` or ``test`` split, for this process alone (not shared
        out over ranks), batched as ``asr.evaluate`` batches a manifest."""
        ds = self.datasets[split]
        sampler = BucketBatchSampler(ds.durations, self.eval_batch_seconds, num_buckets=1,
                                     shuffle=False, drop_last=False, num_replicas=1, rank=0)
        return DataLoader(ds, batch_sampler=sampler, collate_fn=collate)

    def state_dict(self) -> dict[str, int]:
        """Where training stands, saved with every checkpoint: ``{"epoch", "batches_done",
        "world_size", "num_workers"}`` (the next epoch and 0 at an epoch's end, which
        ``trainer.limit_train_batches`` may bring early; the shards' plan needs the last two)."""
        trainer = self.trainer
        if trainer is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        streams = {"world_size": trainer.world_size, "num_workers": self.num_workers}
        if done >= trainer.num_training_batches:
            return {"epoch": trainer.current_epoch + 1, "batches_done": 0, **streams}
        return {"epoch": trainer.current_epoch, "batches_done": done, **streams}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """The training loader built next continues that epoch after its trained batches, in order.

        Lightning restores a DataModule before it first asks for the training loader (the
        learning-rate schedule asks early), so no batch is drawn from the wrong place.
        """
        if state:
            self._resume_at = (int(state["epoch"]), int(state["batches_done"]))
            streams = (state.get("world_size"), state.get("num_workers"))
            if self.train_shards and self.trainer is not None and streams != (
                    self.trainer.world_size, self.num_workers):
                log.warning("resuming shard training with %d ranks x %d loader workers, saved "
                            "with %s x %s: the shards are dealt to the streams anew, so the rest "
                            "of this epoch is not the batches the run would have trained",
                            self.trainer.world_size, self.num_workers, *streams)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
