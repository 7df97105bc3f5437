"""Fine-tuning: ``init_from=<.ckpt or model folder>`` starts a run from a trained model's weights.

- :func:`init_from` copies the source's tensors into a new run's recognizer. Every tensor must
  match by name and shape, except the output layers whose shape follows a class count that
  changed (a different tokenizer): those keep their fresh initialisation. The feature settings
  must match too: the encoder learnt from those features.
- :func:`apply_init_from` is what ``asr.train`` calls: only on a fresh start (a resumed run takes
  everything from its ``last.ckpt``), with ``finetune.keep_cmvn``.
- :class:`FreezeEncoder` trains only the output layers for the first
  ``finetune.freeze_encoder_steps`` optimiser steps: the gradients of a random output layer do
  not then wreck a trained encoder.

The run's optimiser and schedule are new; the tokenizer is the run's own, built from its data.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
from omegaconf import DictConfig
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.utilities import rank_zero_only

from asr.model_files import (
    CHECKPOINT_KEY,
    CONFIG,
    DERIVED,
    is_model_folder,
    read_checkpoint,
    read_folder_config,
    read_folder_tensors,
    recognizer_state,
)
from asr.training.module import ASRModule

log = logging.getLogger(__name__)

# the recognizer's layers whose shape follows a class count: the final output layer, the
# intermediate CTC's own one, and the self-conditioning projection (classes -> hidden)
OUTPUT_LAYERS = ("model.classifier.", "model.inter_classifier.", "model.condition_proj.")
GLOBAL_STATS = ("features.global_mean", "features.global_std")
# model.* settings that change the encoder's tensors (input_dim is features.n_mels)
ARCHITECTURE = ("hidden_size", "num_layers", "subsampling", "subsampling_factor")
FEATURES = ("sample_rate", "n_mels", "win_ms", "hop_ms", "n_fft", "normalize")


def read_source(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(description, tensors)`` of a ``.ckpt`` or a float model folder (on the CPU).

    Raises:
        FileNotFoundError, ValueError: naming ``init_from`` and what is wrong with the source.
    """
    best = Path(path) / "checkpoints" / "best.ckpt"
    if is_model_folder(path) and not (Path(path) / CONFIG).is_file() and best.is_file():
        raise FileNotFoundError(f"init_from={path} is a training run's folder, not a model "
                                f"folder: use init_from={best}")
    try:
        if is_model_folder(path):
            description, quantize = read_folder_config(path)
            if quantize:
                raise ValueError(
                    f"the model folder holds {quantize} weights, rounded for inference, which "
                    "cannot be trained further: use the float folder (python -m asr.export "
                    "format=pretrained without quantize) or the .ckpt it was exported from")
            return description, read_folder_tensors(path)
        ckpt = read_checkpoint(path)
        return ckpt[CHECKPOINT_KEY], recognizer_state(ckpt)
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"init_from={path}: {err}") from None


def _labels(description: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """What each output layer's shape follows: the tokenizer, or the intermediate CTC's classes."""
    main = ("tokenizer", json.dumps(description["tokenizer"], sort_keys=True))
    inter = description["model"].get("inter_classes")
    own = ("inter_classes", inter)
    return {"model.classifier.": main, "model.inter_classifier.": own,
            "model.condition_proj.": own if inter else main}


def _output_layer(name: str) -> str | None:
    return next((p for p in OUTPUT_LAYERS if name.startswith(p)), None)


def _tokenizer_name(description: dict[str, Any]) -> str:
    return (f"{description['tokenizer']['type']} "
            f"({description['model']['num_classes']} classes)")


def _renewed(src: dict[str, Any], run: dict[str, Any], src_state: dict[str, torch.Tensor],
             run_state: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """The output-layer tensors to leave at their fresh init, the source's output-layer tensors
    this run has no place for, and why (one phrase per reason)."""
    src_labels, run_labels = _labels(src), _labels(run)
    renewed, why = [], []
    for name in run_state:
        layer = _output_layer(name)
        if layer is None:
            continue
        if name not in src_state:
            renewed.append(name)
            why.append(f"{layer.rstrip('.')} is not in the source model")
        elif src_labels[layer] != run_labels[layer]:
            renewed.append(name)
            why.append(f"tokenizer differs: {_tokenizer_name(src)} -> {_tokenizer_name(run)}"
                       if src_labels[layer][0] == "tokenizer" else
                       f"intermediate classes differ: {src_labels[layer][1]} -> "
                       f"{run_labels[layer][1]}")
    dropped = [n for n in src_state if _output_layer(n) and n not in run_state]
    return renewed, dropped, list(dict.fromkeys(why))


def _check_features(path: str, src: dict[str, Any], run: dict[str, Any]) -> None:
    for key in FEATURES:
        there, here = src["features"].get(key), run["features"].get(key)
        if there != here:
            raise ValueError(f"init_from={path}: the source model was trained on features with "
                             f"features.{key}={there}, this run has {here}: set "
                             f"features.{key}={there} (the encoder learnt from those features)")


def _fix(src: dict[str, Any], run: dict[str, Any]) -> str:
    """The model.* settings to change so that the architectures match."""
    diff = [k for k in ARCHITECTURE if src["model"].get(k) != run["model"].get(k)]
    if not diff:
        return ("compare the model.* settings with the source's (only the output layers may "
                "differ, with the tokenizer)")
    return "set " + ", ".join(f"model.{k}={src['model'][k]}" for k in diff) + (
        " (the source's; this run has " + ", ".join(f"{run['model'][k]}" for k in diff) + ")")


def _check_tensors(path: str, src: dict[str, Any], run: dict[str, Any],
                   src_state: dict[str, torch.Tensor], run_state: dict[str, torch.Tensor],
                   keys: set[str], ignored: set[str]) -> None:
    """ValueError naming the tensors that are missing, unexpected or misshapen."""
    missing = sorted(keys - set(src_state))
    unexpected = sorted(set(src_state) - keys - ignored)
    if missing or unexpected:
        raise ValueError(f"init_from={path}: the models differ in their layers (missing there: "
                         f"{missing[:6]}, not here: {unexpected[:6]}): {_fix(src, run)}")
    for name in (k for k in run_state if k in keys):  # the model's order: the first layer first
        there, here = tuple(src_state[name].shape), tuple(run_state[name].shape)
        if there != here:
            raise ValueError(f"init_from={path}: {name} has shape {there} there and {here} "
                             f"here: {_fix(src, run)}")


def init_from(module: ASRModule, path: str | os.PathLike, keep_cmvn: bool = True) -> dict:
    """Copy the weights of the model at ``path`` into ``module.recognizer``.

    Args:
        module: the new run's module, freshly initialised with the run's tokenizer.
        path: a training checkpoint (``.ckpt``) or a float model folder.
        keep_cmvn: copy the source's global feature statistics; ``False`` leaves them to be fitted
            on this run's data.

    Returns:
        ``{"source", "copied", "renewed", "dropped", "cmvn"}``: tensors copied (a count), made
        anew and left out of the source (names), and ``cmvn``: ``kept``, ``refitted`` or
        ``unused`` (the features do not use global statistics).

    Raises:
        FileNotFoundError, ValueError: the source cannot be read, is int8, or does not fit this
            run's model (the message names the tensor, both shapes and the setting to change).
    """
    path = str(path)
    src, src_state = read_source(path)
    recognizer = module.recognizer
    run = recognizer.describe()
    _check_features(path, src, run)
    run_state = {k: v for k, v in recognizer.state_dict().items() if not k.startswith(DERIVED)}
    src_state = {k: v for k, v in src_state.items() if not k.startswith(DERIVED)}
    renewed, dropped, why = _renewed(src, run, src_state, run_state)
    stats = set(GLOBAL_STATS) & set(run_state)
    keys = set(run_state) - set(renewed) - (set() if keep_cmvn else stats)
    _check_tensors(path, src, run, src_state, run_state, keys,
                   {*renewed, *dropped, *(() if keep_cmvn else stats)})
    with torch.no_grad():
        for name in keys:  # state_dict() tensors share the parameters' storage
            run_state[name].copy_(src_state[name])
    cmvn = "unused" if not stats else "kept" if keep_cmvn else "refitted"
    log.info("init_from=%s: %d tensors copied; %s; global feature statistics %s%s", path,
             len(keys), f"made anew {renewed} ({'; '.join(why)})" if renewed else "none made anew",
             cmvn, f"; left out of the source: {dropped}" if dropped else "")
    return {"source": path, "copied": len(keys), "renewed": renewed, "dropped": dropped,
            "cmvn": cmvn}


def keeps_cmvn(cfg: DictConfig) -> bool:
    """Whether the run's global feature statistics come from ``init_from`` (not fitted here)."""
    return bool(cfg.get("init_from")) and bool((cfg.get("finetune") or {}).get("keep_cmvn", True))


def apply_init_from(cfg: DictConfig, module: ASRModule, resumed: str | None,
                    out_dir: Path) -> dict | None:
    """``init_from`` for ``asr.train``: ``None`` without it; on a fresh start, :func:`init_from`'s
    summary (kept statistics are written to ``global_stats.json``); resuming, a note that the
    weights come from the checkpoint (applying it again would overwrite the resumed ones)."""
    source = cfg.get("init_from")
    if not source:
        return None
    if resumed is not None:
        log.info("init_from=%s not applied: the run resumes from %s", source, resumed)
        return {"source": str(source), "applied": False, "resumed_from": resumed}
    summary = {**init_from(module, source, keeps_cmvn(cfg)), "applied": True}
    if summary["cmvn"] == "kept" and rank_zero_only.rank == 0:
        features = module.recognizer.features
        (out_dir / "global_stats.json").write_text(json.dumps(
            {"kept_from": str(source), "mean": features.global_mean.tolist(),
             "std": features.global_std.tolist()}) + "\n")
    return summary


class FreezeEncoder(L.Callback):
    """Train only the output layers (:data:`OUTPUT_LAYERS`) while ``trainer.global_step < steps``.

    The other weights get ``requires_grad=False``, so they have no gradient, and AdamW (weight
    decay included) leaves a parameter without one untouched. Decided from ``global_step`` when
    training starts (a resumed run freezes as the uninterrupted one did) and after each batch,
    for the next: before any callback's ``on_train_batch_start`` (weight noise skips frozen
    weights; adding and taking off its noise would change them by rounding).

    Args:
        steps: optimiser steps to train the output layers alone (``finetune.freeze_encoder_steps``).
    """

    def __init__(self, steps: int) -> None:
        if steps < 1:
            raise ValueError(f"FreezeEncoder needs steps >= 1, got {steps} (0: leave it out)")
        self.steps = int(steps)
        self.frozen = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        strategy = trainer.strategy
        if (isinstance(strategy, DDPStrategy) and trainer.world_size > 1
                and not getattr(strategy, "_ddp_kwargs", {}).get("find_unused_parameters")):
            raise ValueError(
                f"finetune.freeze_encoder_steps={self.steps} with DDP: the frozen weights get no "
                "gradient, which DDP must be told of: add "
                "trainer.strategy=ddp_find_unused_parameters_true, or "
                "finetune.freeze_encoder_steps=0")

    def _set(self, pl_module: L.LightningModule, frozen: bool) -> None:
        if frozen == self.frozen:
            return
        model = pl_module.recognizer.model
        for name, param in model.named_parameters():
            if not _output_layer(f"model.{name}"):
                param.requires_grad_(not frozen)
        self.frozen = frozen
        log.info("encoder %s at step %d (finetune.freeze_encoder_steps=%d)",
                 "frozen" if frozen else "unfrozen", pl_module.global_step, self.steps)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._set(pl_module, trainer.global_step < self.steps)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._set(pl_module, trainer.global_step < self.steps)  # counts the step just taken

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._set(pl_module, False)


def finetune_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The fine-tuning callbacks ``cfg`` asks for (:class:`FreezeEncoder`); checks the settings
    before any data is touched."""
    if (cfg.get("finetune") or {}).get("required") and not cfg.get("init_from"):
        raise ValueError(f"{cfg.get('name')} fine-tunes a trained model (finetune.required): add "
                         "init_from=<its .ckpt or model folder>, e.g. "
                         "init_from=exp/an4/<run>/checkpoints/best.ckpt")
    steps = int((cfg.get("finetune") or {}).get("freeze_encoder_steps", 0) or 0)
    if steps < 0:
        raise ValueError(f"finetune.freeze_encoder_steps must be >= 0, got {steps}")
    if steps and not cfg.get("init_from"):
        raise ValueError(f"finetune.freeze_encoder_steps={steps} freezes a trained encoder, but "
                         "init_from is not set: add init_from=<.ckpt or model folder>, or "
                         "finetune.freeze_encoder_steps=0")
    return [FreezeEncoder(steps)] if steps else []
