"""Checkpoint averaging and the model-selection rule built on it.

- :func:`average_checkpoints`: mean weights of checkpoints of one run (``python -m asr.average``).
- :class:`AverageBest`: opt-in callback (``callbacks/average_best.yaml``): keeps the k best epochs,
  averages them when training ends, and puts the mean or the best epoch in ``best.ckpt``.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, WeightAveraging

from asr.model_files import CHECKPOINT_KEY, read_checkpoint, recognizer_state
from asr.training.checkpointing import atomic_torch_save
from asr.training.module import batch_error_counts

log = logging.getLogger(__name__)

SELECT_RULES = ("dev", "always")


def _score(ckpt: dict[str, Any]) -> float | None:
    """The score ModelCheckpoint recorded in this file, else the module's stored validation WER
    (weights-only checkpoints keep no callback state)."""
    for key, state in ckpt.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint") and state.get("current_score") is not None:
            return float(state["current_score"])
    return float(ckpt["val_wer"]) if ckpt.get("val_wer") is not None else None


def select_checkpoints(run_dir: str | os.PathLike, last: int = 0, best: int = 0) -> list[str]:
    """The ``last`` newest (by global step) or ``best`` lowest-scoring checkpoints of a run.

    Looks in ``<run_dir>/checkpoints`` and its ``top/``; skips averaged checkpoints and
    duplicates of one step (``last.ckpt`` beside the file it copies).
    """
    if (last > 0) == (best > 0):
        raise ValueError(f"give exactly one of last=N or best=N (got last={last}, best={best})")
    found: dict[int, tuple[str, float | None]] = {}
    ckpt_dir = Path(run_dir, "checkpoints")
    for path in sorted(ckpt_dir.glob("*.ckpt")) + sorted(ckpt_dir.glob("top/*.ckpt")):
        ckpt = read_checkpoint(path)
        if "averaged_from" in ckpt:
            continue
        found.setdefault(int(ckpt.get("global_step", -1)), (str(path), _score(ckpt)))
    n = last or best
    if len(found) < n:
        raise ValueError(
            f"{run_dir}/checkpoints holds {len(found)} distinct checkpoints, fewer than the {n} "
            f"asked for; keep more during training (callbacks.average_best.k=N keeps the N best "
            f"epochs) or ask for fewer"
        )
    if last:
        return [found[step][0] for step in sorted(found)[-n:]]
    scored = [(score, path) for path, score in found.values() if score is not None]
    if len(scored) < n:
        raise ValueError(f"only {len(scored)} checkpoints in {run_dir} record a score; "
                         f"use last={n} instead")
    return [path for _, path in sorted(scored)[:n]]


def _weights(paths: Sequence[str], weights: Sequence[float] | None) -> list[float]:
    """One weight per checkpoint, summing to 1 (``None``: equal)."""
    if weights is None:
        return [1.0 / len(paths)] * len(paths)
    weights = [float(w) for w in weights]
    if len(weights) != len(paths) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"weights={weights}: give one non-negative weight per checkpoint "
                         f"({len(paths)}), not all zero; they are scaled to sum to 1")
    return [w / sum(weights) for w in weights]


MODEL_PREFIX = "recognizer.model."


def _module_shares(paths: Sequence[str], module_weights: Mapping[str, Sequence[float]] | None
                   ) -> dict[str, list[float]]:
    """``module_weights``, each scaled to sum to 1."""
    shares: dict[str, list[float]] = {}
    for module, w in (module_weights or {}).items():
        try:
            shares[module] = _weights(paths, w)
        except ValueError as e:
            raise ValueError(f"module_weights.{module}: {e}") from None
    return shares


def _module_scales(names: Sequence[str], shares: Mapping[str, list[float]]
                   ) -> dict[str, list[float]]:
    """``{parameter name: shares}`` for the parameters under a module that ``shares`` names (the
    longest matching name wins); the others are left to ``weights``."""
    scales: dict[str, list[float]] = {}
    for module in sorted(shares, key=len):  # longer (deeper) names override shorter ones
        prefix = MODEL_PREFIX + module + "."
        matched = [n for n in names if n.startswith(prefix)]
        if not matched:
            modules = sorted({n.removeprefix(MODEL_PREFIX).rsplit(".", 1)[0]
                              for n in names if n.startswith(MODEL_PREFIX)})
            tops = sorted({m.split(".")[0] for m in modules})
            raise ValueError(
                f"module_weights: the model has no module {module!r}; name one of its modules, "
                f"such as {', '.join(tops)}, or a deeper one ({', '.join(modules[:6])}, ...)"
            )
        scales.update(dict.fromkeys(matched, shares[module]))
    return scales


def _check_same_model(ckpt: dict[str, Any], first: dict[str, Any], path: str,
                      first_path: str) -> None:
    if ckpt[CHECKPOINT_KEY]["model"] != first[CHECKPOINT_KEY]["model"] or (
        ckpt[CHECKPOINT_KEY]["tokenizer"] != first[CHECKPOINT_KEY]["tokenizer"]
    ):
        raise ValueError(
            f"{path} describes another model than {first_path}; average checkpoints of one "
            "model (one run, or a model and its fine-tuned copy)"
        )


def average_checkpoints(paths: Sequence[str], output: str,
                        weights: Sequence[float] | None = None,
                        module_weights: Mapping[str, Sequence[float]] | None = None) -> str:
    """Write a checkpoint whose float weights are the (weighted) mean of ``paths``' (others: the
    last one's).

    Args:
        paths: checkpoints of one model (same architecture and tokenizer).
        output: the checkpoint to write.
        weights: one per path, scaled to sum to 1 (``None``: equal). A model and its fine-tuned
            copy interpolated, ``[0.75, 0.25]``, keep more of the first's accuracy and some of
            the second's robustness (WiSE-FT, Wortsman et al. 2022).
        module_weights: other weights for some modules of the network, by name under
            ``recognizer.model`` (``frontend``, ``lstm``, ``lstm.layers.0``, ``classifier``...;
            the longest matching name wins), e.g. ``{"frontend": [0.75, 0.25]}``.

    Raises:
        ValueError: the checkpoints describe different models; bad ``weights`` or
            ``module_weights``.
    """
    if not paths:
        raise ValueError("no checkpoints to average: give checkpoints=[a.ckpt,b.ckpt] or "
                         "run_dir=... last=N")
    scale = _weights(paths, weights)
    module_shares = _module_shares(paths, module_weights)
    first = read_checkpoint(paths[0])
    per_module = _module_scales(list(first["state_dict"]), module_shares)

    def share(name: str, i: int) -> float:
        return per_module[name][i] if name in per_module else scale[i]

    total = {k: v.double() * share(k, 0) if v.is_floating_point() else v
             for k, v in first["state_dict"].items()}
    last = first
    for i, path in enumerate(paths[1:], start=1):
        ckpt = read_checkpoint(path)
        _check_same_model(ckpt, first, path, paths[0])
        for k, v in ckpt["state_dict"].items():
            total[k] = total[k] + v.double() * share(k, i) if v.is_floating_point() else v
        last = ckpt
    state = {k: v.to(last["state_dict"][k].dtype) if v.is_floating_point() else v
             for k, v in total.items()}
    record: dict[str, Any] = {"averaged_weights": scale}
    if module_shares:
        record["averaged_module_weights"] = module_shares
    atomic_torch_save(
        {
            "state_dict": state,
            CHECKPOINT_KEY: last[CHECKPOINT_KEY],
            "global_step": last.get("global_step", 0),
            "averaged_from": [str(p) for p in paths],
            **record,
        },
        output,
    )
    return output


class AverageBest(ModelCheckpoint):
    """Keep the ``k`` best epochs by ``val/wer`` (``<dirpath>/epochNNN.ckpt``); when the fit ends,
    write their mean and choose what ``best_path`` holds (the outcome is :attr:`selection`).

    ``select="dev"``: the mean if its validation WER is no higher than the best epoch's;
    ``"always"``: the mean. See docs/training.md.

    Args:
        k: how many epochs to keep and average (>= 2).
        select: ``"dev"`` or ``"always"``.
        best_path: the ``best.ckpt`` that the best-epoch ModelCheckpoint writes.
        dirpath: where the k files go.
    """

    def __init__(self, k: int, select: str, best_path: str, dirpath: str) -> None:
        if k < 2:
            raise ValueError(f"callbacks.average_best.k must be >= 2 (the epochs to average), "
                             f"got {k}")
        if select not in SELECT_RULES:
            raise ValueError(f"callbacks.average_best.select={select!r}: use 'dev' (the mean of "
                             "the k best epochs if it scores no worse on validation than the best "
                             "epoch) or 'always'")
        super().__init__(dirpath=dirpath, filename="epoch{epoch:03d}",
                         auto_insert_metric_name=False, monitor="val/wer", mode="min", save_top_k=k,
                         save_weights_only=True, enable_version_counter=False)
        self.select, self.best_path = select, best_path
        self.selection: dict[str, Any] = {"chosen": "epoch"}

    @property
    def state_key(self) -> str:
        # the best-epoch ModelCheckpoint monitors the same metric: resume state needs its own key
        return self._generate_state_key(monitor=self.monitor, mode=self.mode, top_k=self.save_top_k)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if any(isinstance(c, WeightAveraging) for c in trainer.callbacks):
            # weights-only files skip the callbacks' on_save_checkpoint: raw weights, not the EMA
            raise ValueError("callbacks.average_best and callbacks.ema do not combine: the k best "
                             "epochs' files would hold the raw weights, not the moving average "
                             "validation scored; keep one of them")
        super().setup(trainer, pl_module, stage)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and Path(self.best_path).is_file():
            self.selection = self.choose(lambda path: self._val_wer(path, trainer, pl_module))

    def choose(self, val_wer: Callable[[str], float]) -> dict[str, Any]:
        """Average the kept epochs and put the chosen weights in ``best_path``.

        Args:
            val_wer: the validation WER of a checkpoint's weights.

        Returns:
            ``{"averaged": [paths, best first], "val_wer_average", "val_wer_best_epoch", "chosen":
            "average" | "epoch"}``.
        """
        paths = sorted(self.best_k_models, key=lambda p: float(self.best_k_models[p]))
        out: dict[str, Any] = {"averaged": paths, "val_wer_average": None,
                               "val_wer_best_epoch": None, "chosen": "epoch"}
        if len(paths) < 2:
            return out
        averaged = str(Path(self.best_path).with_name("averaged.ckpt"))
        average_checkpoints(paths, averaged)
        out["val_wer_average"] = val_wer(averaged)
        out["val_wer_best_epoch"] = val_wer(self.best_path)
        if self.select == "always" or out["val_wer_average"] <= out["val_wer_best_epoch"]:
            os.replace(averaged, self.best_path)
            out["chosen"] = "average"
        else:
            os.remove(averaged)
        log.info("validation WER: mean of the %d best epochs %.4f, best epoch %.4f: best.ckpt is "
                 "the %s", len(paths), out["val_wer_average"], out["val_wer_best_epoch"],
                 "mean" if out["chosen"] == "average" else "best epoch")
        return out

    @staticmethod
    @torch.inference_mode()
    def _val_wer(path: str, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        """The validation WER of the weights in ``path``, by the loop's own rule
        (:func:`asr.training.module.batch_error_counts`)."""
        recognizer = copy.deepcopy(pl_module.recognizer).eval()
        recognizer.load_state_dict(recognizer_state(read_checkpoint(path)))
        counts = torch.zeros(4, dtype=torch.float64)
        for batch in trainer.datamodule.whole_loader("val"):
            out = recognizer(batch.audio.to(recognizer.device), batch.audio_lengths) if batch.ids \
                else (None, None)
            counts += batch_error_counts(recognizer.decoder, *out, batch)
        return float(counts[0] / counts[1].clamp(min=1))
