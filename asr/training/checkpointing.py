"""Checkpoints that survive a kill or a full disk, and load without running code.

A write goes to a temporary file, fsynced and renamed into place: a crash leaves the old or the new
checkpoint, never half of one; a full disk raises :class:`CheckpointWriteError`. Every load is
``weights_only`` (no pickled code). See docs/training.md.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from asr.model_files import load_checkpoint

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"  # ".<name>.<pid>.partial": a write not yet renamed into place


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the previous checkpoint at the same path is intact."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` via a temporary file in the same folder, fsync and rename.

    Raises:
        CheckpointWriteError: the write failed (disk full, read-only, quota); ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    # serialise in memory first (as Lightning does): torch's zip writer reports a failed write as
    # a bare RuntimeError, a plain file write keeps the errno (ENOSPC, EDQUOT) for the message
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    try:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free / 2**20
        what = ("the disk is full" if err.errno in (errno.ENOSPC, errno.EDQUOT)
                else err.strerror or str(err))
        raise CheckpointWriteError(
            err.errno,
            f"cannot write checkpoint {path}: {what} ({free:.0f} MiB free in {path.parent}); "
            f"the previous checkpoint there is intact. Free some space or set paths.output_dir to "
            f"a bigger disk, then rerun with resume=auto",
        ) from err


def remove_partials(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Delete temporary files left by writes that were killed before their rename; returns them."""
    ckpt_dir = Path(ckpt_dir)
    stale = sorted(ckpt_dir.glob(f".*{PARTIAL_SUFFIX}")) if ckpt_dir.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        log.info("removed %d partial checkpoint writes from an interrupted run: %s",
                 len(stale), ", ".join(p.name for p in stale))
    return stale


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O: atomic, fsynced writes; ``weights_only`` loads (resume too)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options, got {storage_options!r}")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location or "cpu")


class StepCheckpoint(L.Callback):
    """``last.ckpt`` also mid-epoch: every ``every_n_steps`` optimizer steps and/or every
    ``every_n_minutes`` (the ``checkpoint`` settings); ``resume=auto`` goes on from the next batch.

    The time is rank 0's clock, broadcast every ``CLOCK_EVERY_N_STEPS`` steps so that all ranks
    save together (saving is collective).
    """

    CLOCK_EVERY_N_STEPS = 20

    def __init__(self, path: str | os.PathLike, every_n_steps: int | None = None,
                 every_n_minutes: float | None = None) -> None:
        for name, value in (("every_n_steps", every_n_steps), ("every_n_minutes", every_n_minutes)):
            if value is not None and value <= 0:
                raise ValueError(f"checkpoint.{name}={value!r} must be > 0, or null for none")
        self.path, self.every_n_steps, self.every_n_minutes = (str(path), every_n_steps,
                                                               every_n_minutes)
        self._last_time = time.monotonic()
        self._step = -1  # global step at the end of the previous batch

    def _due(self, trainer: L.Trainer) -> bool:
        step = trainer.global_step
        stepped, self._step = step != self._step, step
        if not stepped:  # accumulating gradients: only after an optimizer step is nothing unsaved
            return False
        due = bool(self.every_n_steps) and step % self.every_n_steps == 0
        # a broadcast is a host sync: not every step
        if self.every_n_minutes and step % self.CLOCK_EVERY_N_STEPS == 0:
            late = time.monotonic() - self._last_time >= 60.0 * self.every_n_minutes
            due = due or bool(trainer.strategy.broadcast(late, src=0))
        # not after an epoch's last batch: the epoch's own last.ckpt follows its validation, and a
        # crash during that validation must resume before it (from here it would be skipped)
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return due and done < trainer.num_training_batches

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_time, self._step = time.monotonic(), trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if (self.every_n_steps or self.every_n_minutes) and self._due(trainer):
            trainer.save_checkpoint(self.path, weights_only=False)
            self._last_time = time.monotonic()
