"""Lightning callbacks: training throughput and where the time goes."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as L
import torch


class ThroughputMonitor(L.Callback):
    """Logs, every ``every_n_steps`` training steps, averaged over those steps:

    - ``perf/audio_sec_per_sec``: seconds of (unpadded) audio trained on per wall-clock second,
    - ``perf/padding``: fraction of the batch's audio samples that are padding,
    - ``perf/data_wait``: fraction of wall time spent waiting for the next batch,
    - ``perf/gpu_mem_gb``: peak GPU memory allocated (on CUDA only).

    Args:
        sample_rate: of the batch waveforms (to turn samples into seconds).
        every_n_steps: logging period in optimiser steps.
    """

    def __init__(self, sample_rate: int = 16000, every_n_steps: int = 10) -> None:
        self.sample_rate = sample_rate
        self.every_n_steps = max(1, every_n_steps)
        self._reset()
        self._last_end: float | None = None

    def _reset(self) -> None:
        self._audio = 0.0
        self._padded = 0.0
        self._wait = 0.0
        self._start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()
        self._last_end = time.perf_counter()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._last_end is not None:
            self._wait += time.perf_counter() - self._last_end

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._audio += float(batch.audio_lengths.sum()) / self.sample_rate
        self._padded += batch.audio.numel() / self.sample_rate
        now = time.perf_counter()
        self._last_end = now
        if (batch_idx + 1) % self.every_n_steps:
            return
        elapsed = max(now - self._start, 1e-9)
        metrics = {
            "perf/audio_sec_per_sec": self._audio / elapsed,
            "perf/padding": 1.0 - self._audio / max(self._padded, 1e-9),
            "perf/data_wait": self._wait / elapsed,
        }
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            metrics["perf/gpu_mem_gb"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=batch.audio.shape[0])
        self._reset()
