"""Callbacks that keep a long run alive through bad steps and bad files, and say what happened.

- :class:`NonFiniteGuard`: a step whose loss or gradients are NaN/inf changes no weight; it is counted
  (``faults/skipped_steps``) and logged with the utterance ids of its batch. ``max_consecutive`` such steps
  in a row stop the run with :class:`TrainingDiverged`, whose message says what to try.
- :class:`DroppedUtterances`: utterances whose audio failed to load in a worker (the Dataset yields
  ``None`` for them and ``collate`` lists them in ``Batch.dropped``) are counted
  (``faults/dropped_utts``) and each is logged once.

Both keep their counts in the checkpoint, so a resumed run reports totals for the whole run.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytorch_lightning as L
import torch

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Too many consecutive training steps had a non-finite loss or gradient."""


class NonFiniteGuard(L.Callback):
    """Skip optimiser steps with a NaN/inf loss or gradient; stop after ``max_consecutive`` in a row.

    The check runs after backward and before gradient clipping and the optimiser: the gradients of a bad
    step are dropped (set to ``None``), so the optimiser leaves every weight and its state untouched.

    Args:
        max_consecutive: this many bad steps in a row raise :class:`TrainingDiverged` (0 = never stop).
    """

    def __init__(self, max_consecutive: int = 20) -> None:
        if max_consecutive < 0:
            raise ValueError(f"callbacks.non_finite.max_consecutive must be >= 0, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.consecutive = 0
        self._loss_finite = True
        self._loss_value = 0.0
        self._ids: list[str] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._ids = list(getattr(batch, "ids", []))
        self._loss_finite = True

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        value = float(loss.detach())
        self._loss_finite = math.isfinite(value)
        self._loss_value = value

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        # one fused reduction instead of a host sync per parameter
        grads_finite = not grads or bool(torch.stack([g.detach().float().abs().sum() for g in grads]).isfinite().all())
        if self._loss_finite and grads_finite:
            self.consecutive = 0
            return
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None  # the optimiser skips parameters without a gradient: no update, no state change
        self.skipped += 1
        self.consecutive += 1
        what = f"loss is {self._loss_value}" if not self._loss_finite else "a gradient is NaN/inf"
        ids = ", ".join(self._ids[:8]) + (" ..." if len(self._ids) > 8 else "")
        log.warning("step %d skipped: %s (batch: %s); %d skipped so far, %d in a row",
                    trainer.global_step, what, ids or "?", self.skipped, self.consecutive)
        if self.max_consecutive and self.consecutive >= self.max_consecutive:
            raise TrainingDiverged(
                f"training diverged: {self.consecutive} consecutive steps had a non-finite loss or gradient "
                f"(last at step {trainer.global_step}, {what}). The last good checkpoint is untouched; lower "
                f"optim.lr, raise optim.scheduler.warmup_ratio or check the data named in the log above, then "
                f"rerun with resume=auto (limit: callbacks.non_finite.max_consecutive={self.max_consecutive})"
            )

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        pl_module.log("faults/skipped_steps", float(self.skipped), on_step=True, on_epoch=False,
                      batch_size=max(1, len(self._ids)))

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self.consecutive = int(state_dict.get("consecutive", 0))


class DroppedUtterances(L.Callback):
    """Count and log (once each) utterances that failed to load and were dropped from their batch."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}  # id -> reason, for the whole run

    def _record(self, batch: Any, pl_module: L.LightningModule, stage: str) -> None:
        dropped = getattr(batch, "dropped", ())
        new = [(uid, why) for uid, why in dropped if uid not in self.seen]
        for uid, why in new:
            self.seen[uid] = why
            log.warning("%s: dropped utterance %s, its audio failed to load: %s", stage, uid, why)
        if stage == "train":
            pl_module.log("faults/dropped_utts", float(len(self.seen)), on_step=True, on_epoch=False,
                          batch_size=max(1, len(getattr(batch, "ids", ()))))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._record(batch, pl_module, "train")

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        self._record(batch, pl_module, "val")

    def state_dict(self) -> dict[str, Any]:
        return {"seen": dict(self.seen)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seen = {str(k): str(v) for k, v in state_dict.get("seen", {}).items()}
