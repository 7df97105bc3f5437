"""Length-bucketed batches bounded by padded audio seconds, shuffled per epoch, dealt out over DDP ranks."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


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
