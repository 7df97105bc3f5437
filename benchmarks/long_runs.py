"""What exact long runs cost, and what the DDP bucket sync buys.

    python benchmarks/long_runs.py [--every-n-steps 50] [--steps 10] [overrides of conf/train.yaml, recipe=an4]

1. Step checkpoints: the time of one atomic ``last.ckpt`` write of the recipe's model with its AdamW state (median of
   5) against the time of ``every_n_steps`` training steps on batches of the recipe's size (synthetic audio): the
   share of training time ``checkpoint.every_n_steps`` costs.
2. DDP: at each step each rank waits for the slowest; the spread of the ranks' longest utterance and padded seconds
   at the same step (2 ranks), when batches are dealt out in turn (before) and when all ranks take the same
   bucket (now), on LibriSpeech-100h-like durations and on the recipe's training manifest when it is prepared.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from asr.data.dataset import Batch  # noqa: E402
from asr.data.manifest import read_manifest  # noqa: E402
from asr.data.sampler import BucketBatchSampler  # noqa: E402
from asr.text import CharTokenizer  # noqa: E402
from asr.training.checkpointing import atomic_torch_save  # noqa: E402


def checkpoint_share(cfg, every_n_steps: int, steps: int) -> dict:
    torch.manual_seed(0)
    module = instantiate(cfg.module)(tokenizer=CharTokenizer())
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    seconds = float(cfg.data.max_batch_seconds)
    per = 4.0  # AN4-like utterances
    n = max(1, int(seconds // per))
    audio = torch.randn(n, int(per * 16000)) * 0.1
    batch = Batch(audio, torch.full((n,), audio.shape[1]), torch.randint(1, 28, (n, 20)), torch.full((n,), 20),
                  [""] * n)
    module.train()

    def step() -> None:
        loss, _ = module.train_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # AdamW's state exists from here on
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    ckpt = {"state_dict": module.state_dict(), "optimizer_states": [optimizer.state_dict()]}
    saves = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(5):
            start = time.perf_counter()
            atomic_torch_save(ckpt, Path(tmp) / "last.ckpt")
            saves.append(time.perf_counter() - start)
        size = (Path(tmp) / "last.ckpt").stat().st_size
    step_s, save_s = statistics.median(times), statistics.median(saves)
    return {"step_s": round(step_s, 4), "save_s": round(save_s, 4), "checkpoint_mb": round(size / 2**20, 1),
            "share": save_s / (every_n_steps * step_s + save_s)}


def spread(durations: list[float], max_batch_seconds: float, num_buckets: int, epochs: int = 3) -> dict:
    """Median and 90th percentile over steps of 1 - min/max across 2 ranks (longest utterance; padded seconds)."""
    out = {}
    for name in ("in turn", "same bucket"):
        longest, padded = [], []
        for epoch in range(epochs):
            if name == "in turn":  # the sampler before: one shuffled list of batches, rank r takes r, r+2, ...
                one = BucketBatchSampler(durations, max_batch_seconds, num_buckets, seed=0, num_replicas=1, rank=0)
                one.set_epoch(epoch)
                all_batches = list(one)
                ranks = [all_batches[: len(all_batches) // 2 * 2][r::2] for r in (0, 1)]
            else:
                ranks = []
                for r in (0, 1):
                    s = BucketBatchSampler(durations, max_batch_seconds, num_buckets, seed=0, num_replicas=2, rank=r)
                    s.set_epoch(epoch)
                    ranks.append(list(s))
            for a, b in zip(*ranks, strict=True):
                la, lb = max(durations[i] for i in a), max(durations[i] for i in b)
                pa, pb = la * len(a), lb * len(b)
                longest.append(1 - min(la, lb) / max(la, lb))
                padded.append(1 - min(pa, pb) / max(pa, pb))
        q = statistics.quantiles
        out[name] = {"longest_median": round(statistics.median(longest), 3),
                     "longest_p90": round(q(longest, n=10)[-1], 3),
                     "padded_median": round(statistics.median(padded), 3),
                     "padded_p90": round(q(padded, n=10)[-1], 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--every-n-steps", type=int, default=50)
    ap.add_argument("--steps", type=int, default=10, help="timed training steps")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["recipe=an4", "tokenizer=char", *args.overrides])
    res = checkpoint_share(cfg, args.every_n_steps, args.steps)
    print(f"checkpoint every {args.every_n_steps} steps ({cfg.name} model, {torch.get_num_threads()} threads): "
          f"{res['checkpoint_mb']} MB written in {res['save_s']:.3f} s, a step {res['step_s']:.3f} s -> "
          f"{100 * res['share']:.2f} % of training time")
    rng = random.Random(0)
    libri = [min(35.0, max(1.0, rng.gauss(12.7, 3.5))) for _ in range(28539)]  # train-clean-100: mean 12.7 s
    corpora = {"librispeech-100h-like (28,539 utterances)": (libri, 60.0)}
    manifest = Path(cfg.data.train_manifest)
    if manifest.is_file():
        corpora[f"{cfg.name} training manifest"] = ([u.duration for u in read_manifest(manifest)],
                                                  float(cfg.data.max_batch_seconds))
    for name, (durations, seconds) in corpora.items():
        for how, r in spread(durations, seconds, int(cfg.data.num_buckets)).items():
            print(f"2 ranks, {name}, {seconds:.0f} s batches, dealt {how}: 1 - min/max of the longest utterance "
                  f"median {r['longest_median']:.3f} p90 {r['longest_p90']:.3f}; of padded seconds median "
                  f"{r['padded_median']:.3f} p90 {r['padded_p90']:.3f}")


if __name__ == "__main__":
    main()
