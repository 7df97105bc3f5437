"""Learning-rate schedules (Hydra partials built in ``configure_optimizers``); fused AdamW."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def warmup_decay(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_ratio: float,
    final_lr_ratio: float,
    shape: str = "cosine",
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from ~0 to the optimiser's lr, then cosine or linear decay to
    ``final_lr_ratio`` x lr.

    Args:
        optimizer: the optimiser whose ``lr`` is the peak.
        total_steps: optimiser steps in the whole run (``trainer.estimated_stepping_batches``).
        warmup_ratio: fraction of ``total_steps`` spent warming up.
        final_lr_ratio: lr at the last step, as a fraction of the peak.
        shape: ``"cosine"`` or ``"linear"`` decay.
    """
    if shape not in ("cosine", "linear"):
        raise ValueError(f"optim.scheduler.shape must be 'cosine' or 'linear', got {shape!r}")
    total = max(1, int(total_steps))
    warmup = max(1, int(round(warmup_ratio * total)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if shape == "cosine" else 1 - progress
        return final_lr_ratio + (1 - final_lr_ratio) * decay

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def fused_option(factory: Callable[..., torch.optim.Optimizer], precision: str,
                 lightning_clips: bool = False) -> dict[str, bool]:
    """``{"fused": True}`` for an Adam/AdamW partial whose ``fused`` is null, unless the precision
    forbids it (``16-mixed``, or mixed precision with ``trainer.gradient_clip_val``);
    ``fused: false`` or ``foreach: true`` in the config keeps torch's default.
    See docs/training.md.
    """
    if getattr(factory, "func", None) not in (torch.optim.Adam, torch.optim.AdamW):
        return {}
    keywords = getattr(factory, "keywords", {})
    if keywords.get("fused") is not None or keywords.get("foreach"):
        return {}
    mixed = precision.endswith("-mixed")
    return {"fused": not (precision.startswith("16") and mixed) and not (mixed and lightning_clips)}
