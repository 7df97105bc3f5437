"""Train a BiLSTM-CTC recognizer, then score best.ckpt on the recipe's dev/test manifests.

    python -m asr.train                                   # default recipe (AN4)
    python -m asr.train model.num_layers=2 optim.optimizer.lr=3e-3 trainer.max_epochs=5
    python -m asr.train -m optim.optimizer.lr=1e-3,3e-3   # Hydra multirun sweep
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import hydra
import pytorch_lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only

from asr.callbacks import ThroughputMonitor, loggers, progress_bar
from asr.data_check import check_manifests
from asr.evaluate import evaluate, format_table
from asr.module import ASRModule
from asr.report import build_report, update_run_info, write_run_info

log = logging.getLogger(__name__)


def resume_path(resume: str | None, ckpt_dir: Path) -> str | None:
    """``None`` -> fresh start; ``"auto"`` -> ``last.ckpt`` of this run if present; else a path that must exist."""
    if not resume:
        return None
    if resume == "auto":
        last = ckpt_dir / "last.ckpt"
        return str(last) if last.exists() else None
    if not Path(resume).is_file():
        raise FileNotFoundError(f"resume={resume}: no such checkpoint; use resume=auto or a path to a .ckpt")
    return resume


def build_module(cfg: DictConfig, tokenizer) -> ASRModule:
    """ASRModule from the features/augment/model/optim groups."""
    return ASRModule(
        tokenizer=tokenizer,
        features=instantiate(cfg.features),
        model=instantiate(cfg.model),
        optimizer=instantiate(cfg.optim.optimizer),
        scheduler=instantiate(cfg.optim.scheduler) if cfg.optim.get("scheduler") else None,
        augment=instantiate(cfg.augment) if cfg.get("augment") else None,
    )


def train(cfg: DictConfig) -> dict:
    """Prepare data (if the recipe says how), fit, then evaluate ``best.ckpt``.

    Returns:
        ``{"best_checkpoint", "best_val_wer", "epochs", "train_seconds", "reports": {split: report}}``.
    """
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    ckpt_dir = out_dir / "checkpoints"
    if cfg.get("prepare"):
        instantiate(cfg.prepare)
    tokenizer = instantiate(cfg.tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:
        write_run_info(out_dir, cfg)  # config.yaml (resolved) and run.json: seed, git commit, package versions
    (out_dir / "tokenizer.json").write_text(json.dumps(tokenizer.state_dict()) + "\n")
    module = build_module(cfg, tokenizer)
    if cfg.get("data_check", True):
        check_manifests({"train": cfg.data.train_manifest, "val": cfg.data.val_manifest}, tokenizer,
                        module.output_frames, out_dir, sample_rate=cfg.features.sample_rate)
    datamodule = instantiate(cfg.data, tokenizer=tokenizer, output_frames=module.output_frames)
    module.eval_manifests = {k: str(Path(v).resolve()) for k, v in (cfg.eval_manifests or {}).items()}

    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir, filename="best", monitor="val/wer", mode="min", save_top_k=1, save_last=True,
        enable_version_counter=False,
    )
    throughput = ThroughputMonitor(cfg.features.sample_rate, every_n_steps=cfg.trainer.log_every_n_steps)
    bar = progress_bar(cfg.progress) if cfg.trainer.get("enable_progress_bar", True) else None
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=[checkpoint, throughput, *([bar] if bar else [])],
        logger=loggers(out_dir),
        enable_progress_bar=bar is not None,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_path(cfg.resume, ckpt_dir))
    train_seconds = time.perf_counter() - start

    result = {
        "best_checkpoint": checkpoint.best_model_path,
        "best_val_wer": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
        "epochs": trainer.current_epoch,
        "train_seconds": round(train_seconds, 1),
        "reports": {},
    }
    if trainer.is_global_zero and checkpoint.best_model_path and module.eval_manifests:
        result["reports"] = evaluate(
            checkpoint.best_model_path, out_dir=str(out_dir / "decode"),
            device="cuda" if trainer.strategy.root_device.type == "cuda" else "cpu",
            progress=bar is not None,
        )
        print(f"\nbest.ckpt (val/wer {result['best_val_wer']:.4f}) after {result['epochs']} epochs, "
              f"{train_seconds / 60:.1f} min of training:\n{format_table(result['reports'])}\n"
              f"run dir: {out_dir}")
    if trainer.is_global_zero:
        update_run_info(out_dir, train_seconds=result["train_seconds"], epochs=result["epochs"],
                        steps=trainer.global_step, device=str(trainer.strategy.root_device),
                        num_devices=trainer.world_size, best_val_wer=result["best_val_wer"])
        print(f"report: {build_report(out_dir)}")
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    try:
        result = train(cfg)
    except (FileNotFoundError, ValueError) as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    # The value Hydra sweepers optimise: best dev WER.
    return result["best_val_wer"]


if __name__ == "__main__":
    main()
