"""A model folder to hand on: ``asr.export format=pretrained`` writes it, ``ASRModule.load_for_inference`` reads it.

    <folder>/config.json        what rebuilds the module: format, quantize, the model and feature settings
    <folder>/model.safetensors  the weights and the feature statistics (float32; with quantize=int8 each LSTM and
                                linear weight is int8 rows + ``<name>_scale`` float32 scales, see asr.quantize)
    <folder>/tokenizer.json     the tokenizer's state (a SentencePiece model as base64 text, as in a checkpoint)
    <folder>/README.md          the model card (written by asr.export)

The layout is the Hugging Face Hub's (``huggingface_hub.upload_folder`` publishes the folder as it is), and nothing
in it points outside it: the dev/test manifests the model was scored on in training are kept in config.json as
information only. The STFT window and the Mel filterbank are not stored: they are functions of the feature settings
and are rebuilt on load. Loading reads tensors and JSON only; no code is named or run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from asr.quantize import check_quantize, float_state, int8_weights, is_quantized, load_int8_weights, quantize_int8
from asr.report.run_info import run_dir_of
from asr.training.checkpointing import validate_description

if TYPE_CHECKING:
    from asr.training.module import ASRModule

FORMAT, FORMAT_VERSION = "asr-bilstm-ctc", 1
CONFIG, WEIGHTS, TOKENIZER, CARD = "config.json", "model.safetensors", "tokenizer.json", "README.md"
DERIVED = ("features.mel.",)  # state_dict keys rebuilt from the feature settings, not stored
WRITES = ("checkpoint= takes a .ckpt file or a model folder, which `python -m asr.export checkpoint=<.ckpt> "
          "format=pretrained output=<folder>` writes")


def is_pretrained(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a model folder (a directory) rather than a checkpoint file."""
    return Path(path).is_dir()


def model_home(checkpoint: str | os.PathLike) -> Path:
    """Where a model's evaluation outputs go by default: a model folder is its own home (``<folder>/decode``),
    a checkpoint's is its run dir (:func:`asr.report.run_info.run_dir_of`)."""
    return Path(checkpoint).resolve() if is_pretrained(checkpoint) else run_dir_of(checkpoint)


def saved_quantization(checkpoint: str | os.PathLike) -> str | None:
    """``"int8"`` for a model folder written with ``quantize=int8``, else ``None`` (checkpoints are float)."""
    return read_config(checkpoint)[1] if is_pretrained(checkpoint) else None


def save_pretrained(
    module: ASRModule, folder: str | os.PathLike, quantize: str | None = None, info: Mapping[str, Any] | None = None
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``tokenizer.json`` of ``module`` into ``folder``.

    Args:
        module: a module for inference (``ASRModule.load_for_inference``); with ``quantize="int8"`` it is quantised
            in place (:func:`asr.quantize.quantize_int8`).
        folder: created if needed; files of the same names in it are replaced.
        quantize: ``None`` (float32 weights) or ``"int8"``.
        info: plain JSON data kept in config.json under ``"training"`` (read by people, not by loading).

    Returns:
        the folder.
    """
    if is_quantized(module) and not check_quantize(quantize):
        raise ValueError("the model's weights are int8 (it was loaded from an int8 folder): export it with "
                         "quantize=int8, or export the float checkpoint")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    description = module.describe()
    tensors = int8_weights(quantize_int8(module)) if quantize else module.state_dict()
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items() if not k.startswith(DERIVED)}
    # bytes written as any file is (save_file would create it readable by its owner only)
    (folder / WEIGHTS).write_bytes(save(tensors, metadata={"format": "pt"}))
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "quantize": quantize,
              "model": description["model"], "features": description["features"],
              "training": {"eval_manifests": description.get("eval_manifests", {}), **(info or {})}}
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (folder / TOKENIZER).write_text(json.dumps(description["tokenizer"], ensure_ascii=False, indent=2) + "\n",
                                    encoding="utf-8")
    return folder


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; {WRITES}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); export the model folder again") from None


def read_config(folder: str | os.PathLike) -> tuple[dict[str, Any], str | None]:
    """A model folder's ``(description, quantize)``: the plain data ``ASRModule.from_description`` builds from
    (checked by :func:`asr.training.checkpointing.validate_description`) and ``None`` or ``"int8"``.

    Raises:
        FileNotFoundError: ``config.json`` or ``tokenizer.json`` is missing (the message names it).
        ValueError: a file is not what ``asr.export`` writes (the message names it and what is wrong).
    """
    folder = Path(folder)
    config = _read_json(folder / CONFIG)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{folder / CONFIG} is not an asr model's config (no \"format\": \"{FORMAT}\"); {WRITES}")
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{folder / CONFIG} has format_version {config.get('format_version')!r}; this asr reads "
                         f"{FORMAT_VERSION}: use the asr version that wrote it, or export the model again")
    try:
        quantize = check_quantize(config.get("quantize"), "config.json's \"quantize\"")
        description = validate_description({"tokenizer": _read_json(folder / TOKENIZER),
                                            "features": config.get("features"), "model": config.get("model")})
    except ValueError as err:
        raise ValueError(f"{folder}: {err}") from None
    return description, quantize


def load_weights(module: ASRModule, folder: str | os.PathLike, quantize: str | None) -> ASRModule:
    """Give ``module`` (built from the folder's config, on the CPU) the weights of ``<folder>/model.safetensors``;
    int8 weights make it an int8 module (:func:`asr.quantize.load_int8_weights`).

    Raises:
        FileNotFoundError: no ``model.safetensors``.
        ValueError: the file is unreadable, or its tensors are not the model's (missing, extra or misshapen ones).
    """
    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; {WRITES}")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} cannot be read ({err}); it is truncated or not a safetensors file") from None
    try:
        used = load_int8_weights(module, tensors) if quantize else set()
        state = {k: v for k, v in float_state(module).items() if not k.startswith(DERIVED)}
        missing, extra = sorted(set(state) - set(tensors)), sorted(set(tensors) - set(state) - used)
        wrong = sorted(k for k in set(state) & set(tensors) if state[k].shape != tensors[k].shape)
        if missing or extra or wrong:
            raise ValueError(f"missing tensors {missing[:5]}, unexpected {extra[:5]}, misshapen {wrong[:5]}")
        with torch.no_grad():
            for k, v in state.items():  # state_dict() tensors share the parameters' and buffers' storage
                v.copy_(tensors[k])
    except (KeyError, ValueError) as err:
        raise ValueError(f"{path} does not hold the weights of the model {Path(folder) / CONFIG} describes "
                         f"({str(err).strip()[:300]}); export the model folder again") from None
    return module
