"""The model's own thread: requests that arrive together run as one forward pass.

A request puts its waveform on a bounded queue and waits on a future. The worker takes the first
waiting job, then gathers more for at most ``max_wait_ms`` or until the batch holds
``max_seconds`` of audio (it waits only while other requests are on their way: queued, or being
read and decoded), runs :meth:`asr.Recognizer.log_probs` once for all of them and decodes
each. Audio longer than ``chunk_seconds`` runs alone, in pieces (:meth:`Recognizer.long_log_probs`),
exactly as :meth:`Recognizer.transcribe` runs it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from asr.decoding import Decoder
from asr.recognizer import Recognizer, Transcript

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds ``queue_size`` waiting requests already."""


@dataclass
class Job:
    wav: torch.Tensor  # (S,) at the model's rate
    seconds: float
    future: Future = field(default_factory=Future)  # -> (Transcript, batch size)


@dataclass
class Stats:
    requests: int = 0
    batches: int = 0
    batched_requests: int = 0  # requests that ran in a batch of more than one
    largest_batch: int = 0
    failures: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class BatchWorker:
    """Owns the recognizer; :meth:`submit` from any thread, :meth:`close` to stop.

    Args:
        recognizer: the model (only this worker's thread runs it).
        decoder: the decoder for every request.
        enabled: ``False``: one request per forward pass.
        max_seconds: audio seconds per batch at most (padded length not counted).
        max_wait_ms: how long the first job of a batch waits for company.
        queue_size: waiting jobs at most; :meth:`submit` raises :class:`QueueFull` beyond.
        word_times, chunking: as :meth:`Recognizer.transcribe` takes them.
    """

    def __init__(self, recognizer: Recognizer, decoder: Decoder, enabled: bool = True,
                 max_seconds: float = 120.0, max_wait_ms: float = 10.0, queue_size: int = 64,
                 word_times: str = "audio", **chunking: float) -> None:
        self.recognizer, self.decoder, self.enabled = recognizer, decoder, enabled
        self.max_seconds, self.max_wait = max_seconds, max_wait_ms / 1000
        self.word_times, self.chunking = word_times, chunking
        self.chunk_seconds = float(chunking.get("chunk_seconds", 30.0))
        self.queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self.stats = Stats()
        self._carry: Job | None = None  # a job that did not fit the last batch
        self.arriving = 0  # requests being read and decoded (counted by the event loop's thread)
        self._thread = threading.Thread(target=self._run, name="asr-model", daemon=True)
        self._thread.start()

    def submit(self, wav: torch.Tensor) -> Future:
        """Queue one waveform; the future gives ``(Transcript, batch size)`` or the error."""
        job = Job(wav, wav.numel() / self.recognizer.sample_rate)
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise QueueFull from None
        return job.future

    def close(self) -> None:
        """Stop the thread once the queued requests are done (at most 30 s)."""
        try:
            self.queue.put(None, timeout=30)
        except queue.Full:
            return  # a daemon thread: it ends with the process
        self._thread.join(timeout=30)

    # ------------------------------------------------------------------------- the thread
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            first = self._carry or self.queue.get()
            self._carry = None
            if first is None:
                return
            # a request whose client went away was cancelled: drop it; the rest can no longer be
            batch = [j for j in self._gather(first) if j.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            try:
                results = self._transcribe(batch)
            except Exception as err:  # noqa: BLE001 (a batch fails its requests, not the thread)
                log.exception("a batch of %d failed", len(batch))
                self.stats.failures += len(batch)
                for job in batch:
                    job.future.set_exception(err)
                continue
            self._count(len(batch))
            for job, result in zip(batch, results, strict=True):
                job.future.set_result((result, len(batch)))

    def _gather(self, first: Job) -> list[Job]:
        """``first`` and the jobs that come within ``max_wait`` and fit ``max_seconds``."""
        batch, total = [first], first.seconds
        if not self.enabled or first.seconds > self.chunk_seconds:
            return batch
        deadline = time.monotonic() + self.max_wait
        while total < self.max_seconds:
            if self.queue.empty() and self.arriving <= 0:
                break  # no request is on its way: waiting would only add latency
            try:
                job = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None or job.seconds > self.chunk_seconds or (
                    total + job.seconds > self.max_seconds):
                self._carry = job
                break
            batch.append(job)
            total += job.seconds
        return batch

    def _count(self, size: int) -> None:
        s = self.stats
        s.requests += size
        s.batches += 1
        s.batched_requests += size if size > 1 else 0
        s.largest_batch = max(s.largest_batch, size)

    def _transcribe(self, batch: list[Job]) -> list[Transcript]:
        rec = self.recognizer
        if len(batch) == 1 and batch[0].seconds > self.chunk_seconds:
            log_probs = [rec.long_log_probs(batch[0].wav, **self.chunking)]
        else:
            log_probs = rec.log_probs([job.wav for job in batch])
        return [rec.transcript(job.wav, lp, self.decoder, self.word_times)
                for job, lp in zip(batch, log_probs, strict=True)]

    def health(self) -> dict[str, Any]:
        return {"queued": self.queue.qsize(), "queue_size": self.queue.maxsize,
                "batching": self.enabled, **self.stats.as_dict()}
