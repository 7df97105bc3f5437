"""A recognizer over a whole manifest: log-probs per utterance (cached, so decoder sweeps cost one
forward pass), and batched decoding of them. Used by ``asr.evaluate`` and the training's final
table."""

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
from asr.model_files import is_model_folder, weights_file
from asr.recognizer import Recognizer
from asr.report.run_info import run_dir_of
from asr.text import normalize_text

log = logging.getLogger(__name__)

CACHE_VERSION = 2


def model_home(checkpoint: str | os.PathLike) -> Path:
    """Where a model's evaluation outputs go by default: a model folder is its own home
    (``<folder>/decode``), a checkpoint's is its run dir."""
    return Path(checkpoint).resolve() if is_model_folder(checkpoint) else run_dir_of(checkpoint)


@torch.inference_mode()
def compute_log_probs(recognizer: Recognizer, manifest: str, batch_seconds: float = 200.0,
                      progress: bool = True) -> dict[str, Any]:
    """Run the recognizer over every utterance of a manifest, in manifest order.

    Returns:
        ``{"ids", "refs" (normalised), "log_probs" (one (T, C) float32 CPU tensor each),
        "audio_seconds", "forward_seconds"}``; an utterance whose audio fails to load has
        (0, C) log-probs (an empty hypothesis: all deletions, never left out of the WER).
    """
    start = time.perf_counter()
    utts = read_manifest(manifest)
    ds = AudioDataset(utts, sample_rate=recognizer.sample_rate)
    sampler = BucketBatchSampler([u.duration for u in utts], batch_seconds, num_buckets=1,
                                 shuffle=False, drop_last=False, num_replicas=1, rank=0)
    out: dict[str, torch.Tensor] = {}
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate)
    for batch in tqdm(loader, desc=Path(manifest).name, unit="batch", disable=not progress,
                      leave=False):
        for failure in batch.dropped:
            log.warning("%s: utterance %s failed to load, decoded as empty: %s", manifest,
                        failure.id, failure.reason)
            out[failure.id] = torch.zeros(0, recognizer.tokenizer.num_classes)
        if batch.ids:
            out.update(zip(batch.ids, recognizer.log_probs(batch.audio, batch.audio_lengths),
                           strict=True))
    ids = [u.id for u in utts]
    return {
        "ids": ids,
        "refs": [normalize_text(u.text) for u in utts],
        "log_probs": [out[i] for i in ids],
        "audio_seconds": sum(u.duration for u in utts),
        "forward_seconds": time.perf_counter() - start,
    }


def _cache_key(checkpoint: str, manifest: str, device: torch.device,
               quantize: str | None) -> dict[str, Any]:
    """What cached log-probs depend on: the weights file and the manifest (path, size, mtime),
    the device and the quantisation."""
    key: dict[str, Any] = {"version": CACHE_VERSION, "device": device.type, "quantize": quantize}
    for name, path in (("checkpoint", weights_file(checkpoint)), ("manifest", Path(manifest))):
        st = os.stat(path)
        key.update({name: str(path.resolve()), f"{name}_size": st.st_size,
                    f"{name}_mtime_ns": st.st_mtime_ns})
    return key


def cached_log_probs(recognizer: Recognizer, checkpoint: str, manifest: str,
                     cache_file: str | None, batch_seconds: float = 200.0, progress: bool = True,
                     quantize: str | None = None) -> dict[str, Any]:
    """:func:`compute_log_probs`, read from ``cache_file`` when it was made from the same weights,
    manifest, device and quantisation (``quantize`` is for the key only).

    The result has ``cached`` (True when read); ``forward_seconds`` is then the time the forward
    pass took when the cache was written.
    """
    key = _cache_key(checkpoint, manifest, recognizer.device, quantize)
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
    data = compute_log_probs(recognizer, manifest, batch_seconds, progress)
    if cache_file:
        Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{cache_file}.tmp{os.getpid()}"
        torch.save({**data, "key": key}, tmp)
        os.replace(tmp, cache_file)  # atomic: a parallel sweep job never reads half a file
    return {**data, "cached": False}


def decode_log_probs(decoder: Decoder, log_probs: list[torch.Tensor],
                     batch_size: int = 32) -> list[str]:
    """Decode per-utterance (T, C) log-probs in padded batches of ``batch_size``."""
    hyps: list[str] = []
    for start in range(0, len(log_probs), batch_size):
        chunk = log_probs[start : start + batch_size]
        lengths = torch.tensor([lp.shape[0] for lp in chunk])
        padded = torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True)  # (B, T, C)
        hyps.extend(decoder.decode(padded, lengths))
    return hyps
