"""Global feature statistics (``features.normalize=global``): log-Mel channel means and deviations
over a fixed random subset of the training manifest, set on the features before training."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator

import soundfile as sf
import torch
from tqdm import tqdm

from asr.data.manifest import read_manifest
from asr.data.reading import load_utterance, where
from asr.features import LogMelFeatures, global_stats

log = logging.getLogger(__name__)


def fit_global_stats(features: LogMelFeatures, manifest: str, max_utterances: int,
                     seed: int) -> dict:
    """Set ``features``' global statistics from at most ``max_utterances`` (a fixed random subset)
    of ``manifest``. Files that fail to load are skipped, as training skips them.

    Returns:
        ``{"utterances": used, "manifest", "mean", "std"}``, what ``global_stats.json`` holds.
    """
    utts = read_manifest(manifest)
    if len(utts) > max_utterances:
        utts = random.Random(seed).sample(utts, max_utterances)
    rate = features.config["sample_rate"]
    used = 0

    def waveforms() -> Iterator[torch.Tensor]:
        nonlocal used
        for u in tqdm(utts, desc="global feature statistics", unit="utt", leave=False,
                      disable=None):
            try:
                wav = load_utterance(u, rate)
            except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as err:
                log.warning("global statistics: skipped %s (%s)", where(u), err)
                continue
            if not torch.isfinite(wav).all():
                log.warning("global statistics: skipped %s (non-finite samples)", where(u))
                continue
            used += 1
            yield wav

    mean, std = global_stats(features, waveforms())
    features.set_global_stats(mean, std)
    log.info("global feature statistics from %d of %d utterances of %s", used, len(utts), manifest)
    return {"utterances": used, "manifest": str(manifest), "mean": mean.tolist(),
            "std": std.tolist()}
