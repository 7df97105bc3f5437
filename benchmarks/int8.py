"""Benchmark (not a test): float32 vs int8 dynamic quantisation of a trained model on the CPU.

    python benchmarks/int8.py [--checkpoint exp/an4/base/checkpoints/best.ckpt] [--manifest data/an4/test.jsonl]
                              [--threads 1 2] [--runs 3] [--batch-seconds 200]

Exports the checkpoint as a float and an int8 model folder (``asr.export format=pretrained [quantize=int8]``, in a
temporary folder) and loads both back, as a user of the folders would. Prints, for each:
- the size of ``model.safetensors``;
- the greedy WER over the manifest;
- the real-time factor of the forward pass (features + model) over the whole manifest on the CPU with each
  ``--threads`` setting: compute seconds / audio seconds, the median of ``--runs`` passes. The audio is read and
  batched before the clock starts (utterances sorted by length, at most ``--batch-seconds`` of padded audio a batch),
  so reading and decoding files is not counted; one batch is run first to warm up.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr.audio import load_audio  # noqa: E402
from asr.cli import user_errors  # noqa: E402
from asr.data.manifest import read_manifest  # noqa: E402
from asr.export import export  # noqa: E402
from asr.metrics import error_report  # noqa: E402
from asr.recognizer import Recognizer  # noqa: E402
from asr.text import normalize_text  # noqa: E402

Batch = tuple[torch.Tensor, torch.Tensor, list[int]]  # (B, S) audio, (B,) lengths, manifest indices


def batches(manifest: str, sample_rate: int, batch_seconds: float) -> tuple[list[Batch], list[str], float]:
    """The manifest's audio as padded batches of similar lengths, its normalised references, its audio seconds."""
    utts = read_manifest(manifest)
    wavs = [load_audio(u.audio_filepath, sample_rate) for u in utts]
    order = sorted(range(len(utts)), key=lambda i: wavs[i].numel())
    out: list[Batch] = []
    group: list[int] = []
    for i in order:
        if group and (len(group) + 1) * wavs[i].numel() > batch_seconds * sample_rate:  # padded to the longest
            out.append(_pad([wavs[j] for j in group], group))
            group = []
        group.append(i)
    if group:
        out.append(_pad([wavs[j] for j in group], group))
    return out, [normalize_text(u.text) for u in utts], sum(w.numel() for w in wavs) / sample_rate


def _pad(wavs: list[torch.Tensor], ids: list[int]) -> Batch:
    lengths = torch.tensor([w.numel() for w in wavs])
    audio = torch.zeros(len(wavs), int(lengths.max()))  # (B, S)
    for k, w in enumerate(wavs):
        audio[k, : w.numel()] = w
    return audio, lengths, ids


@torch.inference_mode()
def forward_pass(module: Recognizer, data: list[Batch]) -> tuple[float, dict[int, str]]:
    """Seconds of one forward pass over every batch, and the greedy hypotheses by manifest index."""
    hyps: dict[int, str] = {}
    start = time.perf_counter()
    outputs = [(module(audio, lengths), ids) for audio, lengths, ids in data]
    seconds = time.perf_counter() - start
    for (log_probs, out_lengths), ids in outputs:
        hyps.update(zip(ids, module.decoder.decode(log_probs, out_lengths), strict=True))
    return seconds, hyps


def measure(module: Recognizer, data: list[Batch], refs: list[str], audio_seconds: float, threads: list[int],
            runs: int) -> dict[str, float]:
    """WER and the median real-time factor at each thread count."""
    result: dict[str, float] = {}
    for n in threads:
        torch.set_num_threads(n)
        forward_pass(module, data[:1])  # warm-up: kernels picked, buffers allocated
        times = []
        for _ in range(runs):
            seconds, hyps = forward_pass(module, data)
            times.append(seconds)
        result[f"rtf_{n}"] = statistics.median(times) / audio_seconds
    result["wer"] = error_report(refs, [hyps[i] for i in range(len(refs))])["wer"]
    return result


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="exp/an4/base/checkpoints/best.ckpt")
    parser.add_argument("--manifest", default="data/an4/test.jsonl")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-seconds", type=float, default=200.0)
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    print(f"{cpu_name()}, {torch.get_num_threads()} threads by default, torch {torch.__version__}, "
          f"quantized engine {torch.backends.quantized.engine}")
    with user_errors(), tempfile.TemporaryDirectory() as tmp:  # a missing checkpoint: one line, not a traceback
        folders = {name: export(args.checkpoint, "pretrained", str(Path(tmp) / name), quantize=quantize)
                   for name, quantize in (("float32", None), ("int8", "int8"))}
        sizes = {name: (folder / "model.safetensors").stat().st_size for name, folder in folders.items()}
        modules = {name: Recognizer.load(folder) for name, folder in folders.items()}
    rate = modules["float32"].features.config["sample_rate"]
    data, refs, audio_seconds = batches(args.manifest, rate, args.batch_seconds)
    print(f"{args.manifest}: {len(refs)} utterances, {audio_seconds:.1f} s of audio in {len(data)} batches; "
          f"{args.checkpoint}")
    results = {name: measure(module, data, refs, audio_seconds, args.threads, args.runs)
               for name, module in modules.items()}
    rtf_heads = " | ".join(f"RTF {n} thread{'s' if n > 1 else ''}" for n in args.threads)
    print(f"\nweights | model.safetensors | WER % (greedy) | {rtf_heads}")
    for name, r in results.items():
        rtfs = " | ".join(f"{r[f'rtf_{n}']:.4f}" for n in args.threads)
        print(f"{name} | {sizes[name] / 2**20:.2f} MiB | {100 * r['wer']:.2f} | {rtfs}")
    speedups = ", ".join(f"{results['float32'][f'rtf_{n}'] / results['int8'][f'rtf_{n}']:.2f}x at {n} thread(s)"
                         for n in args.threads)
    print(f"\nint8: {sizes['float32'] / sizes['int8']:.2f}x smaller file, forward {speedups} faster")


if __name__ == "__main__":
    main()
