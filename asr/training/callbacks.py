"""Lightning callbacks of every run: throughput and where the time goes, late validation, and the
CSV history kept across a resume."""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch


class ValidateFrom(L.Callback):
    """Validate (and so choose best.ckpt) only from ``fraction`` of ``trainer.max_epochs`` on, and
    on the last epoch; the skipped epochs save ``last_path`` as they end. See docs/training.md.

    Args:
        fraction: in [0, 1), e.g. 0.5: validate in the second half of the run only; 0: every epoch.
        last_path: the ``last.ckpt`` of the run.
    """

    def __init__(self, fraction: float, last_path: str | os.PathLike) -> None:
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"callbacks.validate_from.fraction={fraction!r} must be a fraction of "
                             "trainer.max_epochs in [0, 1) (0.5: validate in the second half of "
                             "the run only)")
        self.fraction, self.last_path = float(fraction), Path(last_path)
        self.first_epoch = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.fraction == 0.0:
            return
        max_epochs = trainer.max_epochs
        if max_epochs is None or max_epochs < 1:
            raise ValueError(f"callbacks.validate_from.fraction={self.fraction} needs "
                             f"trainer.max_epochs (got {max_epochs}); set it, or leave "
                             "validate_from out of the callbacks")
        self.first_epoch = min(int(self.fraction * max_epochs), max_epochs - 1)

    def _skips(self, trainer: L.Trainer) -> bool:
        return trainer.current_epoch < self.first_epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning validates after epoch e when (e + 1) % check_val_every_n_epoch == 0
        trainer.check_val_every_n_epoch = 10**9 if self._skips(trainer) else 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._skips(trainer):
            # all of it, as last.ckpt always is
            trainer.save_checkpoint(self.last_path, weights_only=False)


class CSVHistory:
    """Keeps ``metrics.csv`` rows across a resume, and across a crash of the resumed run.

    Lightning's CSV logger deletes ``metrics.csv`` when a run resumes in the same folder. Before
    it can, the rows known so far are written to ``metrics.before_resume.csv`` (with those of an
    earlier resumed run that crashed before :meth:`restore`); after the fit, :meth:`restore` puts
    back the rows from before the resumed step and removes that file.
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.path = Path(out_dir) / "logs" / "metrics.csv"
        self.saved = self.path.with_name("metrics.before_resume.csv")
        self.rows = _merge_rows(_read_rows(self.saved), _read_rows(self.path))
        if self.rows:
            _write_rows(self.saved, self.rows)

    def restore(self) -> None:
        """Merge the saved rows (steps before the new ones) back into ``metrics.csv``; if the
        resumed fit logged nothing, the saved rows are the whole file."""
        if self.rows:
            _write_rows(self.path, _merge_rows(self.rows, _read_rows(self.path)))
        self.saved.unlink(missing_ok=True)


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _merge_rows(old: list[dict[str, str]], new: list[dict[str, str]]) -> list[dict[str, str]]:
    """``old``'s rows from steps before ``new``'s first, then ``new``'s."""
    first = min((int(r["step"]) for r in new if r.get("step")), default=None)
    return [r for r in old if first is None or (r.get("step") and int(r["step"]) < first)] + new


def _write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_name(path.name + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


class ThroughputMonitor(L.Callback):
    """Logs, every ``every_n_steps`` training steps, averaged over those steps:

    - ``perf/audio_sec_per_sec``: seconds of (unpadded) audio trained on per wall-clock second,
    - ``perf/padding``: fraction of the batch's audio samples that are padding,
    - ``perf/data_wait``: fraction of wall time spent waiting for the next batch,
    - ``perf/gpu_mem_gb``: peak GPU memory allocated (on CUDA only),

    and shows ``loss``, ``audio_s/s`` and ``eta_min`` (minutes left in the fit) in the progress
    bar. Only then does it read from the device (audio lengths stay on the host).

    Args:
        sample_rate: of the batch waveforms (to turn samples into seconds).
        every_n_steps: logging period in optimiser steps.
    """

    def __init__(self, sample_rate: int = 16000, every_n_steps: int = 10) -> None:
        self.sample_rate = sample_rate
        self.every_n_steps = max(1, every_n_steps)
        self._reset()
        self._last_end: float | None = None
        self._fit_start: float | None = None
        self._fit_start_step = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = time.perf_counter()
        self._fit_start_step = trainer.global_step  # a resumed fit times only its own steps

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
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
        batch_idx: int
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
        bsz = batch.audio.shape[0]
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=bsz)
        bar = {"audio_s/s": metrics["perf/audio_sec_per_sec"]}
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            bar = {"loss": float(loss.detach()), **bar}
        done = trainer.global_step - self._fit_start_step
        total = trainer.estimated_stepping_batches  # inf when the fit has no step or epoch limit
        if self._fit_start is not None and done > 0 and math.isfinite(total):
            bar["eta_min"] = ((now - self._fit_start) / done
                              * max(total - trainer.global_step, 0) / 60)
        pl_module.log_dict(bar, on_step=True, on_epoch=False, prog_bar=True, logger=False,
                           batch_size=bsz)
        self._reset()
