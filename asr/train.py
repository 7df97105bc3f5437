"""Train a BiLSTM-CTC recognizer, then score best.ckpt on the recipe's dev/test manifests.

    python -m asr.train                                   # default recipe (AN4)
    python -m asr.train model.num_layers=2 optim.optimizer.lr=3e-3 trainer.max_epochs=5
    python -m asr.train -m optim.optimizer.lr=1e-3,3e-3   # Hydra multirun sweep
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import jiwer
import pytorch_lightning as L
import soundfile as sf
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only
from tqdm import tqdm

from asr.average import average_checkpoints
from asr.callbacks import (
    CSVHistory,
    ThroughputMonitor,
    TopKCheckpoint,
    ValidateFrom,
    first_validated_epoch,
    loggers,
    progress_bar,
)
from asr.checkpointing import AtomicCheckpointIO, CheckpointWriteError, remove_partials
from asr.data import load_audio, read_manifest
from asr.data_check import check_manifests
from asr.download import DownloadError
from asr.evaluate import evaluate, format_table, transcribe_manifest
from asr.features import global_stats
from asr.guards import DroppedUtterances, NonFiniteGuard, TrainingDiverged
from asr.module import ASRModule
from asr.report import build_report, update_run_info, write_run_info
from asr.text import CharTokenizer

log = logging.getLogger(__name__)


def resume_path(resume: str | None, ckpt_dir: Path) -> str | None:
    """``None`` -> fresh start; ``"auto"`` -> ``last.ckpt`` of this run if present; else a path that must exist.

    Partial writes left by a killed run are removed first; they are never resumed from.
    """
    if not resume:
        return None
    if resume == "auto":
        remove_partials(ckpt_dir)
        last = ckpt_dir / "last.ckpt"
        return str(last) if last.exists() else None
    if not Path(resume).is_file():
        raise FileNotFoundError(f"resume={resume}: no such checkpoint; use resume=auto or a path to a .ckpt")
    return resume


def check_manifests_exist(cfg: DictConfig) -> None:
    """One-line error naming the missing manifest setting and the command that makes it."""
    for key in ("train_manifest", "val_manifest", "test_manifest"):
        path = cfg.data.get(key)
        if path and not Path(path).is_file():
            how = (f"`python -m asr.prepare recipe={cfg.name} stage=all` (or `make train RECIPE={cfg.name}`) "
                   f"prepares it" if cfg.get("prepare") else "no recipe prepare step is set (prepare=null)")
            raise FileNotFoundError(
                f"data.{key}={path} does not exist: {how}; or point data.{key} at your own JSONL manifest"
            )


def build_module(cfg: DictConfig, tokenizer) -> ASRModule:
    """ASRModule from the features/augment/model/optim groups.

    Raises:
        ValueError: a setting the model's constructor does not take (e.g. ``+model.hiden_size=3``).
    """
    inter = dict(cfg.get("inter_ctc") or {})
    num_layers = cfg.model.get("num_layers")
    if inter.get("weight") and isinstance(num_layers, int):
        if num_layers < 2:
            raise ValueError(f"intermediate CTC (inter_ctc.weight={inter['weight']}) needs model.num_layers >= 2, got "
                             f"{num_layers}: add inter_ctc.weight=0 inter_ctc.self_condition=false to train one layer")
        if inter.get("layer") is None:  # the middle layer: 2 of 3, 1 of 2, 3 of 5
            inter["layer"] = (num_layers + 1) // 2
        if not 1 <= inter["layer"] < num_layers:
            raise ValueError(f"inter_ctc.layer must be 1..{num_layers - 1} (below model.num_layers={num_layers}) or "
                             f"null (the middle layer), got {inter['layer']}")
    inter_tokenizer = None
    if inter.get("tokenizer"):
        if inter["tokenizer"] != "char":
            raise ValueError(f"inter_ctc.tokenizer must be null or char, got {inter['tokenizer']!r}")
        inter_tokenizer = CharTokenizer()
    model = instantiate(cfg.model)
    if not isinstance(model, torch.nn.Module):
        extra = {"inter_classes": inter_tokenizer.num_classes} if inter_tokenizer is not None else {}
        if inter.get("self_condition"):
            if not inter.get("weight"):
                raise ValueError("inter_ctc.self_condition=true needs the intermediate CTC loss on that layer: set "
                                 "inter_ctc.weight > 0 (e.g. 0.3)")
            extra["condition_layer"] = inter["layer"]
        try:
            model = model(input_dim=cfg.features.n_mels, num_classes=tokenizer.num_classes, **extra)
        except TypeError as err:  # the partial was given a key its class does not take
            raise ValueError(f"cannot build the model from the model.* settings: {err}; compare the keys "
                             f"with the model's file in conf/model/") from None
    return ASRModule(
        tokenizer=tokenizer,
        features=instantiate(cfg.features),
        model=model,
        optimizer=instantiate(cfg.optim.optimizer),
        scheduler=instantiate(cfg.optim.scheduler) if cfg.optim.get("scheduler") else None,
        augment=instantiate(cfg.augment) if cfg.get("augment") else None,
        ema_decay=cfg.optim.get("ema_decay"),
        inter_ctc_weight=inter.get("weight", 0.0),
        inter_ctc_layer=inter.get("layer") or 1,
        inter_tokenizer=inter_tokenizer,
        weight_noise=cfg.optim.get("weight_noise", 0.0),
        weight_noise_start_epoch=cfg.optim.get("weight_noise_start_epoch", 0),
    )


def fit_global_stats(module: ASRModule, manifest: str, max_utterances: int, seed: int, out_dir: Path) -> None:
    """``features.normalize=global``: channel mean/std of log-Mel energies over (a fixed random subset of at most
    ``max_utterances`` of) the training manifest, set on the module's features and written to
    ``<out_dir>/global_stats.json``. Files that fail to load are skipped, as training skips them."""
    utts = read_manifest(manifest)
    if len(utts) > max_utterances:
        utts = random.Random(seed).sample(utts, max_utterances)
    features = module.features
    rate = features.config["sample_rate"]

    used = 0

    def waveforms():
        nonlocal used
        for u in tqdm(utts, desc="global feature statistics", unit="utt", leave=False, disable=None):
            try:
                wav = load_audio(u.audio_filepath, rate)
            except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as err:
                log.warning("global statistics: skipped %s (%s)", u.audio_filepath, err)
                continue
            if not torch.isfinite(wav).all():
                log.warning("global statistics: skipped %s (non-finite samples)", u.audio_filepath)
                continue
            used += 1
            yield wav

    mean, std = global_stats(features, waveforms())
    features.set_global_stats(mean, std)
    if rank_zero_only.rank == 0:
        (out_dir / "global_stats.json").write_text(json.dumps(
            {"utterances": used, "manifest": str(manifest), "mean": mean.tolist(), "std": std.tolist()}
        ) + "\n")
    log.info("global feature statistics from %d of %d utterances of %s", used, len(utts), manifest)


def _check_average_select(rule: str) -> None:
    if rule not in ("dev", "always"):
        raise ValueError(f"average_select={rule!r}: use 'dev' (the mean of the average_best epochs if it scores no "
                         "worse on validation than the best epoch) or 'always'")


def select_average(
    best_path: str, top_k: dict[str, Any], val_manifest: str, device: torch.device, rule: str = "dev"
) -> dict[str, Any]:
    """Average the weights of the k best epochs (``top_k``: path -> val/wer) and choose between the mean and the best
    epoch: with ``rule="dev"`` the mean replaces ``best_path`` if it scores a WER on the validation manifest no
    higher than the best epoch's; with ``rule="always"`` it replaces it in any case (both are still scored, for the
    log). The best epoch's validation WER is the lowest of one per epoch, so it is biased low against the mean's:
    "dev" keeps the single epoch more often than it deserves.

    Returns:
        ``{"averaged": [paths, best first], "val_wer_average", "val_wer_best_epoch", "chosen": "average" | "epoch"}``.
    """
    _check_average_select(rule)
    paths = sorted(top_k, key=lambda p: float(top_k[p]))
    out = {"averaged": paths, "val_wer_average": None, "val_wer_best_epoch": None, "chosen": "epoch"}
    if len(paths) < 2:
        return out
    averaged = str(Path(best_path).with_name("averaged.ckpt"))
    average_checkpoints(paths, averaged)

    def val_wer(path: str) -> float:
        module = ASRModule.load_for_inference(path, map_location=device).to(device)
        _, refs, hyps, _ = transcribe_manifest(module, val_manifest, device, progress=False)
        return float(jiwer.wer(refs, hyps))

    out["val_wer_average"], out["val_wer_best_epoch"] = val_wer(averaged), val_wer(best_path)
    if rule == "always" or out["val_wer_average"] <= out["val_wer_best_epoch"]:
        os.replace(averaged, best_path)
        out["chosen"] = "average"
    else:
        os.remove(averaged)
    log.info("validation WER: mean of the %d best epochs %.4f, best epoch %.4f: best.ckpt is the %s", len(paths),
             out["val_wer_average"], out["val_wer_best_epoch"], "mean" if out["chosen"] == "average" else "best epoch")
    return out


def train(cfg: DictConfig, extra_callbacks: Sequence[L.Callback] = ()) -> dict:
    """Prepare data (if the recipe says how), fit, then evaluate ``best.ckpt``.

    Args:
        cfg: the composed ``conf/train.yaml``.
        extra_callbacks: Lightning callbacks added to the run's own (tests use them to inject faults).

    Returns:
        ``{"best_checkpoint", "best_val_wer", "selection", "epochs", "train_seconds", "reports": {split: report},
        "rejected": [{"id", "split", "reason", ...}], "skipped_steps": n}``: ``rejected`` lists the
        utterances dropped from the manifests and those whose audio failed to load during the run; ``selection``
        is :func:`select_average`'s account with ``average_best`` > 1 (else None), and ``best_val_wer`` the
        validation WER of the model in ``best.ckpt``.
    """
    _check_average_select(cfg.get("average_select", "dev"))  # before the run, not after it
    first_val = first_validated_epoch(float(cfg.get("validate_from") or 0.0), cfg.trainer.get("max_epochs"))
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    ckpt_dir = out_dir / "checkpoints"
    if cfg.get("prepare"):
        instantiate(cfg.prepare)
    check_manifests_exist(cfg)
    tokenizer = instantiate(cfg.tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:
        write_run_info(out_dir, cfg)  # config.yaml (resolved) and run.json: seed, git commit, package versions
    (out_dir / "tokenizer.json").write_text(json.dumps(tokenizer.state_dict()) + "\n")
    module = build_module(cfg, tokenizer)
    if module.features.normalize == "global":
        fit_global_stats(module, cfg.data.train_manifest, cfg.get("global_stats_utterances", 2000), cfg.seed, out_dir)
    if cfg.get("data_check", True):
        check_manifests({"train": cfg.data.train_manifest, "val": cfg.data.val_manifest}, tokenizer,
                        module.output_frames, out_dir, sample_rate=cfg.features.sample_rate,
                        inter_tokenizer=module.inter_tokenizer if module.inter_ctc_weight > 0 else None)
    datamodule = instantiate(cfg.data, tokenizer=tokenizer, output_frames=module.output_frames)
    module.eval_manifests = {k: str(Path(v).resolve()) for k, v in (cfg.get("eval_manifests") or {}).items()}

    # Two callbacks, not save_last=True: since Lightning 2.6 that writes last.ckpt only at epochs where best.ckpt
    # improved, so a crash late in a run would resume from the last *improvement* and replay every epoch since.
    best = ModelCheckpoint(
        dirpath=ckpt_dir, filename="best", monitor="val/wer", mode="min", save_top_k=1, enable_version_counter=False,
    )
    last = ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, enable_version_counter=False)
    k = int(cfg.get("average_best") or 1)
    top = TopKCheckpoint(  # the k best epochs' weights, for their average at the end
        dirpath=ckpt_dir / "top", filename="epoch{epoch:03d}", auto_insert_metric_name=False, monitor="val/wer",
        mode="min", save_top_k=k, save_weights_only=True, enable_version_counter=False,
    ) if k > 1 else None
    throughput = ThroughputMonitor(cfg.features.sample_rate, every_n_steps=cfg.trainer.log_every_n_steps)
    bar = progress_bar(cfg.progress) if cfg.trainer.get("enable_progress_bar", True) else None
    guards = [NonFiniteGuard(cfg.get("max_consecutive_bad_steps", 20)), DroppedUtterances()]
    later = [ValidateFrom(first_val, ckpt_dir / "last.ckpt")] if first_val > 0 else []
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=[best, last, *([top] if top else []), *later, throughput, *guards, *([bar] if bar else []),
                   *extra_callbacks],
        logger=loggers(out_dir),
        enable_progress_bar=bar is not None,
        plugins=[AtomicCheckpointIO()],
    )
    start = time.perf_counter()
    history = CSVHistory(out_dir)  # the CSV logger would drop the rows of the run being resumed
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_path(cfg.resume, ckpt_dir))
    train_seconds = time.perf_counter() - start
    if trainer.is_global_zero:
        history.restore()

    selection = None
    best_val_wer = float(best.best_model_score) if best.best_model_score is not None else None
    if trainer.is_global_zero and top is not None and best.best_model_path:
        selection = select_average(best.best_model_path, top.best_k_models, cfg.data.val_manifest,
                                   trainer.strategy.root_device, cfg.get("average_select", "dev"))
        if selection["chosen"] == "average":
            best_val_wer = selection["val_wer_average"]
    result = {
        "best_checkpoint": best.best_model_path,
        "best_val_wer": best_val_wer,
        "selection": selection,
        "epochs": trainer.current_epoch,
        "train_seconds": round(train_seconds, 1),
        "reports": {},
        "rejected": datamodule.rejected + [
            {"id": uid, "split": "load", "reason": why} for uid, why in guards[1].seen.items()
        ],
        "skipped_steps": guards[0].skipped,
    }
    if trainer.is_global_zero and best.best_model_path and module.eval_manifests:
        result["reports"] = evaluate(
            best.best_model_path, out_dir=str(out_dir / "decode"),
            device="cuda" if trainer.strategy.root_device.type == "cuda" else "cpu",
            progress=bar is not None,
        )
        averaged = selection is not None and selection["chosen"] == "average"
        chosen = f"the mean of the {len(selection['averaged'])} best epochs" if averaged else "the best epoch"
        print(f"\nbest.ckpt ({chosen}, val/wer {result['best_val_wer']:.4f}) after {result['epochs']} epochs, "
              f"{train_seconds / 60:.1f} min of training:\n{format_table(result['reports'])}\n"
              f"run dir: {out_dir}")
    if trainer.is_global_zero:
        update_run_info(out_dir, train_seconds=result["train_seconds"], epochs=result["epochs"],
                        steps=trainer.global_step, device=str(trainer.strategy.root_device),
                        num_devices=trainer.world_size, best_val_wer=result["best_val_wer"],
                        model_selection=selection or {"chosen": "epoch"})
        print(f"report: {build_report(out_dir)}")
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    try:
        result = train(cfg)
    except (FileNotFoundError, ValueError, TrainingDiverged, CheckpointWriteError, InstantiationException,
            DownloadError) as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    # The value Hydra sweepers optimise: best dev WER.
    return result["best_val_wer"]


if __name__ == "__main__":
    main()
