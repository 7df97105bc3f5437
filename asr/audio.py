"""Audio files: decode to mono float32 at the model's rate; check a file from its header and end."""

from __future__ import annotations

import os
from typing import BinaryIO

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF


def load_audio(path: str | os.PathLike | BinaryIO, sample_rate: int = 16000) -> torch.Tensor:
    """Decode an audio file (anything libsndfile reads), or a file object holding one, to mono.

    Channels are averaged; other sample rates are resampled to ``sample_rate``.

    Returns:
        (S,) float32 waveform in [-1, 1].
    """
    data, sr = sf.read(path if hasattr(path, "read") else str(path), dtype="float32",
                       always_2d=True)  # (S, C)
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1) if data.shape[1] > 1
                                                else data[:, 0]))
    if sr != sample_rate:
        wav = AF.resample(wav, sr, sample_rate)
    return wav


def bad_samples(wav: torch.Tensor) -> str | None:
    """Why a decoded waveform cannot train (no samples, NaN or inf), else ``None``."""
    if wav.numel() == 0:
        return "no samples"
    if not bool(torch.isfinite(wav).all()):
        return "NaN or inf samples"
    return None


def speed_perturb(wav: torch.Tensor, sample_rate: int, factor: float) -> torch.Tensor:
    """``wav`` played ``factor`` times faster, tempo and pitch (``sox speed``): 1/factor as long."""
    return wav if factor == 1.0 else AF.resample(wav, int(round(sample_rate * factor)), sample_rate)


def probe_audio(path: str | os.PathLike) -> tuple[sf._SoundFileInfo | None, str | None]:
    """Check an audio file's header and last samples: ``(info, None)`` or ``(None, reason)``.

    Catches what ``soundfile.info`` alone lets through: no samples, a SPHERE file shorter than its
    ``sample_count``, WAV chunk sizes that disagree with the file, an end that does not decode.
    """
    try:
        info = sf.info(str(path))
        if info.frames == 0:
            return None, "audio has no samples"
        if "should be" in info.extra_info:  # libsndfile's note on a chunk longer than the file
            bad = next(ln for ln in info.extra_info.splitlines() if "should be" in ln)
            return None, f"truncated audio: header and file size disagree ({bad.strip()})"
        if info.format == "NIST":
            with open(path, "rb") as f:
                head = f.read(1024).decode("ascii", "replace")
            declared = next((int(ln.split()[-1]) for ln in head.splitlines()
                             if ln.startswith("sample_count")), None)
            if declared is not None and declared > info.frames:
                return None, (f"truncated audio: header says {declared} samples, "
                              f"file holds {info.frames}")
        try:
            with sf.SoundFile(str(path)) as f:
                f.seek(max(0, f.frames - 256))
                tail = f.read(256, dtype="float32")
            ending = (None if len(tail) == min(256, info.frames)
                      else f"{len(tail)} of the last 256 samples read")
        except (sf.LibsndfileError, RuntimeError) as err:  # the header opened: the file ends early
            ending = f"libsndfile: {err}"
        if ending:
            return None, (f"truncated audio: {info.frames} samples in the header, "
                          f"the end does not decode ({ending})")
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, StopIteration) as err:
        return None, f"unreadable audio: {err}"
    return info, None
