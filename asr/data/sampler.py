"""Length-bucketed batches bounded by padded audio seconds: shuffled per epoch, the same bucket
on every DDP rank at each step, resumable mid-epoch. See docs/data.md."""

from __future__ import annotations

import random
from array import array
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

Item = int | tuple[int, int]  # an utterance index, or (index, seed of its augmentation draws)
BLOCK = 1 << 16  # utterances whose durations are packed into batches at a time


class _Batches(Sequence[list[int]]):
    """Batches as slices of one array of utterance indices: batch ``k`` is
    ``order[starts[k]:stops[k]]`` (a few arrays, not a Python int per utterance)."""

    def __init__(self, order: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> None:
        self.order, self.starts, self.stops = order, starts, stops

    @staticmethod
    def concat(parts: Sequence[_Batches]) -> _Batches:
        """The batches of ``parts`` (slices of one ``order``) one after the other."""
        assert all(p.order is parts[0].order for p in parts)
        return _Batches(parts[0].order, np.concatenate([p.starts for p in parts]),
                        np.concatenate([p.stops for p in parts]))

    def take(self, ids: np.ndarray) -> _Batches:
        """Batches ``ids``, in that order."""
        return _Batches(self.order, self.starts[ids], self.stops[ids])

    def singletons(self) -> _Batches:
        """Each utterance of these batches as a batch of its own, in order."""
        order = np.concatenate([self.indices(k) for k in range(len(self))])
        return _Batches(order, np.arange(len(order)), np.arange(1, len(order) + 1))

    def indices(self, k: int) -> np.ndarray:
        """Batch ``k`` as an array."""
        return self.order[self.starts[k]: self.stops[k]]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, k: int) -> list[int]:
        return self.indices(k).tolist()


class EpochBatchSampler(Sampler[list]):
    """What the training batch samplers share: the epoch Lightning sets, a resume point, the world.

    Subclasses set ``epoch``, ``start``, ``_num_replicas`` and ``_rank`` and define ``__len__``.
    """

    epoch: int
    start: int  # batches of this epoch already trained (set by resume, used by the next iteration)
    _num_replicas: int | None
    _rank: int | None

    @property
    def sampler(self) -> EpochBatchSampler:
        """Lightning calls ``set_epoch`` on ``loader.batch_sampler.sampler`` (torch's
        ``BatchSampler``'s index sampler); this batch sampler orders the indices itself."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of each epoch."""
        if epoch != self.epoch:
            self.start = 0
        self.epoch = epoch

    def resume(self, epoch: int, batches_done: int) -> None:
        """Continue ``epoch`` after its first ``batches_done`` batches (the next epoch when it has
        no more)."""
        self.epoch, self.start = epoch, batches_done
        if batches_done >= len(self):
            self.epoch, self.start = epoch + 1, 0

    @property
    def world(self) -> tuple[int, int]:
        """(num_replicas, rank) in force."""
        if self._num_replicas is not None:
            return self._num_replicas, self._rank or 0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        return 1, 0


class BucketBatchSampler(EpochBatchSampler):
    """Batches of similar-length utterances bounded by padded audio seconds; DDP-aware, resumable.

    Buckets of equal count by duration, shuffled with ``seed + epoch``; a batch holds as many
    utterances as fit in ``max_batch_seconds`` of padded audio. Under DDP every rank gets a batch
    of the same bucket at each step; a training epoch always has epoch 0's length. How batches are
    packed, dealt to ranks and resumed: see docs/data.md.

    Args:
        durations: seconds per utterance, in dataset order.
        max_batch_seconds: bound on longest-duration x batch-size.
        num_buckets: number of duration buckets (1 = global shuffle, padding grows).
        shuffle: shuffle within buckets and across batches each epoch.
        drop_last: under DDP, leave out the batches that do not fill a group of ranks (training),
            else deal out all of them (evaluation; ranks may differ by one batch).
        seed: base seed of the per-epoch shuffle.
        draw_seeds: yield ``(index, seed)`` items instead of indices.
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
        draw_seeds: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if max_batch_seconds <= 0:
            raise ValueError(f"data.max_batch_seconds must be > 0, got {max_batch_seconds}")
        self.durations = np.asarray(durations)  # a table's float32 array is kept, not copied
        if self.durations.dtype not in (np.float32, np.float64):
            self.durations = self.durations.astype(np.float64)
        self.max_batch_seconds = float(max_batch_seconds)
        self.num_buckets = max(1, int(num_buckets))
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.draw_seeds = draw_seeds
        self.epoch = 0
        self.start = 0  # batches of this epoch already trained (set by resume)
        self._num_replicas = num_replicas
        self._rank = rank
        # (world, rank) -> training batches per epoch
        self._epoch_length: dict[tuple[int, int], int] = {}
        order = np.argsort(self.durations, kind="stable")
        # utterances by duration
        self._order = order.astype(np.int32) if len(order) < 2**31 else order
        self._buckets = [b for b in np.array_split(self._order, self.num_buckets) if len(b)]

    def _bucket_batches(self, rng: random.Random) -> list[_Batches]:
        """Each bucket's batches (shuffled within the bucket), as slices of one index array."""
        order = self._order.copy()
        out, first = [], 0
        for bucket in self._buckets:
            idx = order[first: first + len(bucket)]
            if self.shuffle:
                # in place: random.shuffle only swaps, so the order is that of a shuffled list
                rng.shuffle(memoryview(idx))
            cuts = array("q", [first])  # where each batch starts
            size, longest = 0, 0.0
            for lo in range(0, len(idx), BLOCK):  # durations as Python floats, a block at a time
                for k, d in enumerate(self.durations[idx[lo: lo + BLOCK]].tolist(), first + lo):
                    if size and max(longest, d) * (size + 1) > self.max_batch_seconds:
                        cuts.append(k)
                        size, longest = 0, 0.0
                    size += 1
                    longest = max(longest, d)
            starts = np.array(cuts, dtype=np.int64)
            first += len(idx)
            out.append(_Batches(order, starts, np.append(starts[1:], first)))
        return out

    def _epoch_batches(self, epoch: int | None = None) -> _Batches:
        """This rank's batches of ``epoch`` (default: the current one), whole (not held to
        :meth:`__len__`)."""
        rng = random.Random(self.seed + (self.epoch if epoch is None else epoch))
        per_bucket = self._bucket_batches(rng)
        if not per_bucket:
            return _Batches(self._order, np.zeros(0, np.int64), np.zeros(0, np.int64))
        everything = _Batches.concat(per_bucket)  # batch numbers below count in this order
        world, rank = self.world
        if self.drop_last:  # training: groups of `world` batches from one bucket, one per rank
            whole, rest, first = [], [], 0
            for b in per_bucket:
                cut = first + len(b) // world * world
                whole.append(np.arange(first, cut))
                rest.append(np.arange(cut, first + len(b)))
                first += len(b)
            # each bucket's remainder, in duration order: grouped with its neighbours' remainders
            left = np.concatenate(rest)
            # group g: [g * world, +world)
            grouped = np.concatenate([*whole, left[: len(left) // world * world]])
            groups = np.arange(len(grouped) // world, dtype=np.int64)
            if self.shuffle:
                rng.shuffle(memoryview(groups))
            return everything.take(grouped[groups * world + rank])
        # evaluation: all batches in turn, none repeated
        ids = np.arange(len(everything), dtype=np.int64)
        if self.shuffle:
            rng.shuffle(memoryview(ids))
        if 1 < world and len(ids) < world:  # every rank needs a batch: one utterance each
            everything = everything.take(ids).singletons()
            ids = np.arange(len(everything))
        return everything.take(ids[rank::world])

    def _rank_batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's batches of ``epoch`` (default: the current one), whole, as lists."""
        return list(self._epoch_batches(epoch))

    def __iter__(self) -> Iterator[list[Item]]:
        batches = self._epoch_batches()
        stop = min(len(batches), len(self))
        start, self.start = self.start, 0
        if not self.draw_seeds:
            yield from (batches[k] for k in range(start, stop))
            return
        # one seed per utterance and epoch, the same on every rank and in every run
        seeds = np.random.default_rng([self.seed, self.epoch]).integers(
            2**62, size=len(self.durations))
        for k in range(start, stop):
            b = batches.indices(k)
            yield list(zip(b.tolist(), seeds[b].tolist(), strict=True))

    def __len__(self) -> int:
        """Batches of a whole epoch on this rank (a resumed epoch yields the ones after
        :attr:`start`); for training, epoch 0's count whatever the epoch (see docs/data.md)."""
        if not self.drop_last:
            return len(self._epoch_batches())
        world = self.world
        if world not in self._epoch_length:
            self._epoch_length[world] = len(self._epoch_batches(epoch=0))
        return self._epoch_length[world]

