"""A trained model on disk: a training checkpoint (``.ckpt``) or a model folder.

Both are read as tensors and plain data only (no pickled code, no ``_target_``), and both carry a
format version (:func:`migrate`). A model folder (``asr.export format=pretrained``) is laid out
for the Hugging Face Hub:

    config.json        format, quantize, the model and feature settings
    model.safetensors  the weights and feature statistics (int8 rows + ``<name>_scale`` for int8)
    tokenizer.json     the tokenizer's state
    README.md          the model card (written by asr.export)
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from asr.features import LogMelFeatures
from asr.model import BiLSTMCTC
from asr.quantize import check_quantize

CHECKPOINT_KEY = "asr"  # the plain-data description of the model inside every checkpoint
CHECKPOINT_VERSION = 2
STATE_PREFIX = "recognizer."  # the Recognizer's weights inside a training checkpoint's state_dict
FOLDER_FORMAT, FOLDER_VERSION = "asr-bilstm-ctc", 1
CONFIG, WEIGHTS, TOKENIZER, CARD = "config.json", "model.safetensors", "tokenizer.json", "README.md"
DERIVED = ("features.mel.",)  # state keys rebuilt from the feature settings, not in a folder
WRITES = ("checkpoint= takes a .ckpt file or a model folder, which `python -m asr.export "
          "checkpoint=<.ckpt> format=pretrained output=<folder>` writes")


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint as tensors and plain data (``weights_only``: unpickling runs no code).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is truncated, corrupt, or holds objects other than tensors and data.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist; training writes "
                                f"exp/<recipe>/<run>/checkpoints/{{last,best}}.ckpt")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # RuntimeError, UnpicklingError, EOFError, ... for a bad file
        raise ValueError(
            f"checkpoint {path} cannot be loaded safely ({err.__class__.__name__}: "
            f"{str(err).splitlines()[0]}); it is truncated, corrupt or contains pickled code. "
            f"Resume from another checkpoint (resume=<path>) or start fresh (resume=null)"
        ) from None


def migrate(ckpt: dict[str, Any]) -> dict[str, Any]:
    """Bring a checkpoint of an older layout up to :data:`CHECKPOINT_VERSION`, in place.

    Version 2 keeps the weights under ``recognizer.``; version 1 (no ``format_version``) at the
    top level (``model.*``, ``features.*``).
    """
    meta = ckpt[CHECKPOINT_KEY]
    version = meta.get("format_version", 1)
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint format_version {version!r} is newer than this asr reads "
                         f"({CHECKPOINT_VERSION}): update asr")
    if version == 1:
        for key in ("state_dict", "current_model_state"):  # the second: the EMA callback's
            if key in ckpt:
                ckpt[key] = {(STATE_PREFIX + k if k.startswith(("model.", "features.")) else k): v
                             for k, v in ckpt[key].items()}
    meta["format_version"] = CHECKPOINT_VERSION
    return ckpt


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint of ours, checked (:func:`validate_description`) and migrated: the one test of
    "is this an asr checkpoint" that loading, resuming and averaging share.

    Raises:
        FileNotFoundError, ValueError: naming ``path`` and what is wrong with it.
    """
    ckpt = load_checkpoint(path, map_location)
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not an asr checkpoint (no '{CHECKPOINT_KEY}' entry)")
    try:
        validate_description(ckpt[CHECKPOINT_KEY])
        return migrate(ckpt)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def recognizer_state(ckpt: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The Recognizer's weights in a (migrated) training checkpoint."""
    n = len(STATE_PREFIX)
    return {k[n:]: v for k, v in ckpt["state_dict"].items() if k.startswith(STATE_PREFIX)}


def _check_kwargs(section: str, value: Any, cls: type) -> None:
    """``value`` must be a dict of plain scalars whose keys are arguments of ``cls``."""
    if not isinstance(value, dict):
        raise ValueError(f"checkpoint entry asr.{section} must be a dict, "
                         f"found {type(value).__name__}")
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(str(k) for k in value if k not in params)
    if unknown:
        raise ValueError(f"checkpoint entry asr.{section} has unexpected keys {unknown}; "
                         f"{cls.__name__} takes {sorted(params)}")
    for k, v in value.items():
        if not isinstance(v, (bool, int, float, str, type(None))):
            raise ValueError(f"checkpoint entry asr.{section}.{k} must be a number, string or "
                             f"null, found {type(v).__name__}")


def validate_description(meta: Any) -> dict[str, Any]:
    """Check a model description (tokenizer, features, model settings) before anything is built
    from it: only known keys with plain values, so a file cannot name code to run.

    Raises:
        ValueError: naming the unexpected key or type.
    """
    if not isinstance(meta, dict):
        raise ValueError(f"checkpoint entry 'asr' must be a dict, found {type(meta).__name__}")
    allowed = {"tokenizer", "features", "model", "eval_manifests", "format_version"}
    unknown = sorted(str(k) for k in meta if k not in allowed)
    if unknown:
        raise ValueError(f"checkpoint entry 'asr' has unexpected keys {unknown}; "
                         f"expected {sorted(allowed)}")
    missing = sorted({"tokenizer", "features", "model"} - set(meta))
    if missing:
        raise ValueError(f"checkpoint entry 'asr' lacks {missing}")
    _check_kwargs("features", meta["features"], LogMelFeatures)
    _check_kwargs("model", meta["model"], BiLSTMCTC)
    tok = meta["tokenizer"]
    if not isinstance(tok, dict) or not isinstance(tok.get("type"), str):
        raise ValueError("checkpoint entry asr.tokenizer must be a dict with a 'type' string")
    odd = sorted(str(k) for k, v in tok.items() if not isinstance(k, str) or not isinstance(v, str))
    if odd:
        raise ValueError(f"checkpoint entry asr.tokenizer values must be strings, not for {odd}")
    manifests = meta.get("eval_manifests", {})
    if not isinstance(manifests, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in manifests.items()
    ):
        raise ValueError("checkpoint entry asr.eval_manifests must map names to path strings")
    return meta


# ------------------------------------------------------------------------------- model folders
def is_model_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a model folder (a directory) rather than a checkpoint file."""
    return Path(path).is_dir()


def saved_quantization(path: str | os.PathLike) -> str | None:
    """``"int8"`` for a model folder written with ``quantize=int8``, else ``None``."""
    return read_folder_config(path)[1] if is_model_folder(path) else None


def weights_file(path: str | os.PathLike) -> Path:
    """The file holding the weights: the checkpoint itself or a folder's ``model.safetensors``."""
    return Path(path) / WEIGHTS if is_model_folder(path) else Path(path)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; {WRITES}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); export the model folder "
                         f"again") from None


def read_folder_config(folder: str | os.PathLike) -> tuple[dict[str, Any], str | None]:
    """A model folder's ``(description, quantize)``, checked by :func:`validate_description`.

    Raises:
        FileNotFoundError: ``config.json`` or ``tokenizer.json`` is missing (named).
        ValueError: a file is not what ``asr.export`` writes (named, with what is wrong).
    """
    folder = Path(folder)
    config = _read_json(folder / CONFIG)
    if not isinstance(config, dict) or config.get("format") != FOLDER_FORMAT:
        raise ValueError(f"{folder / CONFIG} is not an asr model's config "
                         f"(no \"format\": \"{FOLDER_FORMAT}\"); {WRITES}")
    if config.get("format_version") != FOLDER_VERSION:
        raise ValueError(f"{folder / CONFIG} has format_version {config.get('format_version')!r}; "
                         f"this asr reads {FOLDER_VERSION}: use the asr that wrote it, or export "
                         "the model again")
    try:
        quantize = check_quantize(config.get("quantize"), "config.json's \"quantize\"")
        description = validate_description({"tokenizer": _read_json(folder / TOKENIZER),
                                            "features": config.get("features"),
                                            "model": config.get("model")})
    except ValueError as err:
        raise ValueError(f"{folder}: {err}") from None
    return description, quantize


def read_folder_tensors(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of ``<folder>/model.safetensors`` (on the CPU)."""
    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; {WRITES}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} cannot be read ({err}); it is truncated or not a safetensors "
                         "file") from None


def write_folder(folder: str | os.PathLike, description: Mapping[str, Any],
                 tensors: Mapping[str, torch.Tensor], quantize: str | None,
                 info: Mapping[str, Any] | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``tokenizer.json`` into ``folder``.

    ``info`` is plain JSON kept in config.json under ``"training"``, for people, not for loading.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    kept = {k: v.detach().cpu().contiguous() for k, v in tensors.items()
            if not k.startswith(DERIVED)}
    # bytes written as any file is (save_file would make it readable by its owner only)
    (folder / WEIGHTS).write_bytes(save(kept, metadata={"format": "pt"}))
    config = {"format": FOLDER_FORMAT, "format_version": FOLDER_VERSION, "quantize": quantize,
              "model": description["model"], "features": description["features"],
              "training": dict(info or {})}
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (folder / TOKENIZER).write_text(
        json.dumps(description["tokenizer"], ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return folder
