"""Benchmark (not a test): one training step of the BiLSTM stack under each ``model.lstm`` setting.

    python benchmarks/lstm_variants.py [--batch 12] [--frames 100] [--input 240] [--hidden 256] [--layers 3]
                                       [--steps 10] [--threads 2] [--device all|cpu|cuda]

Both settings run :class:`asr.lstm.BiLSTM` with the same parameters and compute the same function
(tests/test_lstm.py checks that outputs and gradients agree):
- ``dense``: one single-direction ``nn.LSTM`` per layer and direction over the dense padded batch, the backward
  one on sequences reversed within their lengths (CPU runs these through oneDNN's LSTM kernels);
- ``packed``: one bidirectional multi-layer ``nn.LSTM`` call over a PackedSequence (cuDNN's fused kernel on CUDA).
``auto`` picks packed on CUDA and dense elsewhere.
Prints the median time of a forward + backward + AdamW step and the audio seconds per second it implies
(frames are 30 ms after x3 frame stacking, as in the AN4 recipe), in fp32 and under bf16 autocast, on the CPU
with ``--threads`` threads and on CUDA when there is a GPU. The default shape is one AN4 training batch (30 s of
audio, ~3 s utterances).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr.lstm import BiLSTM, lstm_autocast_supported  # noqa: E402


def step_time(model: BiLSTM, x: torch.Tensor, lengths: torch.Tensor, bf16: bool, steps: int) -> float:
    """Median seconds of a forward + backward + AdamW step, after two untimed warm-up steps."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    device = x.device
    times = []
    for _ in range(steps + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            y = model(x, lengths)
        y.float().square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def build(args: argparse.Namespace, implementation: str, device: torch.device) -> BiLSTM:
    torch.manual_seed(0)  # the same weights for every setting
    model = BiLSTM(args.input, args.hidden, args.layers, dropout=0.2, implementation=implementation)
    return model.to(device).train()


def compare(args: argparse.Namespace, device: torch.device, x: torch.Tensor, lengths: torch.Tensor) -> None:
    x, audio_s = x.to(device), float(lengths.sum()) * 0.03
    outputs = [build(args, impl, device).eval()(x, lengths) for impl in ("dense", "packed")]
    diff = (outputs[0] - outputs[1]).abs().max().item()
    print(f"\n{device.type}: eval-mode outputs of dense and packed differ by at most {diff:.1e}")
    print(f"{'model.lstm':<11} {'precision':<10} {'ms/step':>9} {'audio-s/s':>10}")
    for impl in ("dense", "packed"):
        for bf16 in (False, True):
            note = ""
            if bf16 and not lstm_autocast_supported(device):
                note = "  (no bf16 LSTM kernels on this CPU: the LSTM runs fp32)"
            t = step_time(build(args, impl, device), x, lengths, bf16, args.steps)
            precision = "bf16" if bf16 else "fp32"
            print(f"{impl:<11} {precision:<10} {t * 1000:>9.1f} {audio_s / t:>10.1f}{note}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--frames", type=int, default=100, help="frames per utterance after subsampling")
    ap.add_argument("--input", type=int, default=240, help="input features (80 log-Mel x 3 stacked)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                    help="all: the CPU, and CUDA when there is a GPU")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    x = torch.randn(args.batch, args.frames, args.input)
    # bucketed batches: lengths within ~7 % of the longest
    lengths = torch.randint(int(args.frames * 0.93), args.frames + 1, (args.batch,))
    lengths[0] = args.frames

    print(f"{args.layers}x{args.hidden} BiLSTM, batch {args.batch} x {args.frames} frames, input {args.input}, "
          f"dropout 0.2, median of {args.steps} fwd+bwd+AdamW steps; CPU: {torch.get_num_threads()} threads")
    devices = [] if args.device == "cuda" else [torch.device("cpu")]
    if args.device != "cpu":
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
        elif args.device == "cuda":
            sys.exit("--device cuda: no GPU here")
    for device in devices:
        compare(args, device, x, lengths)


if __name__ == "__main__":
    main()
