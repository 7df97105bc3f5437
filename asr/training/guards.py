"""Callbacks that keep a long run alive through bad steps and bad files, and say what happened.

- :class:`NonFiniteGuard`: a step with a NaN/inf loss or gradient changes no weight; it is counted
  (``faults/skipped_steps``) and logged; too many in a row raise :class:`TrainingDiverged`.
- :class:`DroppedUtterances`: utterances whose audio failed to load (``Batch.dropped``) are
  counted (``faults/dropped_utts``) and each is logged once.

Both keep their counts in the checkpoint, so a resumed run reports totals for the whole run.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as L
import torch

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Too many consecutive training steps had a non-finite loss or gradient."""


class NonFiniteGuard(L.Callback):
    """Clip the gradients; skip optimiser steps with a NaN/inf loss or gradient; stop after
    ``max_consecutive`` bad steps in a row.

    The skip decision stays on the device (a fused optimiser's ``found_inf``) and is read back only
    every ``check_every_n_steps`` steps. See docs/training.md.

    Args:
        max_consecutive: this many bad steps in a row raise :class:`TrainingDiverged` (0: never).
        max_grad_norm: clip the global gradient 2-norm to this (``None`` or 0: no clipping); use it
            instead of ``trainer.gradient_clip_val``, which must stay null.
        check_every_n_steps: how often the flags are read; ``None``: every step on the CPU, every
            20 on an accelerator.
    """

    def __init__(self, max_consecutive: int = 20, max_grad_norm: float | None = None,
                 check_every_n_steps: int | None = None) -> None:
        if max_consecutive < 0:
            raise ValueError(f"callbacks.non_finite.max_consecutive must be >= 0, "
                             f"got {max_consecutive}")
        if max_grad_norm is not None and max_grad_norm < 0:
            raise ValueError(f"callbacks.non_finite.max_grad_norm must be >= 0 (0 or null: no "
                             f"clipping), got {max_grad_norm}")
        if check_every_n_steps is not None and check_every_n_steps < 1:
            raise ValueError(f"callbacks.non_finite.check_every_n_steps must be >= 1, "
                             f"got {check_every_n_steps}")
        self.max_consecutive = max_consecutive
        self.max_grad_norm = max_grad_norm or None
        self.check_every_n_steps = check_every_n_steps
        self.skipped = 0
        self.consecutive = 0
        self._loss_finite: torch.Tensor | None = None
        self._loss: torch.Tensor | None = None
        self._ids: list[str] = []
        # (step, utterance ids, bad-step flag, non-finite-loss flag, loss), read in _flush
        self._pending: list[tuple[int, list[str], torch.Tensor, torch.Tensor | None,
                                  torch.Tensor | None]] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.max_grad_norm and trainer.gradient_clip_val:
            raise ValueError(
                f"gradients are clipped twice: by callbacks.non_finite.max_grad_norm="
                f"{self.max_grad_norm} and by trainer.gradient_clip_val="
                f"{trainer.gradient_clip_val}; keep one (the other null)")
        if self.check_every_n_steps is None:
            self.check_every_n_steps = 1 if pl_module.device.type == "cpu" else 20

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._ids = list(getattr(batch, "ids", []))

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           loss: torch.Tensor) -> None:
        finite = torch.isfinite(loss.detach())  # under gradient accumulation: every micro-batch's
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite
        self._loss = loss.detach()

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]
                  if p.grad is not None]
        if self.max_grad_norm:
            norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        bad = ~torch.isfinite(norm)
        loss_bad = None if self._loss_finite is None else ~self._loss_finite
        self._pending.append((trainer.global_step, self._ids, bad, loss_bad, self._loss))
        self._loss_finite = self._loss = None
        if getattr(optimizer, "_step_supports_amp_scaling", False):
            # when set, the fused kernels skip the update (weights and state)
            optimizer.found_inf = bad.float()
        else:
            if bool(bad):  # this optimiser must be told on the host
                for p in params:
                    p.grad = None
            self._flush()
            return
        if len(self._pending) >= self.check_every_n_steps:
            self._flush()

    def _flush(self, stop: bool = True) -> None:
        """Read the pending steps' flags (one read for all): count, log, stop after too many."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        flags = torch.stack([entry[2] for entry in pending]).tolist()
        for (step, ids, _, loss_bad, loss), is_bad in zip(pending, flags, strict=True):
            if not is_bad:
                self.consecutive = 0
                continue
            self.skipped += 1
            self.consecutive += 1
            what = (f"loss is {float(loss)}" if loss_bad is not None and bool(loss_bad)
                    else "a gradient is NaN/inf")
            shown = ", ".join(ids[:8]) + (" ..." if len(ids) > 8 else "")
            log.warning("step %d skipped: %s (batch: %s); %d skipped so far, %d in a row",
                        step, what, shown or "?", self.skipped, self.consecutive)
            if stop and self.max_consecutive and self.consecutive >= self.max_consecutive:
                raise TrainingDiverged(
                    f"training diverged: {self.consecutive} consecutive steps had a non-finite "
                    f"loss or gradient (last at step {step}, {what}). The last good checkpoint is "
                    f"untouched; lower optim.lr, raise optim.scheduler.warmup_ratio or check the "
                    f"data named in the log above, then rerun with resume=auto (limit: "
                    f"callbacks.non_finite.max_consecutive={self.max_consecutive})"
                )

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        pl_module.log("faults/skipped_steps", float(self.skipped), on_step=True, on_epoch=False,
                      batch_size=max(1, len(self._ids)))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(stop=False)

    def state_dict(self) -> dict[str, Any]:
        self._flush(stop=False)  # a checkpoint holds the counts up to its own step
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self.consecutive = int(state_dict.get("consecutive", 0))


class DroppedUtterances(L.Callback):
    """Count and log (once each) utterances that failed to load and were dropped from a batch."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}  # id -> reason, for the whole run

    def _record(self, batch: Any, pl_module: L.LightningModule, stage: str) -> None:
        dropped = getattr(batch, "dropped", ())
        new = [(f.id, f.reason) for f in dropped if f.id not in self.seen]
        for uid, why in new:
            self.seen[uid] = why
            log.warning("%s: dropped utterance %s, its audio failed to load: %s", stage, uid, why)
        if stage == "train":
            pl_module.log("faults/dropped_utts", float(len(self.seen)), on_step=True,
                          on_epoch=False, batch_size=max(1, len(getattr(batch, "ids", ()))))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._record(batch, pl_module, "train")

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                  batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._record(batch, pl_module, "val")

    def state_dict(self) -> dict[str, Any]:
        return {"seen": dict(self.seen)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seen = {str(k): str(v) for k, v in state_dict.get("seen", {}).items()}
