"""Run a recipe's stages before training, one at a time (recipes/<name>/run.sh calls this).

    python -m asr.prepare recipe=librispeech-100h stage=download     # fetch + extract
    python -m asr.prepare recipe=librispeech-100h stage=manifests    # <data_dir>/<subset>.jsonl
    python -m asr.prepare recipe=librispeech-100h stage=check        # data check report
    python -m asr.prepare recipe=librispeech-100h stage=tokenizer tokenizer=bpe
"""

from __future__ import annotations

import logging
import sys
from functools import partial
from pathlib import Path

import hydra
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from asr.data_check import check_manifests
from asr.download import DownloadError
from asr.features import LogMelFeatures
from asr.model import BiLSTMCTC

log = logging.getLogger(__name__)

STAGES = ("download", "manifests", "check", "tokenizer")


def _output_frames(features: LogMelFeatures, model: BiLSTMCTC, samples: torch.Tensor) -> torch.Tensor:
    return model.output_lengths(features.output_lengths(samples))


def run_stage(cfg: DictConfig, stage: str) -> dict:
    """Run one stage (or ``all`` of them, in order) of the recipe composed in ``cfg``.

    Every stage is idempotent: finished work is marked and skipped.

    Returns:
        ``{"manifests": {...}}`` for download/manifests, ``{"check": {name: report}}`` for check,
        ``{"tokenizer": state}`` for tokenizer (merged for ``all``).
    """
    if stage not in (*STAGES, "all"):
        raise ValueError(f"stage={stage}: choose one of {', '.join(STAGES)} or all")
    result: dict = {}
    for s in STAGES if stage == "all" else (stage,):
        if s in ("download", "manifests"):
            if not cfg.get("prepare"):
                log.info("stage %s: the recipe has no prepare step (prepare=null), nothing to do", s)
                continue
            with open_dict(cfg):
                cfg.prepare.stages = [s]
            try:
                result["manifests"] = instantiate(cfg.prepare)
            except InstantiationException as err:  # Hydra's wrapper: the recipe's own error says what to do
                if isinstance(err.__cause__, (FileNotFoundError, ValueError, DownloadError)):
                    raise err.__cause__ from None
                raise
        elif s == "tokenizer":
            result["tokenizer"] = instantiate(cfg.tokenizer).state_dict()
        else:
            tokenizer = instantiate(cfg.tokenizer)
            features = instantiate(cfg.features)
            model = instantiate(cfg.model)(input_dim=features.n_mels, num_classes=tokenizer.num_classes)
            manifests = {"train": cfg.data.train_manifest, "val": cfg.data.val_manifest, **cfg.eval_manifests}
            out = Path(cfg.data.train_manifest).parent
            frames = partial(_output_frames, features, model)
            rate = features.config["sample_rate"]
            result["check"] = check_manifests(dict(manifests), tokenizer, frames, out, rate)
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="prepare")
def main(cfg: DictConfig) -> None:
    try:
        result = run_stage(cfg, cfg.stage)
    except (FileNotFoundError, ValueError, DownloadError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    for name, path in (result.get("manifests") or {}).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
