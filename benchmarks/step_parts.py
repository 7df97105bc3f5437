"""Benchmark (not a test): the two parts of a CPU training step that asr does its own way, old vs new.

    python benchmarks/step_parts.py [--batch 12] [--frames 130] [--steps 50] [--rounds 5]

- dropout, forward + backward, on one between-layer activation of an AN4 batch (B x T x 512 for a 3x256 BiLSTM;
  the recipe drops out 5 such tensors a step): torch's ``nn.functional.dropout`` (one Bernoulli draw per
  element) vs ``asr.lstm.dropout`` (masks from 16-bit slices of 64-bit random integers);
- one AdamW step over the AN4 recipe's parameters (~5.1 M): torch's default (foreach) vs ``fused=True``
  (what ``optim.optimizer.fused: null`` picks in 32-bit training).
Prints medians over interleaved rounds, in ms, with the thread count.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asr.lstm import dropout  # noqa: E402
from asr.model import BiLSTMCTC  # noqa: E402


def per_call_ms(fn, steps: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=12, help="utterances a batch (AN4: ~12 in 30 s)")
    ap.add_argument("--frames", type=int, default=130, help="frames after the x4 front end (~5.2 s)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    torch.manual_seed(0)
    x = torch.randn(args.batch, args.frames, 512, requires_grad=True)
    grad = torch.randn_like(x)
    # the AN4 recipe's network: conv x4 front end, 3x256 BiLSTM, 97 word classes + blank
    model = BiLSTMCTC(80, 98, hidden_size=256, num_layers=3, subsampling="conv", subsampling_factor=4)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    optimizers = {
        "foreach": torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.98), weight_decay=1e-2),
        "fused": torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.98), weight_decay=1e-2, fused=True),
    }
    cases = {
        "dropout 0.2, torch (Bernoulli per element)": lambda: nn.functional.dropout(x, 0.2, True).backward(grad),
        "dropout 0.2, asr.lstm.dropout (16-bit integers)": lambda: dropout(x, 0.2).backward(grad),
        "AdamW step, foreach (torch default)": optimizers["foreach"].step,
        "AdamW step, fused": optimizers["fused"].step,
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):  # interleaved: this machine's speed drifts over a minute
        for name, fn in cases.items():
            times[name].append(per_call_ms(fn, args.steps))

    print(f"\n{torch.get_num_threads()} threads, dropout on {args.batch}x{args.frames}x512, AdamW over "
          f"{sum(p.numel() for p in params) / 1e6:.2f} M parameters; median of {args.rounds} rounds x {args.steps}")
    print(f"{'what':<52} {'ms':>8}")
    for name, values in times.items():
        print(f"{name:<52} {statistics.median(values):>8.2f}")


if __name__ == "__main__":
    main()
