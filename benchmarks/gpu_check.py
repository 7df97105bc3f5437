"""The GPU check's measurements (``benchmarks/gpu_check.sh`` runs them, each phase under its own
time limit).

    python benchmarks/gpu_check.py model  --json OUT/model.json [--dry]  # the 960 h training step
    python benchmarks/gpu_check.py loader DIR [--dry]  # FLAC decode, resampling, the loader

``model``: on synthetic waveforms, the 960 h recipe's shape (80 log-Mel, two strided convolutions,
5 x 1024 BiLSTM, 29 characters), through the project's own modules
(``asr.training.module.ASRModule.train_loss``) and the step the trainer takes (the guard's
global-norm clipping and skip flag, fused AdamW):

- ``lstm_dispatch``: the LSTM kernels (profiler op names) and output dtype under bf16 autocast,
  packed and dense;
- ``parity_fp32``: packed vs dense over the same weights (dropout off, no TF32): log-probs and
  gradients;
- ``grad_fidelity_bf16_vs_fp32``: relative gradient error of bf16-mixed against fp32, per part of
  the model;
- ``host_syncs``: CUDA only, ``torch.cuda.set_sync_debug_mode``: the synchronising calls one step
  makes, and where;
- one row per (LSTM, precision, utterance seconds, batch seconds): ms/step, audio-s/s, peak GiB.

``loader``: per core, soundfile FLAC decode (SPHERE in a dry run without FLAC files) and the
speed-perturbation resampling of :class:`asr.data.dataset.AudioDataset`, then the project's loader
(bucketed 600 s batches, ``collate``, pinned memory on CUDA) with 1.. N workers: audio-s/s and the
cores one GPU needs at 6,000 audio-s/s.

``--dry``: tiny shapes on the CPU, a second or so per part: ``make test`` runs it
(tests/test_gpu_check.py). The phase budget (``--budget``) does not apply to a dry run: every row
is measured, however busy the CPU, so what the test sees does not depend on the machine's speed.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import statistics
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr.data.dataset import AudioDataset, Batch, collate  # noqa: E402
from asr.data.manifest import Utterance  # noqa: E402
from asr.data.sampler import BucketBatchSampler  # noqa: E402
from asr.features import LogMelFeatures, SpecAugment  # noqa: E402
from asr.model import BiLSTMCTC  # noqa: E402
from asr.text import CharTokenizer  # noqa: E402
from asr.training.module import ASRModule  # noqa: E402

SR, CHARS_PER_S = 16000, 14.6  # LibriSpeech: ~2.7 words/s x ~5.4 characters (space included)


class Report:
    """Prints each result as ``key: json`` and keeps them all in a JSON file."""

    def __init__(self, path: str | None) -> None:
        self.path, self.results = path, {}

    def __call__(self, key: str, value: object) -> None:
        self.results[key] = value
        print(f"{key}: {json.dumps(value, default=str)}", flush=True)
        if self.path:
            Path(self.path).write_text(json.dumps(self.results, indent=1, default=str))


def build(shape: dict, device: torch.device, lstm: str) -> ASRModule:
    torch.manual_seed(0)
    model = partial(BiLSTMCTC, hidden_size=shape["hidden"], num_layers=shape["layers"], dropout=0.2,
                    subsampling="conv", subsampling_factor=4, lstm=lstm)
    return ASRModule(CharTokenizer(), LogMelFeatures(), model, augment=SpecAugment()).to(device)


def make_batch(dur: float, batch_s: float, seed: int, device: torch.device, classes: int) -> Batch:
    """One bucketed batch as the trainer gets it: B utterances within 7 % of ``dur``; waveforms and
    targets on the device, lengths on the host."""
    g = torch.Generator().manual_seed(seed)
    b = max(1, int(batch_s // dur))
    secs = torch.empty(b).uniform_(0.93 * dur, dur, generator=g)
    secs[0] = dur
    alen = (secs * SR).long()
    audio = torch.randn(b, int(alen.max()), generator=g) * 0.1
    audio *= torch.arange(audio.shape[1])[None] < alen[:, None]
    tlen = (secs * CHARS_PER_S).long().clamp(min=1)
    targets = torch.randint(1, classes, (b, int(tlen.max())), generator=g)
    return Batch(audio.to(device), alen, targets.to(device), tlen, [f"u{i}" for i in range(b)])


def train_step(module: ASRModule, opt: torch.optim.Optimizer, batch: Batch,
               bf16: bool) -> torch.Tensor:
    """What the trainer does per batch: loss, backward, the guard's clip + skip flag, the fused
    optimiser."""
    with torch.autocast(batch.audio.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss, _ = module.train_loss(batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in module.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, 5.0)
    opt.found_inf = (~torch.isfinite(norm)).float()
    opt.step()
    return loss.detach()


def no_dropout(module: ASRModule) -> ASRModule:
    """Dropout off, training mode kept (cuDNN refuses an RNN backward after an eval-mode
    forward)."""
    for m in module.modules():
        if isinstance(getattr(m, "p", None), float):
            m.p = 0.0
    module.augment = None
    return module.train()


def probe(report: Report, device: torch.device, shape: dict) -> None:
    res = {}
    for lstm in ("packed", "dense"):
        module = build(shape, device, lstm)
        batch = make_batch(2.0, 8.0, 1, device, module.recognizer.tokenizer.num_classes)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                feats, flen = module.recognizer.features(batch.audio, batch.audio_lengths)
                x, lengths = module.recognizer.model.frontend(feats, flen)
                outputs = module.recognizer.model.lstm(x, lengths)
            outputs.float().sum().backward()
        ops = sorted({e.key for e in prof.key_averages()
                      if any(k in e.key.lower() for k in ("rnn", "lstm"))})
        res[lstm] = {"output_dtype": str(outputs.dtype), "ops": ops}
    report("lstm_dispatch", res)


def parity(report: Report, device: torch.device, shape: dict) -> None:
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    module = no_dropout(build(shape, device, "dense"))
    batch = make_batch(2.0, 8.0, 1, device, module.recognizer.tokenizer.num_classes)
    got = {}
    for lstm in ("dense", "packed"):
        module.recognizer.model.lstm.implementation = lstm
        module.zero_grad(set_to_none=True)
        loss, _ = module.train_loss(batch)
        loss.backward()
        log_probs, _ = module.recognizer(batch.audio, batch.audio_lengths)
        got[lstm] = (loss.item(), log_probs.detach(),
                     {n: p.grad.clone() for n, p in module.named_parameters()})
    (la, pa, ga), (lb, pb, gb) = got["dense"], got["packed"]
    worst = max(((ga[n] - gb[n]).norm() / gb[n].norm().clamp(min=1e-30)).item() for n in ga)
    report("parity_fp32", {"loss": [la, lb], "log_probs_max_abs_diff": (pa - pb).abs().max().item(),
                           "grad_max_rel_diff": worst})
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False


def grad_fidelity(report: Report, device: torch.device, shape: dict, dry: bool) -> None:
    res = {}
    for lstm in ("packed", "dense"):
        module = no_dropout(build(shape, device, lstm))
        batch = make_batch(15.0 if not dry else 1.0, 240.0 if not dry else 4.0, 2, device,
                           module.recognizer.tokenizer.num_classes)
        grads = {}
        for bf16 in (False, True):
            module.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss, _ = module.train_loss(batch)
            loss.backward()
            grads[bf16] = {n: p.grad.float().clone() for n, p in module.named_parameters()
                           if p.grad is not None}
        rows = {}
        for part in ("model.frontend", "model.lstm", "model.classifier"):
            names = [n for n in grads[False] if n.startswith(f"recognizer.{part}")]
            ref = torch.cat([grads[False][n].flatten() for n in names])
            low = torch.cat([grads[True][n].flatten() for n in names])
            rows[part] = {"rel_err": ((low - ref).norm() / ref.norm()).item(),
                          "zero_frac_bf16": (low == 0).float().mean().item()}
        res[lstm] = rows
    report("grad_fidelity_bf16_vs_fp32", res)


def host_syncs(report: Report, device: torch.device, shape: dict) -> None:
    """The synchronising CUDA calls of one training step (after a warm-up step), each with the line
    that made it."""
    if device.type != "cuda":
        return report("host_syncs", "n/a on CPU")
    res = {}
    for lstm in ("packed", "dense"):
        module = build(shape, device, lstm)
        opt = torch.optim.AdamW(module.parameters(), lr=1e-4, fused=True)
        batch = make_batch(15.0, 120.0, 3, device, module.recognizer.tokenizer.num_classes)
        train_step(module, opt, batch, True)
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train_step(module, opt, batch, True)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        res[lstm] = {"count": len(caught),
                     "where": sorted({f"{w.filename.split('site-packages/')[-1]}:{w.lineno}"
                                      for w in caught})[:12]}
    report("host_syncs", res)


def timed(report: Report, module: ASRModule, opt, lstm: str, precision: str, dur: float,
          batch_s: float, steps: int, budget_end: float) -> None:
    key = f"{lstm:6s} {precision:4s} utt {dur:>4.0f}s batch {batch_s:>5.0f}s"
    if time.perf_counter() > budget_end:
        return report(key, "skipped: phase budget spent")
    device = next(module.parameters()).device
    cuda = device.type == "cuda"
    module.recognizer.model.lstm.implementation = lstm
    batches = [make_batch(dur, batch_s, s, device, module.recognizer.tokenizer.num_classes)
               for s in (10, 11)]
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        t = time.perf_counter()
        train_step(module, opt, batches[0], precision == "bf16")
        if cuda:
            torch.cuda.synchronize()
        first = time.perf_counter() - t
        times = []
        for i in range(steps):
            t = time.perf_counter()
            loss = train_step(module, opt, batches[i % 2], precision == "bf16")
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        step = statistics.median(times)
        audio = statistics.mean(b.audio_lengths.sum().item() for b in batches) / SR
        row = {"B": batches[0].audio.shape[0], "ms_per_step": round(step * 1e3, 1),
               "audio_s_per_s": round(audio / step), "first_step_s": round(first, 2),
               "loss": round(loss.item(), 2)}
        if cuda:
            row["peak_alloc_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        report(key, row)
    except torch.cuda.OutOfMemoryError as err:
        report(key, f"OOM: {str(err)[:160]}")


def model_phase(args: argparse.Namespace) -> None:
    report = Report(args.json)
    device = torch.device("cpu" if args.dry or not torch.cuda.is_available() else "cuda")
    shape = {"hidden": 32, "layers": 2} if args.dry else {"hidden": 1024, "layers": 5}
    start = time.perf_counter()
    for part in (probe, parity, host_syncs):
        part(report, device, shape)
    grad_fidelity(report, device, shape, args.dry)
    if args.dry:
        plan = [("bf16", 1, 4), ("fp32", 1, 4)]
    else:  # most telling first: the recipe's 600 s batches at a typical 15 s, then the longest
        # utterances, then 4x
        plan = [("bf16", 15, 600), ("fp32", 15, 600), ("bf16", 35, 600), ("bf16", 15, 2400),
                ("bf16", 5, 600), ("fp32", 35, 600), ("bf16", 35, 2400)]
    budget_end = math.inf if args.dry else start + args.budget  # a dry run measures every row
    module = build(shape, device, "packed")
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=1e-2,
                            fused=True)
    for precision, dur, batch_s in plan:
        for lstm in ("packed", "dense"):
            timed(report, module, opt, lstm, precision, dur, batch_s, 1 if args.dry else 5,
                  budget_end)
    print(f"model phase done in {time.perf_counter() - start:.0f} s", flush=True)


def loader_phase(args: argparse.Namespace) -> None:
    import soundfile as sf
    import torchaudio.functional as AF
    from torch.utils.data import DataLoader

    secs = 0.3 if args.dry else 4.0
    files = sorted(glob.glob(f"{args.dir}/**/*.flac", recursive=True))
    kind = "FLAC"
    if not files and args.dry:  # a clone without ../shared: the AN4 fixture's SPHERE files
        files, kind = sorted(glob.glob(f"{args.dir}/**/*.sph", recursive=True)), "SPHERE"
    if not files:
        sys.exit(f"no FLAC files under {args.dir}: copy ../shared/data/librispeech-samples there")
    texts = {}
    for t in glob.glob(f"{args.dir}/**/*.trans.txt", recursive=True):
        for line in open(t, encoding="utf-8"):
            uid, _, txt = line.strip().partition(" ")
            texts[uid] = txt.lower()
    dur = {f: sf.info(f).duration for f in files}
    total = sum(dur.values())
    cuda = torch.cuda.is_available() and not args.dry
    print(f"{len(files)} {kind} files, {total:.1f} s, mean {total / len(files):.1f} s; "
          f"{os.cpu_count()} CPUs; cuda {cuda}")
    torch.set_num_threads(1)

    def per_core(fn, what: str) -> None:
        audio, start = 0.0, time.perf_counter()
        while time.perf_counter() - start < secs:
            for f in files:
                fn(f)
                audio += dur[f]
        rate = audio / (time.perf_counter() - start)
        print(f"1 core, {what:<40} {rate:>9.0f} audio-s/s -> {6000 / rate:4.1f} cores for "
              "6,000 audio-s/s", flush=True)

    per_core(lambda f: sf.read(f, dtype="float32"), f"{kind} decode (soundfile, page cache)")
    wavs = {f: torch.from_numpy(sf.read(f, dtype="float32")[0]) for f in files}
    for factor in (0.9, 1.1):
        per_core(lambda f, k=factor: AF.resample(wavs[f], int(round(SR * k)), SR),
                 f"speed {factor} resample")
    # the same few files over and over (page cache)
    reps = max(1, int((0.05 if args.dry else 3) * 3600 / total))
    stem = [Path(f).name[: -len(".flac")] for f in files]
    utts = [Utterance(f, dur[f], texts.get(s, "a b c"), f"{s}-{k}")
            for k in range(reps) for f, s in zip(files, stem, strict=True)]
    workers = [1] if args.dry else [1, 2, 4, 8, 14]
    for n, speeds in [(w, None) for w in workers] + [(workers[-1], [0.9, 1.0, 1.1])]:
        dataset = AudioDataset(utts, CharTokenizer(), SR, speed_perturb=speeds)
        sampler = BucketBatchSampler([u.duration for u in utts], 600.0 if not args.dry else 60.0,
                                     num_buckets=40)
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=n,
                            pin_memory=cuda)
        it = iter(loader)
        next(it)  # worker start-up is not counted
        audio, batches, start = 0.0, 0, time.perf_counter()
        for batch in it:
            if cuda:
                batch.audio.to("cuda", non_blocking=True)
            audio += batch.audio_lengths.sum().item() / SR
            batches += 1
            if time.perf_counter() - start > secs:
                break
        if cuda:
            torch.cuda.synchronize()
        rate = audio / (time.perf_counter() - start)
        print(f"loader {n:>2} workers{' speed perturb' if speeds else '':<14} {batches:>4} "
              f"batches: {rate:>8.0f} audio-s/s", flush=True)
        del it, loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("phase", choices=["model", "loader"])
    parser.add_argument("dir", nargs="?",
                        help="loader: a folder of LibriSpeech FLAC + trans.txt files")
    parser.add_argument("--json", help="model: write the results here too")
    parser.add_argument("--dry", action="store_true", help="tiny shapes on the CPU")
    parser.add_argument("--budget", type=float, default=190.0,
                        help="model: seconds for the timed rows (not with --dry: every row runs)")
    args = parser.parse_args()
    model_phase(args) if args.phase == "model" else loader_phase(args)


if __name__ == "__main__":
    main()
