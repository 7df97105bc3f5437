"""Opt-in regularisers as Lightning callbacks (``callbacks=[default,ema]`` or ``weight_noise``).

- :class:`EMA`: exponential moving average of the weights, updated every training step;
  validation scores it and checkpoints hold it, so best.ckpt and all that decodes from it use it.
- :class:`WeightNoise`: Gaussian noise on every weight matrix for each training step's forward
  and backward pass, taken off before the optimiser step (Graves et al. 2013).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as L
import torch
from pytorch_lightning.callbacks import WeightAveraging


def ema_update(decay: float) -> Callable[..., None]:
    """``multi_avg_fn`` of :class:`torch.optim.swa_utils.AveragedModel`: an EMA whose decay ramps
    up as ``min(decay, (1 + n) / (10 + n))`` at update ``n``, so early averages forget the random
    initialisation."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor],
               num_averaged: torch.Tensor) -> None:
        n = int(num_averaged)
        torch._foreach_lerp_(averaged, current, 1.0 - min(decay, (1 + n) / (10 + n)))

    return update


class EMA(WeightAveraging):
    """Exponential moving average of the module's weights (see :func:`ema_update`).

    Args:
        decay: the long-run decay, in (0, 1), e.g. 0.999.
    """

    def __init__(self, decay: float = 0.999) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"callbacks.ema.decay must be in (0, 1), got {decay}")
        super().__init__(multi_avg_fn=ema_update(decay))
        self.decay = decay


class WeightNoise(L.Callback):
    """Add ``N(0, std²)`` noise to every weight matrix before each training step's forward pass,
    from epoch ``start_epoch`` on; the gradients are taken at the noisy weights, and the noise is
    taken off before the optimiser updates the clean ones (also after a skipped step).

    Args:
        std: standard deviation of the noise (> 0).
        start_epoch: the first epoch (0-based) with noise.
    """

    def __init__(self, std: float, start_epoch: int = 0) -> None:
        if std <= 0:
            raise ValueError(f"callbacks.weight_noise.std must be > 0, got {std}")
        self.std, self.start_epoch = float(std), int(start_epoch)
        self._noise: list[tuple[torch.nn.Parameter, torch.Tensor]] = []

    @torch.no_grad()
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.current_epoch < self.start_epoch:
            return
        for p in pl_module.recognizer.model.parameters():
            if p.requires_grad and p.dim() >= 2:
                noise = torch.randn_like(p) * self.std
                p.add_(noise)
                self._noise.append((p, noise))

    @torch.no_grad()
    def _remove(self) -> None:
        for p, noise in self._noise:
            p.sub_(noise)
        self._noise = []

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._remove()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._remove()
