"""Training from tar shards (:mod:`asr.data.shards`): an epoch planned from the index alone.

Each epoch the shards are dealt to the run's streams (every loader worker of every rank), each
read in order; a stream's buffers of utterances are sorted, packed into batches and shuffled, and
every stream yields the same number of batches. The plan depends only on the index, seed, epoch,
world size and worker count, so a resumed run trains the same batches. See docs/data.md.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from asr.data.sampler import EpochBatchSampler
from asr.data.shards import DURATIONS, INDEX

log = logging.getLogger(__name__)


class ShardIndex:
    """The shards of ``index.json``: names, where to read them, and every utterance's duration.

    Args:
        folder: the folder holding ``index.json`` and ``durations.npy`` (``asr.shard``'s ``out``).
        url: where the tars are read from: ``None`` for the folder itself, else a template with
            ``{name}``, e.g. ``pipe:aws s3 cp s3://bucket/corpus/{name} -`` (stdout is read).
    """

    def __init__(self, folder: str | os.PathLike, url: str | None = None) -> None:
        folder = Path(folder)
        if folder.name == INDEX:
            folder = folder.parent
        if not (folder / INDEX).is_file():
            raise FileNotFoundError(f"data.train_shards={folder}: no {INDEX} there; write the "
                                    f"shards with `python -m asr.shard manifest=<train.jsonl> "
                                    f"out={folder}`")
        index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
        self.folder = folder
        self.names = [s["name"] for s in index["shards"]]
        self.counts = np.array([s["utterances"] for s in index["shards"]], dtype=np.int64)
        self.seconds = np.array([s["seconds"] for s in index["shards"]], dtype=np.float64)
        # global index of each shard's first utterance
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        # shared with forked workers, read lazily
        self.durations = np.load(folder / DURATIONS, mmap_mode="r")
        if len(self.durations) != self.offsets[-1]:
            raise ValueError(f"{folder / DURATIONS} holds {len(self.durations)} durations, "
                             f"{INDEX} counts {self.offsets[-1]}: write the shards again")
        if url is not None and "{name}" not in url:
            raise ValueError(f"data.shard_url={url!r} must contain {{name}} "
                             f"(e.g. 'pipe:aws s3 cp s3://bucket/corpus/{{name}} -')")
        self.url_template = url

    def url(self, shard: int) -> str:
        name = self.names[shard]
        return (str(self.folder / name) if self.url_template is None
                else self.url_template.format(name=name))

    def __len__(self) -> int:
        return int(self.offsets[-1])


class ShardBatch(NamedTuple):
    """One planned batch: which stream reads it, the buffer it is cut from, and its utterances.

    ``span``: the buffer's utterances as ``(shard, first, stop)`` member ranges in reading order;
    ``members``: ``(shard, member, seed)`` of the batch's utterances (``seed``: augmentation draws).
    """

    epoch: int
    position: int  # in the rank's epoch
    stream: int
    buffer: int
    span: tuple[tuple[int, int, int], ...]
    members: tuple[tuple[int, int, int], ...]


def _pack(durations: np.ndarray, max_batch_seconds: float) -> list[np.ndarray]:
    """Positions of ascending ``durations`` cut into batches of at most ``max_batch_seconds``
    padded seconds (longest x count; one utterance always fits)."""
    batches, i, n = [], 0, len(durations)
    while i < n:
        # the padded size of [i, j) is durations[j - 1] * (j - i): it grows with j, so bisect
        lo, hi = i + 1, n
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if durations[mid - 1] * (mid - i) <= max_batch_seconds:
                lo = mid
            else:
                hi = mid - 1
        batches.append(np.arange(i, lo))
        i = lo
    return batches


class _Stream(NamedTuple):
    shards: list[int]  # in reading order
    batches: list[np.ndarray]  # global utterance indices of each batch, in yield order
    buffers: list[int]  # the buffer each batch is cut from


class ShardBatchSampler(EpochBatchSampler):
    """The plan of docs/data.md as a batch sampler (Lightning calls :meth:`set_epoch`; the
    DataModule :meth:`resume`).

    Args:
        index: the shards.
        max_batch_seconds: bound on longest duration x batch size.
        num_workers: the DataLoader's workers (0 counts as one stream, read in this process).
        shuffle_buffer: utterances sorted and batched together (one buffer held per worker).
        min_duration, max_duration: utterances outside (seconds) are left out.
        seed: base seed of the shard order, the batch order and the augmentation draws.
        num_replicas, rank: override the distributed world (for tests).
    """

    def __init__(self, index: ShardIndex, max_batch_seconds: float, num_workers: int = 1,
                 shuffle_buffer: int = 500, min_duration: float = 0.0,
                 max_duration: float = float("inf"), seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None) -> None:
        if max_batch_seconds <= 0:
            raise ValueError(f"data.max_batch_seconds must be > 0, got {max_batch_seconds}")
        if shuffle_buffer < 1:
            raise ValueError(f"data.shuffle_buffer must be >= 1, got {shuffle_buffer}")
        self.index = index
        self.max_batch_seconds = float(max_batch_seconds)
        self.workers = max(1, int(num_workers))
        self.shuffle_buffer = int(shuffle_buffer)
        self.min_duration, self.max_duration = min_duration, max_duration
        self.seed = seed
        self.epoch = 0
        self.start = 0
        self._num_replicas, self._rank = num_replicas, rank
        self._length: dict[tuple[int, int], int] = {}

    def deal(self, epoch: int) -> list[list[int]]:
        """The shards of every stream in ``epoch`` (rank-major: rank r's worker w is stream
        ``r * workers + w``)."""
        world, _ = self.world
        streams = world * self.workers
        if len(self.index.names) < streams:
            raise ValueError(
                f"data.train_shards: {len(self.index.names)} shards for {world} ranks x "
                f"{self.workers} loader workers; each worker of each rank reads shards of its own, "
                f"so write at least {streams} (python -m asr.shard ... shard_seconds=<smaller>) "
                f"or lower data.num_workers")
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.index.names))
        load, dealt = np.zeros(streams), [[] for _ in range(streams)]
        for s in order:
            k = int(np.argmin(load))  # the first of the least loaded: deterministic
            dealt[k].append(int(s))
            load[k] += self.index.seconds[s]
        return dealt

    def _stream(self, shards: list[int], epoch: int, stream: int) -> _Stream:
        """One stream's batches in ``epoch``: buffers of consecutive utterances, sorted, packed,
        shuffled."""
        rng = np.random.default_rng([self.seed, epoch, stream, 1])
        ids = np.concatenate([np.arange(self.index.offsets[s], self.index.offsets[s + 1])
                              for s in shards])
        batches, buffers = [], []
        for b, first in enumerate(range(0, len(ids), self.shuffle_buffer)):
            chunk = ids[first: first + self.shuffle_buffer]
            d = np.asarray(self.index.durations[chunk], dtype=np.float64)
            keep = (d >= self.min_duration) & (d <= self.max_duration)
            chunk, d = chunk[keep], d[keep]
            order = np.argsort(d, kind="stable")
            packed = [chunk[order[p]] for p in _pack(d[order], self.max_batch_seconds)]
            for p in rng.permutation(len(packed)):
                batches.append(packed[p])
                buffers.append(b)
        return _Stream(shards, batches, buffers)

    def _epoch(self, epoch: int) -> tuple[list[_Stream], int, int]:
        """This rank's streams, the batches each yields (the fewest any stream has), and the
        batches left out."""
        _, rank = self.world
        streams = [self._stream(shards, epoch, k) for k, shards in enumerate(self.deal(epoch))]
        per_stream = min(len(s.batches) for s in streams)
        left_out = sum(len(s.batches) - per_stream for s in streams)
        return streams[rank * self.workers: (rank + 1) * self.workers], per_stream, left_out

    def __len__(self) -> int:
        """Batches a rank trains per epoch: epoch 0's count on every epoch (as
        :class:`BucketBatchSampler`)."""
        world = self.world
        if world not in self._length:
            self._length[world] = self._epoch(0)[1] * self.workers
        return self._length[world]

    def _span(self, stream: _Stream, buffer: int) -> tuple[tuple[int, int, int], ...]:
        """``(shard, first, stop)`` ranges of a stream's ``buffer``-th buffer, in reading order."""
        first, stop = buffer * self.shuffle_buffer, (buffer + 1) * self.shuffle_buffer
        span, at = [], 0
        for s in stream.shards:
            n = int(self.index.counts[s])
            lo, hi = max(first, at), min(stop, at + n)
            if lo < hi:
                span.append((s, lo - at, hi - at))
            at += n
        return tuple(span)

    def __iter__(self) -> Iterator[ShardBatch]:
        epoch, start, self.start = self.epoch, self.start, 0
        streams, per_stream, left_out = self._epoch(epoch)
        total = min(per_stream * self.workers, len(self))
        if left_out and start == 0:
            log.info("epoch %d: %d batches of the shards' streams left out "
                     "so that every stream yields %d", epoch, left_out, per_stream)
        for n in range(start, total):
            k, t = n % self.workers, n // self.workers
            stream = streams[k]
            idx = stream.batches[t]
            shard = np.searchsorted(self.index.offsets, idx, side="right") - 1
            members = tuple((int(s), int(i - self.index.offsets[s]),
                             _draw_seed(self.seed, epoch, int(i)))
                            for s, i in zip(shard, idx, strict=True))
            yield ShardBatch(epoch, n, k, stream.buffers[t], self._span(stream, stream.buffers[t]),
                             members)


def _draw_seed(seed: int, epoch: int, utterance: int) -> int:
    """The seed of an utterance's augmentation draws in an epoch: the same on every rank, worker
    and resume."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9
         + utterance * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & (2**64 - 1)
    return int(x ^ (x >> 32)) & (2**62 - 1)
