"""Average the weights of several checkpoints of one run (as NeMo, SpeechBrain and icefall offer).

    python -m asr.average checkpoints=[exp/an4/<run>/checkpoints/a.ckpt,exp/an4/<run>/checkpoints/b.ckpt]
    python -m asr.average run_dir=exp/an4/<run> last=5       # the 5 with the highest global step
    python -m asr.average run_dir=exp/an4/<run> best=5       # the 5 best by their ModelCheckpoint score

The result loads like any checkpoint (``python -m asr.evaluate checkpoint=<output>``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from asr.checkpointing import atomic_torch_save
from asr.module import CHECKPOINT_KEY

log = logging.getLogger(__name__)


def _load(path: str | os.PathLike) -> dict[str, Any]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if CHECKPOINT_KEY not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not an asr checkpoint (no '{CHECKPOINT_KEY}' entry)")
    return ckpt


def _score(ckpt: dict[str, Any]) -> float | None:
    """The monitored score (e.g. val/wer) Lightning's ModelCheckpoint recorded when it saved this file, else the
    validation WER the module stored in it (weights-only checkpoints keep no callback state)."""
    for key, state in ckpt.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint") and state.get("current_score") is not None:
            return float(state["current_score"])
    return float(ckpt["val_wer"]) if ckpt.get("val_wer") is not None else None


def select_checkpoints(run_dir: str | os.PathLike, last: int = 0, best: int = 0) -> list[str]:
    """The ``last`` newest (by global step) or ``best`` lowest-scoring checkpoints of a run.

    Looks in ``<run_dir>/checkpoints`` and ``<run_dir>/checkpoints/top`` (the k best epochs that training keeps
    with ``average_best=k``); averaged checkpoints and duplicates of one step (``last.ckpt`` beside the file it
    copies) are skipped.
    """
    if (last > 0) == (best > 0):
        raise ValueError(f"give exactly one of last=N or best=N (got last={last}, best={best})")
    found: dict[int, tuple[str, float | None]] = {}
    ckpt_dir = Path(run_dir, "checkpoints")
    for path in sorted(ckpt_dir.glob("*.ckpt")) + sorted(ckpt_dir.glob("top/*.ckpt")):
        ckpt = _load(path)
        if "averaged_from" in ckpt:
            continue
        found.setdefault(int(ckpt.get("global_step", -1)), (str(path), _score(ckpt)))
    n = last or best
    if len(found) < n:
        raise ValueError(
            f"{run_dir}/checkpoints holds {len(found)} distinct checkpoints, fewer than the {n} asked for; "
            f"keep more during training (average_best=N keeps the N best epochs) or ask for fewer"
        )
    if last:
        return [found[step][0] for step in sorted(found)[-n:]]
    scored = [(score, path) for path, score in found.values() if score is not None]
    if len(scored) < n:
        raise ValueError(f"only {len(scored)} checkpoints in {run_dir} record a score; use last={n} instead")
    return [path for _, path in sorted(scored)[:n]]


def average_checkpoints(paths: Sequence[str], output: str) -> str:
    """Write a checkpoint whose float weights are the mean of ``paths``' (other tensors: the last one's).

    Raises:
        ValueError: the checkpoints describe different models.
    """
    if not paths:
        raise ValueError("no checkpoints to average: give checkpoints=[a.ckpt,b.ckpt] or run_dir=... last=N")
    first = _load(paths[0])
    total = {k: v.double() if v.is_floating_point() else v for k, v in first["state_dict"].items()}
    last = first
    for path in paths[1:]:
        ckpt = _load(path)
        if ckpt[CHECKPOINT_KEY]["model"] != first[CHECKPOINT_KEY]["model"] or (
            ckpt[CHECKPOINT_KEY]["tokenizer"] != first[CHECKPOINT_KEY]["tokenizer"]
        ):
            raise ValueError(
                f"{path} describes another model than {paths[0]}; average checkpoints of one run"
            )
        for k, v in ckpt["state_dict"].items():
            total[k] = total[k] + v.double() if v.is_floating_point() else v
        last = ckpt
    state = {
        k: (v / len(paths)).to(last["state_dict"][k].dtype) if v.is_floating_point() else v
        for k, v in total.items()
    }
    atomic_torch_save(
        {
            "state_dict": state,
            CHECKPOINT_KEY: last[CHECKPOINT_KEY],
            "global_step": last.get("global_step", 0),
            "averaged_from": [str(p) for p in paths],
        },
        output,
    )
    return output


@hydra.main(version_base="1.3", config_path="../conf", config_name="average")
def main(cfg: DictConfig) -> None:
    try:
        if cfg.checkpoints:
            paths = [str(p) for p in OmegaConf.to_container(cfg.checkpoints)]
        elif cfg.run_dir:
            paths = select_checkpoints(cfg.run_dir, cfg.last, cfg.best)
        else:
            raise ValueError(
                "give checkpoints=[a.ckpt,b.ckpt] or run_dir=exp/<recipe>/<run> with last=N or best=N"
            )
        kind = f"last{cfg.last}" if cfg.last else f"best{cfg.best}" if cfg.best else f"avg{len(paths)}"
        output = cfg.output or str(Path(paths[-1]).parent / f"averaged_{kind}.ckpt")
        average_checkpoints(paths, output)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"averaged {len(paths)} checkpoints -> {output}")


if __name__ == "__main__":
    main()
