"""Benchmark (not a test): training throughput of the full pipeline vs a bare PyTorch loop, on AN4.

    python benchmarks/train_throughput.py [--steps 40] [--warmup 5] [--precision 32-true] [overrides ...]

Prints, side by side on the same model, the same batches and the same machine:
- the full pipeline (ASRDataModule + ASRModule + Lightning Trainer, as `make train` runs it) and a bare
  PyTorch loop over the same batches already in memory (features, model, CTC, backward, clip, AdamW step),
  both in audio seconds trained per wall-clock second, as medians of interleaved rounds;
- the padding fraction of the training batches with length bucketing and without (one bucket);
- the loader alone (decode + collate, `data.num_workers` processes) vs the model alone.
Extra Hydra overrides (e.g. `model.hidden_size=320 data.max_batch_seconds=30`) apply to both.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pytorch_lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asr.data.sampler import BucketBatchSampler  # noqa: E402


class StepTimer(L.Callback):
    """Wall time and audio seconds of the training steps after the first ``warmup``."""

    def __init__(self, warmup: int, sample_rate: int) -> None:
        self.warmup, self.sample_rate = warmup, sample_rate
        self.start: float | None = None
        self.end = 0.0
        self.audio = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.audio += float(batch.audio_lengths.sum()) / self.sample_rate
            self.end = time.perf_counter()

    @property
    def rate(self) -> float:
        return self.audio / (self.end - self.start)


def padding(durations: list[float], max_batch_seconds: float, num_buckets: int, epochs: int = 5) -> float:
    """Mean fraction of padded audio in the training batches over ``epochs`` shuffles."""
    fracs = []
    for epoch in range(epochs):
        sampler = BucketBatchSampler(durations, max_batch_seconds, num_buckets=num_buckets, seed=0)
        sampler.set_epoch(epoch)
        batches = list(sampler)
        padded = sum(max(durations[i] for i in b) * len(b) for b in batches)
        fracs.append(1 - sum(durations) / padded)
    return sum(fracs) / len(fracs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    ap.add_argument("--precision", default="32-true", help="32-true | bf16-mixed")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved bare/pipeline rounds (medians printed)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml (recipe=an4 by default)")
    args = ap.parse_args()

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["recipe=an4", f"trainer.precision={args.precision}", *args.overrides])
    instantiate(cfg.prepare)
    sr = cfg.features.sample_rate
    total = args.warmup + args.steps

    tokenizer = instantiate(cfg.tokenizer)
    dm = instantiate(cfg.data, tokenizer=tokenizer)

    def build_module():
        return instantiate(cfg.module)(tokenizer=tokenizer)

    def run_pipeline() -> float:
        """DataModule + ASRModule + Trainer, as `make train` runs it (no logger, checkpoints or bar)."""
        L.seed_everything(0)
        timer = StepTimer(args.warmup, sr)
        trainer = L.Trainer(
            accelerator="cpu", devices=1, precision=args.precision, max_steps=total, limit_val_batches=0,
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            gradient_clip_val=cfg.trainer.gradient_clip_val, use_distributed_sampler=False, callbacks=[timer],
        )
        trainer.fit(build_module(), datamodule=dm)
        return timer.rate

    # the same batches (epoch 0's first `total`), decoded once and kept in memory for the bare loop
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.batch_sampler.set_epoch(0)
    start = time.perf_counter()
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == total:
            break
    loader_rate = sum(float(b.audio_lengths.sum()) for b in batches) / sr / (time.perf_counter() - start)
    del loader

    def run_bare() -> float:
        """Features, model, CTC, backward, clip, AdamW step over the in-memory batches: nothing else."""
        L.seed_everything(0)
        module = build_module()
        optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        module.train()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision.startswith("bf16"))
        audio = 0.0
        for i, batch in enumerate(batches):
            if i == args.warmup:
                start = time.perf_counter()
            with autocast:
                loss, _ = module.train_loss(batch)  # incl. the recipe's intermediate CTC
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.trainer.gradient_clip_val)
            optimizer.step()
            if i >= args.warmup:
                audio += float(batch.audio_lengths.sum()) / sr
        return audio / (time.perf_counter() - start)

    # interleaved rounds, medians: this machine's speed drifts by several % over a minute
    pipelines, bares = [], []
    for _ in range(args.rounds):
        bares.append(run_bare())
        pipelines.append(run_pipeline())
    pipeline, bare = statistics.median(pipelines), statistics.median(bares)

    durations = [u.duration for u in dm.datasets["train"].utterances]
    mbs, nb = cfg.data.max_batch_seconds, cfg.data.num_buckets
    print(f"\nAN4 train, {cfg.model.num_layers}x{cfg.model.hidden_size} BiLSTM, {cfg.model.subsampling} "
          f"x{cfg.model.subsampling_factor}, {args.precision}, {torch.get_num_threads()} threads, "
          f"{args.steps} timed steps after {args.warmup}, max_batch_seconds={mbs}, median of {args.rounds} "
          f"interleaved rounds")
    print(f"{'what':<52} {'value':>10}")
    print(f"{'pipeline (DataModule+ASRModule+Trainer) audio-s/s':<52} {pipeline:>10.1f}")
    print(f"{'bare PyTorch loop, same batches, audio-s/s':<52} {bare:>10.1f}")
    print(f"{'pipeline / bare':<52} {pipeline / bare:>10.3f}")
    print(f"{'  rounds, pipeline':<52} {' '.join(f'{r:.1f}' for r in pipelines):>10}")
    print(f"{'  rounds, bare':<52} {' '.join(f'{r:.1f}' for r in bares):>10}")
    print(f"{'loader alone (decode+collate) audio-s/s':<52} {loader_rate:>10.1f}")
    print(f"{'model alone (bare loop) audio-s/s':<52} {bare:>10.1f}")
    print(f"{f'padding, bucketing ({nb} buckets)':<52} {padding(durations, mbs, nb):>10.3f}")
    print(f"{'padding, no bucketing (1 bucket)':<52} {padding(durations, mbs, 1):>10.3f}")


if __name__ == "__main__":
    main()
