"""A test helper callback, added on the command line:
``+callbacks.trace._target_=tests.trace.BatchTrace +callbacks.trace.path=<file>``: one JSON line
per training batch (rank, global step, epoch, utterance ids)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytorch_lightning as L


class BatchTrace(L.Callback):
    """Appends ``{"rank", "step", "epoch", "ids"}`` to ``<path>.rank<R>.jsonl`` before each
    training step (flushed, so a SIGKILL loses nothing written); ``delay`` seconds of sleep per
    step give a killer time to aim."""

    def __init__(self, path: str, delay: float = 0.0) -> None:
        self.path, self.delay = path, delay

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch,
                             batch_idx: int) -> None:
        line = {"rank": trainer.global_rank, "step": trainer.global_step,
                "epoch": trainer.current_epoch, "ids": list(batch.ids)}
        with Path(f"{self.path}.rank{trainer.global_rank}.jsonl").open("a") as f:
            f.write(json.dumps(line) + "\n")
        time.sleep(self.delay)


def read_trace(path: str | Path, rank: int = 0) -> list[tuple[int, int, list[str]]]:
    """(step, epoch, ids) per step; a step traced twice (done again after a kill) keeps its last
    trace."""
    steps: dict[int, tuple[int, int, list[str]]] = {}
    for line in Path(f"{path}.rank{rank}.jsonl").read_text().splitlines():
        row = json.loads(line)
        steps[row["step"]] = (row["step"], row["epoch"], row["ids"])
    return [steps[k] for k in sorted(steps)]
