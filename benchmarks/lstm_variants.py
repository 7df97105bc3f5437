"""Benchmark (not a test): one training step of the BiLSTM stack, packed nn.LSTM vs asr.model.BiLSTM.

    python benchmarks/lstm_variants.py [--batch 12] [--frames 100] [--hidden 256] [--layers 3] [--steps 10]

Both compute the same function (tests/test_features_model.py checks outputs and gradients agree):
- ``packed``: ``nn.LSTM(bidirectional=True)`` over a PackedSequence, what BiLSTMCTC ran before;
- ``BiLSTM``: one single-direction ``nn.LSTM`` per direction over the dense padded batch, the backward one
  on sequences reversed within their lengths (CPU runs these through oneDNN's LSTM kernels).
Prints the median time of a forward + backward + AdamW step and the audio seconds per second it implies
(frames are 30 ms after x3 frame stacking, as in the AN4 recipe), in fp32 and under bf16 autocast.
The default shape is one AN4 training batch (30 s of audio, ~3 s utterances).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr.model import BiLSTM, lstm_autocast_supported  # noqa: E402


class PackedBiLSTM(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, bidirectional=True, batch_first=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=x.shape[1])[0]


def step_time(model: nn.Module, x: torch.Tensor, lengths: torch.Tensor, bf16: bool, steps: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times = []
    for _ in range(steps + 2):  # two untimed warm-up steps
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = model(x, lengths)
        y.float().square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--frames", type=int, default=100, help="frames per utterance after subsampling")
    ap.add_argument("--input", type=int, default=240, help="input features (80 log-Mel x 3 stacked)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()

    torch.manual_seed(0)
    x = torch.randn(args.batch, args.frames, args.input)
    # bucketed batches: lengths within ~7 % of the longest
    lengths = torch.randint(int(args.frames * 0.93), args.frames + 1, (args.batch,))
    lengths[0] = args.frames
    audio_s = float(lengths.sum()) * 0.03

    print(f"{args.layers}x{args.hidden} BiLSTM, batch {args.batch} x {args.frames} frames, input {args.input}, "
          f"{torch.get_num_threads()} threads, median of {args.steps} fwd+bwd+AdamW steps")
    print(f"{'variant':<10} {'precision':<10} {'ms/step':>9} {'audio-s/s':>10}")
    for name, build in [
        ("packed", lambda: PackedBiLSTM(args.input, args.hidden, args.layers)),
        ("BiLSTM", lambda: BiLSTM(args.input, args.hidden, args.layers)),
    ]:
        for bf16 in (False, True):
            if bf16 and name == "BiLSTM" and not lstm_autocast_supported(torch.device("cpu")):
                print(f"{name:<10} {'bf16':<10} {'-':>9} {'-':>10}  (no bf16 LSTM kernels on this CPU: runs fp32)")
                continue
            t = step_time(build(), x, lengths, bf16, args.steps)
            print(f"{name:<10} {'bf16' if bf16 else 'fp32':<10} {t * 1000:>9.1f} {audio_s / t:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
