"""A trained model at work: log-probs over a manifest (cached for decoder sweeps) or over audio of any length.

Used by training (model selection, evaluation at the end), ``asr.evaluate`` and ``asr.transcribe``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from asr.data.dataset import AudioDataset, collate
from asr.data.manifest import read_manifest
from asr.data.sampler import BucketBatchSampler
from asr.decoding import Decoder
from asr.pretrained import WEIGHTS, is_pretrained, saved_quantization
from asr.quantize import check_quantize, quantize_int8
from asr.text import normalize_text
from asr.training.module import ASRModule

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(
    checkpoint: str, device: str = "auto", quantize: str | None = None
) -> tuple[ASRModule, torch.device, str | None]:
    """A checkpoint or exported folder on its device, and its quantisation: int8 when asked or when the folder holds
    int8 weights (the device ``auto`` is then the CPU; int8 runs on the CPU only)."""
    quantize = check_quantize(quantize) or saved_quantization(checkpoint)
    dev = resolve_device("cpu" if quantize and device == "auto" else device)
    module = ASRModule.load_for_inference(checkpoint, map_location=dev).to(dev)
    return (quantize_int8(module) if quantize else module), dev, quantize


@torch.inference_mode()
def compute_log_probs(
    module: ASRModule,
    manifest: str,
    device: torch.device,
    batch_seconds: float = 200.0,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the model over every utterance of a manifest.

    Returns:
        ``{"ids", "refs" (normalised), "log_probs" (one (T, C) float32 CPU tensor per utterance),
        "audio_seconds", "forward_seconds"}``, in manifest order.
    """
    start = time.perf_counter()
    utts = read_manifest(manifest)
    ds = AudioDataset(utts, tokenizer=None, sample_rate=module.features.config["sample_rate"])
    sampler = BucketBatchSampler([u.duration for u in utts], batch_seconds, num_buckets=1, shuffle=False,
                                 drop_last=False, num_replicas=1, rank=0)
    out: dict[str, torch.Tensor] = {}
    for batch in tqdm(DataLoader(ds, batch_sampler=sampler, collate_fn=collate), desc=Path(manifest).name,
                      unit="batch", disable=not progress, leave=False):
        for utt_id, why in batch.dropped:
            # scored as an empty hypothesis (all deletions), never silently left out of the WER
            log.warning("%s: utterance %s failed to load, decoded as empty: %s", manifest, utt_id, why)
            out[utt_id] = torch.zeros(0, module.tokenizer.num_classes)
        if not batch.ids:
            continue
        log_probs, lengths = module(batch.audio.to(device), batch.audio_lengths.to(device))  # (B, T, C), (B,)
        log_probs, lengths = log_probs.float().cpu(), lengths.cpu()
        for i, utt_id in enumerate(batch.ids):
            out[utt_id] = log_probs[i, : int(lengths[i])].clone()
    ids = [u.id for u in utts]
    return {
        "ids": ids,
        "refs": [normalize_text(u.text) for u in utts],
        "log_probs": [out[i] for i in ids],
        "audio_seconds": sum(u.duration for u in utts),
        "forward_seconds": time.perf_counter() - start,
    }


def _cache_key(checkpoint: str, manifest: str, device: torch.device, quantize: str | None = None) -> dict[str, Any]:
    """What cached log-probs depend on: the weights (the checkpoint file, or a model folder's ``model.safetensors``)
    and the manifest (path, size, mtime), the device and the quantisation."""
    key: dict[str, Any] = {"version": CACHE_VERSION, "device": device.type}
    if quantize:  # only then: caches written before the setting existed stay valid
        key["quantize"] = quantize
    weights = Path(checkpoint) / WEIGHTS if is_pretrained(checkpoint) else Path(checkpoint)
    for name, path in (("checkpoint", weights), ("manifest", Path(manifest))):
        st = os.stat(path)
        key.update(
            {name: str(path.resolve()), f"{name}_size": st.st_size, f"{name}_mtime_ns": st.st_mtime_ns}
        )
    return key


def cached_log_probs(
    module: ASRModule, checkpoint: str, manifest: str, device: torch.device, cache_file: str | None,
    batch_seconds: float = 200.0, progress: bool = True, quantize: str | None = None,
) -> dict[str, Any]:
    """:func:`compute_log_probs`, loaded from ``cache_file`` when made from the same checkpoint and manifest.

    ``quantize`` says how ``module`` was quantised (``None`` or ``"int8"``), for the cache key only. The result has
    ``cached`` (True when loaded); ``forward_seconds`` is the time the forward pass took when the cache was written.
    """
    key = _cache_key(checkpoint, manifest, device, quantize)
    if cache_file and Path(cache_file).is_file():
        try:
            data = torch.load(cache_file, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated or foreign file: recompute and overwrite
            log.warning("ignoring unreadable log-prob cache %s (%s)", cache_file, err)
        else:
            if data.get("key") == key:
                log.info("log-probs of %s from cache %s", manifest, cache_file)
                return {**data, "cached": True}
            log.info("cache %s was made from another checkpoint/manifest; recomputing", cache_file)
    data = compute_log_probs(module, manifest, device, batch_seconds, progress)
    if cache_file:
        Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{cache_file}.tmp{os.getpid()}"
        torch.save({**data, "key": key}, tmp)
        os.replace(tmp, cache_file)  # atomic: a parallel sweep job never reads half a file
    return {**data, "cached": False}


def decode_log_probs(decoder: Decoder, log_probs: list[torch.Tensor], batch_size: int = 32) -> list[str]:
    """Decode per-utterance (T, C) log-probs in padded batches of ``batch_size``."""
    hyps: list[str] = []
    for start in range(0, len(log_probs), batch_size):
        chunk = log_probs[start : start + batch_size]
        lengths = torch.tensor([lp.shape[0] for lp in chunk])
        padded = torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True)  # (B, T, C)
        hyps.extend(decoder.decode(padded, lengths))
    return hyps


def split_points(
    wav: torch.Tensor, sample_rate: int, stride: int, chunk_seconds: float, search_seconds: float
) -> list[int]:
    """Cut positions (samples, multiples of ``stride``) so that no piece is longer than ``chunk_seconds``.

    Each cut is placed at the start of the lowest-energy ``stride``-long frame in the last ``search_seconds``
    of the piece (``search_seconds=0``: fixed windows).

    Returns:
        ``[0, cut_1, ..., len(wav)]``.
    """
    n = wav.numel()
    max_len = max(stride, int(chunk_seconds * sample_rate) // stride * stride)
    search = int(search_seconds * sample_rate) // stride * stride
    cuts = [0]
    while n - cuts[-1] > max_len:
        start = cuts[-1]
        end = start + max_len
        lo = max(start + stride, end - search)
        if lo < end:
            energy = wav[lo:end].reshape(-1, stride).pow(2).mean(dim=1)  # (frames,)
            cuts.append(lo + int(energy.argmin()) * stride)
        else:
            cuts.append(end)
    cuts.append(n)
    return cuts


@torch.inference_mode()
def long_log_probs(
    module: ASRModule,
    wav: torch.Tensor,
    device: torch.device,
    chunk_seconds: float = 30.0,
    overlap_seconds: float = 1.0,
    search_seconds: float = 5.0,
    batch_seconds: float = 200.0,
) -> torch.Tensor:
    """(S,) waveform of any length -> (T, C) log-probs, computed piecewise and stitched (see module doc)."""
    sr = module.features.config["sample_rate"]
    stride = module.samples_per_frame
    cuts = split_points(wav, sr, stride, chunk_seconds, search_seconds)
    ctx = int(overlap_seconds * sr) // stride * stride
    pieces = []  # (context start, context end, frames to skip, frames to keep or None for all)
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        s, e = max(0, a - ctx), min(wav.numel(), b + ctx)
        last = i == len(cuts) - 2
        pieces.append((s, e, (a - s) // stride, None if last else (b - a) // stride))
    per_batch = max(1, int(batch_seconds // (chunk_seconds + 2 * overlap_seconds)))
    out = []
    for k in range(0, len(pieces), per_batch):
        group = pieces[k : k + per_batch]
        lengths = torch.tensor([e - s for s, e, _, _ in group])
        audio = torch.zeros(len(group), int(lengths.max()))  # (B, S)
        for j, (s, e, _, _) in enumerate(group):
            audio[j, : e - s] = wav[s:e]
        log_probs, out_lengths = module(audio.to(device), lengths.to(device))  # (B, T, C), (B,)
        for j, (_, _, skip, keep) in enumerate(group):
            valid = log_probs[j, : int(out_lengths[j])].float().cpu()
            out.append(valid[skip:] if keep is None else valid[skip : skip + keep])
    return torch.cat(out)
