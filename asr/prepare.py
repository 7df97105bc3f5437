"""Run a recipe's stages before training, one at a time (recipes/<name>/run.sh calls this).

    python -m asr.prepare recipe=librispeech-100h stage=download     # fetch + extract
    python -m asr.prepare recipe=librispeech-100h stage=manifests    # <data_dir>/<subset>.jsonl
    python -m asr.prepare recipe=librispeech-100h stage=check        # data check report
    python -m asr.prepare recipe=librispeech-100h stage=tokenizer tokenizer=bpe
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from asr.cli import user_errors
from asr.data.check import check_manifests
from asr.data.download import DownloadError
from asr.data.filter import UtteranceFilter

log = logging.getLogger(__name__)

STAGES = ("download", "manifests", "check", "tokenizer")


def _corpus_stage(cfg: DictConfig, stage: str) -> dict[str, str] | None:
    """The recipe's ``prepare`` target run for one stage (download or manifests)."""
    if not cfg.get("prepare"):
        log.info("stage %s: the recipe has no prepare step (prepare=null), nothing to do", stage)
        return None
    try:
        return instantiate(cfg.prepare, stages=[stage])
    except InstantiationException as err:  # Hydra's wrapper: the recipe's own error says what to do
        if isinstance(err.__cause__, (FileNotFoundError, ValueError, DownloadError)):
            raise err.__cause__ from None
        raise


def _check_stage(cfg: DictConfig) -> dict[str, dict]:
    """The data check of the train, validation and evaluation manifests against the recipe's
    tokenizer and model."""
    module = instantiate(cfg.module)(tokenizer=instantiate(cfg.tokenizer))
    rec = module.recognizer
    rule = UtteranceFilter(module.label_tokenizers, rec.output_frames, rec.sample_rate)
    manifests = {"train": cfg.data.train_manifest, "val": cfg.data.val_manifest,
                 **(cfg.eval_manifests or {})}
    manifests = {name: path for name, path in manifests.items() if path}
    return check_manifests(manifests, rule, Path(cfg.data.train_manifest).parent)


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
            manifests = _corpus_stage(cfg, s)
            if manifests is not None:
                result["manifests"] = manifests
        elif s == "tokenizer":
            result["tokenizer"] = instantiate(cfg.tokenizer).state_dict()
        else:
            result["check"] = _check_stage(cfg)
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="prepare")
def main(cfg: DictConfig) -> None:
    with user_errors(DownloadError):
        result = run_stage(cfg, cfg.stage)
    for name, path in (result.get("manifests") or {}).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
