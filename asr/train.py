"""Train a BiLSTM-CTC recognizer, then score best.ckpt on the recipe's evaluation manifests.

    python -m asr.train                                   # default recipe (AN4)
    python -m asr.train model.num_layers=2 optim.lr=3e-3 trainer.max_epochs=5
    python -m asr.train -m optim.lr=1e-3,3e-3             # Hydra multirun sweep
    python -m asr.train recipe=none data.train_manifest=train.jsonl \
        data.val_manifest=dev.jsonl data.test_manifest=test.jsonl   # your own manifests
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint, ProgressBar
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_only

from asr.cli import user_errors
from asr.data.check import check_manifests
from asr.data.download import DownloadError
from asr.data.filter import UtteranceFilter
from asr.data.stats import fit_global_stats
from asr.report.run_info import update_run_info, write_run_info
from asr.report.run_report import build_report
from asr.report.scoring import evaluate_checkpoint, format_table
from asr.training.averaging import AverageBest
from asr.training.callbacks import CSVHistory
from asr.training.checkpointing import AtomicCheckpointIO, CheckpointWriteError, remove_partials
from asr.training.guards import DroppedUtterances, NonFiniteGuard, TrainingDiverged
from asr.training.init_from import apply_init_from, finetune_callbacks, keeps_cmvn
from asr.training.launch import RankZeroFailed, launched_world, rank_zero_first
from asr.training.module import ASRModule
from asr.training.tracking import check_logger_packages, finish_runs, log_run_params

log = logging.getLogger(__name__)

# ASRDataModule restores the place in the epoch itself (its state_dict); Lightning's check of a
# mid-epoch resume looks at the loaders only
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before "
                        "the epoch ended")
# ASRModule moves batches itself (lengths stay on the host); the DataModule has no such hook
warnings.filterwarnings("ignore", message=r"You have overridden "
                        r"`(on_before_batch_transfer|transfer_batch_to_device)` "
                        r"in `LightningModule` but have passed in a `LightningDataModule`")


def resume_path(resume: str | None, ckpt_dir: Path) -> str | None:
    """``None``: fresh start; ``"auto"``: this run's ``last.ckpt`` if any; else an existing path.

    Partial writes left by a killed run are removed first; they are never resumed from.
    """
    if not resume:
        return None
    if resume == "auto":
        remove_partials(ckpt_dir)
        last = ckpt_dir / "last.ckpt"
        return str(last) if last.exists() else None
    if not Path(resume).is_file():
        raise FileNotFoundError(f"resume={resume}: no such checkpoint; use resume=auto or a path "
                                "to a .ckpt")
    return resume


def check_manifests_exist(cfg: DictConfig) -> None:
    """One-line error naming the missing manifest setting and the command that makes it."""
    for key in ("train_manifest", "val_manifest", "test_manifest"):
        path = cfg.data.get(key)
        if path and not Path(path).is_file():
            how = (f"`python -m asr.prepare recipe={cfg.name} stage=all` (or `make train "
                   f"RECIPE={cfg.name}`) prepares it" if cfg.get("prepare")
                   else "no recipe prepare step is set (prepare=null)")
            raise FileNotFoundError(
                f"data.{key}={path} does not exist: {how}; or point data.{key} at your own JSONL "
                "manifest"
            )


def instantiate_all(section: DictConfig | None) -> dict[str, Any]:
    """``{name: object}`` for each non-null entry of a config group like ``callbacks``."""
    return {name: instantiate(node) for name, node in (section or {}).items()
            if node is not None}


def build_trainer(cfg: DictConfig, callbacks: dict[str, L.Callback], loggers: dict[str, Logger],
                  extra: Sequence[L.Callback] = ()) -> L.Trainer:
    """The Trainer of ``cfg.trainer`` with the run's callbacks and loggers;
    ``trainer.enable_progress_bar=false`` leaves the progress bar callback out."""
    bar = cfg.trainer.get("enable_progress_bar", True)
    kept = [c for c in callbacks.values() if bar or not isinstance(c, ProgressBar)]
    # Lightning runs the ModelCheckpoints last, in list order: the ones saving every epoch
    # (last.ckpt) go after those keeping the best epochs, so that last.ckpt records this epoch in
    # their state too (else a crash right after it drops the epoch from best.ckpt's average)
    kept.sort(key=lambda c: isinstance(c, ModelCheckpoint) and c.monitor is None)
    return instantiate(cfg.trainer, callbacks=[*kept, *extra], logger=list(loggers.values()),
                       plugins=[AtomicCheckpointIO()])


def prepare_inputs(cfg: DictConfig, module: ASRModule, out_dir: Path,
                   fit_stats: bool = True) -> L.LightningDataModule:
    """Before the fit: global feature statistics (if asked for and ``fit_stats``: not when
    ``init_from`` keeps the source's), the data check, the DataModule."""
    recognizer = module.recognizer
    if recognizer.features.normalize == "global" and fit_stats:
        stats = fit_global_stats(recognizer.features, cfg.data.train_manifest,
                                 cfg.global_stats_utterances, cfg.seed)
        if rank_zero_only.rank == 0:
            (out_dir / "global_stats.json").write_text(json.dumps(stats) + "\n")
    rule = UtteranceFilter(module.label_tokenizers, recognizer.output_frames,
                           cfg.features.sample_rate)
    if cfg.data_check and rank_zero_only.rank == 0:  # one rank writes the report (data_check.json)
        train = cfg.data.train_manifest
        if cfg.data.get("train_shards") and not (train and Path(train).is_file()):
            log.info("data check: training from shards without the training manifest beside "
                     "them: the training utterances are checked as they are read")
            train = None
        check_manifests({"train": train, "val": cfg.data.val_manifest} if train
                        else {"val": cfg.data.val_manifest}, rule, out_dir)
    return instantiate(cfg.data, tokenizer=recognizer.tokenizer,
                       output_frames=recognizer.output_frames,
                       extra_tokenizers=module.label_tokenizers[1:])


def _data_and_tokenizer(cfg: DictConfig) -> Any:
    """The recipe's prepare step (download, manifests), then the tokenizer (made from the training
    data); run on global rank 0 first, the other ranks then find them done."""
    if cfg.get("prepare"):
        instantiate(cfg.prepare)
    check_manifests_exist(cfg)
    return instantiate(cfg.tokenizer)


def check_resume_dir(resume: str | None, out_dir: Path, run_dir_given: bool) -> None:
    """Refuse ``resume=auto`` in a new run dir (no ``hydra.run.dir``, so none has a ``last.ckpt``):
    it would silently start afresh. The error names the newest run with a ``last.ckpt``."""
    if resume != "auto" or run_dir_given or (out_dir / "checkpoints" / "last.ckpt").exists():
        return
    runs = sorted(out_dir.parent.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    newest = (f"; the newest run under {out_dir.parent} with one is {runs[-1].parents[1]}" if runs
              else f"; no run under {out_dir.parent} has one")
    raise ValueError(f"resume=auto continues <run dir>/checkpoints/last.ckpt, but hydra.run.dir "
                     f"was not given, so this run got a new dir ({out_dir}) without one: add "
                     f"hydra.run.dir=<the run to continue>{newest}")


def check_shared_run_dir(hydra_overrides: Sequence[str]) -> None:
    """Processes started together by torchrun or srun must share one run dir, named at launch."""
    world = launched_world()
    if world > 1 and not any(o.startswith("hydra.run.dir=") for o in hydra_overrides):
        raise ValueError(f"{world} processes were launched together (torchrun or srun) but "
                         "hydra.run.dir is not set: each would write, and resume from, its own "
                         "timestamped folder. Add hydra.run.dir=<a folder on a file system all "
                         "nodes share> to the command")


def train(cfg: DictConfig, extra_callbacks: Sequence[L.Callback] = ()) -> dict:
    """Prepare data (if the recipe says how), fit, then evaluate ``best.ckpt``.

    Args:
        cfg: the composed ``conf/train.yaml``.
        extra_callbacks: added to the run's own callbacks (tests inject faults with them).

    Returns:
        ``{"best_checkpoint", "best_val_wer", "selection", "epochs", "train_seconds",
        "reports": {split: report}, "rejected": [{"id", "split", "reason", ...}],
        "skipped_steps": n}``: ``rejected`` lists utterances dropped from the manifests or whose
        audio failed to load; ``selection`` is ``callbacks.average_best``'s account (else None);
        ``best_val_wer`` is the validation WER of the model in ``best.ckpt``.
    """
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    # a bad callback or logger setting (or a missing logger package) fails before data is touched
    check_logger_packages(cfg.logger)
    callbacks, loggers = instantiate_all(cfg.callbacks), instantiate_all(cfg.logger)
    extra_callbacks = [*finetune_callbacks(cfg), *extra_callbacks]  # finetune.* checked here too
    tokenizer = rank_zero_first(lambda: _data_and_tokenizer(cfg), out_dir, "prepare",
                                "prepare the data")
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:
        write_run_info(out_dir, cfg)  # config.yaml (resolved), run.json: seed, commit, versions
        (out_dir / "tokenizer.json").write_text(json.dumps(tokenizer.state_dict()) + "\n")
    module: ASRModule = instantiate(cfg.module)(tokenizer=tokenizer)
    resumed = resume_path(cfg.resume, out_dir / "checkpoints")
    # init_from (a fresh start only: resuming, last.ckpt holds the weights) goes before
    # prepare_inputs: with finetune.keep_cmvn=false the statistics are fitted there, after the
    # copy (which leaves them out), so the source's never overwrite this run's; with true the fit
    # is skipped and the source's stay
    finetuned = apply_init_from(cfg, module, resumed, out_dir)
    datamodule = prepare_inputs(cfg, module, out_dir, fit_stats=not keeps_cmvn(cfg))
    if finetuned is not None and rank_zero_only.rank == 0:
        update_run_info(out_dir, init_from=finetuned)
    trainer = build_trainer(cfg, callbacks, loggers, extra_callbacks)
    history = CSVHistory(out_dir)  # the CSV logger would drop the rows of the run being resumed
    # the resolved config as each logger's params (after CSVHistory: the CSV logger's first
    # write deletes the metrics.csv of the run being resumed)
    log_run_params(trainer.loggers, cfg)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resumed)
    train_seconds = time.perf_counter() - start
    finish_runs(trainer.loggers)
    if trainer.is_global_zero:
        history.restore()
    result = _result(callbacks, trainer, datamodule, train_seconds)
    if trainer.is_global_zero:
        _evaluate_and_report(cfg, module, trainer, result, out_dir)
    return result


def _result(callbacks: dict[str, Any], trainer: L.Trainer, datamodule: Any,
            train_seconds: float) -> dict:
    """What the fit left, read off the callbacks by their names in ``conf/callbacks/``."""
    best: ModelCheckpoint | None = callbacks.get("best_checkpoint")
    averaging: AverageBest | None = callbacks.get("average_best")
    dropped: DroppedUtterances | None = callbacks.get("dropped_utterances")
    guard: NonFiniteGuard | None = callbacks.get("non_finite")
    selection = averaging.selection if averaging is not None and trainer.is_global_zero else None
    best_val_wer = (float(best.best_model_score)
                    if best is not None and best.best_model_score is not None else None)
    if selection is not None and selection["chosen"] == "average":
        best_val_wer = selection["val_wer_average"]
    return {
        "best_checkpoint": best.best_model_path if best is not None else "",
        "best_val_wer": best_val_wer,
        "selection": selection,
        "epochs": trainer.current_epoch,
        "train_seconds": round(train_seconds, 1),
        "reports": {},
        "rejected": datamodule.rejected + [
            {"id": uid, "split": "load", "reason": why}
            for uid, why in (dropped.seen if dropped else {}).items()
        ],
        "skipped_steps": guard.skipped if guard is not None else 0,
    }


def _evaluate_and_report(cfg: DictConfig, module: ASRModule, trainer: L.Trainer, result: dict,
                         out_dir: Path) -> None:
    """On global rank 0 after the fit: score best.ckpt on the evaluation manifests, print the
    table, write the run's facts and report.md."""
    if result["best_checkpoint"] and module.eval_manifests:
        result["reports"] = evaluate_checkpoint(
            result["best_checkpoint"], out_dir=str(out_dir / "decode"),
            device="cuda" if trainer.strategy.root_device.type == "cuda" else "cpu",
            progress=cfg.trainer.get("enable_progress_bar", True),
        )
        selection = result["selection"]
        averaged = selection is not None and selection["chosen"] == "average"
        chosen = (f"the mean of the {len(selection['averaged'])} best epochs" if averaged
                  else "the best epoch")
        print(f"\nbest.ckpt ({chosen}, val/wer {result['best_val_wer']:.4f}) after "
              f"{result['epochs']} epochs, {result['train_seconds'] / 60:.1f} min of training:\n"
              f"{format_table(result['reports'])}\nrun dir: {out_dir}")
    update_run_info(out_dir, train_seconds=result["train_seconds"], epochs=result["epochs"],
                    steps=trainer.global_step, device=str(trainer.strategy.root_device),
                    num_devices=trainer.world_size, best_val_wer=result["best_val_wer"],
                    model_selection=result["selection"] or {"chosen": "epoch"})
    report = build_report(out_dir)
    print(f"report: {report} and {report.with_suffix('.html')} (one page: curves, WER, worst "
          "utterances to listen to)")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    with user_errors(TrainingDiverged, CheckpointWriteError, InstantiationException, DownloadError,
                     RankZeroFailed):
        overrides = HydraConfig.get().overrides.hydra
        check_shared_run_dir(overrides)
        check_resume_dir(cfg.resume, Path(cfg.paths.output_dir),
                         any(o.startswith(("hydra.run.dir=", "hydra.sweep.dir="))
                             for o in overrides))
        result = train(cfg)
    # The value Hydra sweepers optimise: best dev WER.
    return result["best_val_wer"]


if __name__ == "__main__":
    main()
