"""A run's facts: ``config.yaml`` and ``run.json`` (seed, git commit, package versions, host) when
it starts, more facts merged in when it ends; where a checkpoint's run dir is."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

PACKAGES = ("torch", "torchaudio", "pytorch-lightning", "hydra-core", "omegaconf", "jiwer",
            "soundfile", "numpy", "sentencepiece", "flashlight-text", "matplotlib", "rich",
            "tensorboard")
ROOT = Path(__file__).resolve().parents[2]


def git_state(repo: str | os.PathLike = ROOT) -> dict:
    """``{"commit", "dirty"}`` of the checkout the code runs from (``None`` values outside one)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                                  timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (``None`` when not installed), plus Python's."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_run_info(out_dir: str | os.PathLike, cfg: DictConfig) -> Path:
    """Write ``<out_dir>/config.yaml`` (interpolations resolved) and ``<out_dir>/run.json`` (seed,
    git commit, package versions, torch build and CUDA, command line, host, start time)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    info = {
        "seed": cfg.get("seed"),
        "git": git_state(),
        "packages": package_versions(),
        "torch_build": torch.__version__,  # the local tag says which wheel: +cpu, +cu130, ...
        "cuda": torch.version.cuda,
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "host": platform.node(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = out / "run.json"
    path.write_text(json.dumps(info, indent=2) + "\n")
    return path


def update_run_info(out_dir: str | os.PathLike, **facts: object) -> dict:
    """Merge ``facts`` (e.g. ``train_seconds``, ``epochs``) into ``<out_dir>/run.json``."""
    path = Path(out_dir) / "run.json"
    info = json.loads(path.read_text()) if path.is_file() else {}
    info.update(facts)
    path.write_text(json.dumps(info, indent=2) + "\n")
    return info


def run_dir_of(checkpoint: str | os.PathLike) -> Path:
    """``exp/<recipe>/<run>/checkpoints[/top]/x.ckpt`` -> ``exp/<recipe>/<run>``; a checkpoint
    outside a ``checkpoints/`` folder -> the folder it is in."""
    path = Path(checkpoint).resolve()
    for parent in path.parents:
        if parent.name == "checkpoints":
            return parent.parent
    return path.parent
