"""Experiment trackers (``logger=[csv,mlflow]``, ``logger=[csv,wandb]``): their packages checked
before any data is touched, the run's resolved config handed to every logger as its params, and a
wandb run ended with the fit.

MLflow and wandb are optional (the ``track`` extra); nothing here imports them.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from pytorch_lightning.loggers import Logger, WandbLogger

# logger class (the last part of its _target_) -> the package it needs
PACKAGES = {"MLFlowLogger": "mlflow", "WandbLogger": "wandb"}

# ${basename:${paths.output_dir}}: the run folder's name, the trackers' run name. Registered on
# import, as asr.train imports this module: the logger configs resolve inside train()
OmegaConf.register_new_resolver("basename", lambda path: Path(str(path)).name, replace=True)


def check_logger_packages(section: DictConfig | None) -> None:
    """Raise ``ImportError`` naming the package and the extra when a logger of ``section`` (the
    ``logger`` group) needs a package that is not installed."""
    for name, node in (section or {}).items():
        target = node.get("_target_", "") if node is not None else ""
        package = PACKAGES.get(str(target).rsplit(".", 1)[-1])
        if package and importlib.util.find_spec(package) is None:
            raise ImportError(f"logger.{name} ({target}) needs the {package} package, which is "
                              "not installed: pip install -e '.[track]' (make install installs "
                              "it); or leave it out: logger=[csv] or logger=[csv,tensorboard]")


def _plain(value: Any) -> Any:
    """A leaf as a param value: lists as compact JSON text (the same in every tracker)."""
    if isinstance(value, ListConfig):
        return json.dumps(OmegaConf.to_container(value, resolve=True))
    return value


def run_params(cfg: DictConfig, prefix: str = "") -> dict[str, Any]:
    """The resolved config as flat params: ``{"optim.lr": 0.003, "model.hidden_size": 64, ...}``.

    Keys are dotted paths, as a command-line override names them, with any character MLflow
    refuses in a param name made ``_``; lists are JSON text. A key that interpolates a whole
    section (``module.model: ${model}``) is left out: its values are there under their own keys;
    so is a value still missing (``???``).
    """
    params: dict[str, Any] = {}
    for key in cfg:
        if OmegaConf.is_missing(cfg, key):
            continue
        name = prefix + re.sub(r"[^\w./ -]", "_", str(key))
        value = cfg[key]
        if isinstance(value, DictConfig | ListConfig) and OmegaConf.is_interpolation(cfg, key):
            continue
        if isinstance(value, DictConfig):
            params.update(run_params(value, name + "."))
        else:
            params[name] = _plain(value)
    return params


def log_run_params(loggers: Iterable[Logger], cfg: DictConfig) -> None:
    """Hand ``run_params(cfg)`` to each logger, once, as the run starts (Lightning's own call at
    the fit's start logs nothing: the module saves no hyperparameters)."""
    params = run_params(cfg)
    for logger in loggers:
        logger.log_hyperparams(params)


def finish_runs(loggers: Iterable[Logger]) -> None:
    """End the wandb run after the fit (Lightning leaves it open until the process exits): its
    record is complete (ready for ``wandb sync``), and the next run in this process (a Hydra
    sweep's next job, a test) starts its own instead of reusing this one."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()
