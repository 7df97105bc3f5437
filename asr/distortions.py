"""What real rooms do to speech, as waveform functions: coloured noise, mixing at an SNR, babble,
convolution with a room impulse response, rooms simulated with pyroomacoustics. Every random
choice comes from the ``numpy`` generator passed in, so the same seed gives the same audio.

Used by training (:mod:`asr.data.augment`) and by the noisy test sets
(``benchmarks/noisy_an4.py``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torchaudio.functional as AF

log = logging.getLogger(__name__)

# power spectral density ~ 1 / f**exponent
COLORS = {"white": 0.0, "pink": 1.0, "brown": 2.0}


def rms(wav: torch.Tensor) -> float:
    return float(wav.double().pow(2).mean().sqrt()) if wav.numel() else 0.0


def colored_noise(samples: int, color: str, rng: np.random.Generator) -> torch.Tensor:
    """(samples,) noise of unit RMS with a ``white``, ``pink`` or ``brown`` spectrum."""
    if color not in COLORS:
        raise ValueError(f"noise colour {color!r}: choose one of {', '.join(COLORS)}")
    white = rng.standard_normal(samples)
    if COLORS[color]:
        spectrum = np.fft.rfft(white)
        freqs = np.fft.rfftfreq(samples)
        freqs[0] = freqs[1] if samples > 1 else 1.0  # no infinite DC
        white = np.fft.irfft(spectrum / freqs ** (COLORS[color] / 2), n=samples)
        white -= white.mean()
    std = white.std()
    return torch.from_numpy(white / std if std > 0 else white).float()


def fit_length(noise: torch.Tensor, samples: int, rng: np.random.Generator) -> torch.Tensor:
    """``noise`` cut to ``samples`` at a random offset, repeated first when it is shorter."""
    if noise.numel() == 0:
        return torch.zeros(samples)
    if noise.numel() < samples:
        noise = noise.repeat(samples // noise.numel() + 1)
    start = int(rng.integers(noise.numel() - samples + 1))
    return noise[start: start + samples]


def mix(speech: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """``speech + noise`` with the noise scaled to ``snr_db`` below the speech's power
    (``torchaudio.functional.add_noise``); silent speech or noise comes back unchanged."""
    if rms(noise) == 0.0 or rms(speech) == 0.0:
        return speech
    out = AF.add_noise(speech[None], noise[None].to(speech.dtype),
                       torch.tensor([float(snr_db)], dtype=speech.dtype))[0]
    return out


def babble(voices: Sequence[torch.Tensor], samples: int, rng: np.random.Generator
           ) -> torch.Tensor:
    """Several voices talking at once: each cut to ``samples`` at a random offset and brought to
    the same RMS, then summed."""
    out = torch.zeros(samples)
    for voice in voices:
        v = fit_length(voice, samples, rng)
        level = rms(v)
        if level > 0:
            out += v / level
    return out


def reverberate(wav: torch.Tensor, rir: torch.Tensor) -> torch.Tensor:
    """``wav`` heard through a room (``torchaudio.functional.fftconvolve``): aligned on the
    response's direct path (its peak), so words keep their times, cut to ``wav``'s length and
    brought back to its RMS."""
    if rir.numel() == 0 or wav.numel() == 0:
        return wav
    peak = int(rir.abs().argmax())
    # zeros after the waveform make the FFT a power of two long (a length with a large prime
    # factor costs ~4x): the samples kept are the same
    full = wav.numel() + rir.numel() - 1
    padded = torch.nn.functional.pad(wav, (0, (1 << (full - 1).bit_length()) - full))
    wet = AF.fftconvolve(padded, rir.to(wav.dtype))[peak: peak + wav.numel()]
    level, before = rms(wet), rms(wav)
    return wet * (before / level) if level > 0 else wet


def simulate_room(rt60: float, sample_rate: int, rng: np.random.Generator) -> torch.Tensor:
    """The impulse response between a talker and a microphone in a random shoebox room with
    reverberation time ``rt60`` seconds (pyroomacoustics' image source model; Sabine's formula
    gives the wall absorption)."""
    try:
        import pyroomacoustics as pra
    except ImportError as err:
        raise ImportError("simulated rooms need pyroomacoustics (the 'augment' extra: "
                          "make install, or pip install -e '.[augment]'); or set "
                          "audio_augment.reverb.rooms=0 and give audio_augment.reverb."
                          "rir_folder") from err
    for _ in range(100):
        dims = rng.uniform([3.0, 3.0, 2.4], [10.0, 8.0, 4.0])
        try:
            absorption, max_order = pra.inverse_sabine(rt60, dims)
        except ValueError:  # this room cannot reverberate that little: draw another
            continue
        room = pra.ShoeBox(dims, fs=sample_rate, materials=pra.Material(absorption),
                           max_order=max_order)
        source = rng.uniform([0.5, 0.5, 1.2], dims - [0.5, 0.5, 0.8])
        mic = rng.uniform([0.5, 0.5, 0.8], dims - [0.5, 0.5, 0.8])
        room.add_source(source.tolist())
        room.add_microphone(mic.tolist())
        room.compute_rir()
        return _trim_tail(np.asarray(room.rir[0][0], dtype=np.float64))
    raise ValueError(f"no shoebox room of 3-10 m found with RT60 {rt60} s: choose a longer "
                     "audio_augment.reverb.rt60")


def _trim_tail(rir: np.ndarray, floor_db: float = -60.0) -> torch.Tensor:
    """The response up to where what is left of its energy falls ``floor_db`` below the whole
    (Schroeder's backward integral): the rest is inaudible and would only lengthen the FFTs."""
    left = np.cumsum(rir[::-1] ** 2)[::-1]
    if left[0] <= 0:
        return torch.from_numpy(rir.astype(np.float32))
    end = int(np.searchsorted(-left, -left[0] * 10 ** (floor_db / 10)))
    return torch.from_numpy(rir[: max(end, 1)].astype(np.float32))


def simulate_rooms(count: int, rt60: Sequence[float], sample_rate: int, seed: int
                   ) -> list[torch.Tensor]:
    """``count`` room impulse responses, RT60 drawn uniformly from ``rt60`` = [low, high],
    the same for the same seed."""
    low, high = (float(x) for x in rt60)
    if not 0.05 <= low <= high <= 3.0:
        raise ValueError(f"rt60 {list(rt60)}: give [low, high] seconds within 0.05-3")
    rng = np.random.default_rng([seed, 28])
    return [simulate_room(float(rng.uniform(low, high)), sample_rate, rng) for _ in range(count)]


def melody(samples: int, sample_rate: int, rng: np.random.Generator) -> torch.Tensor:
    """A synthetic piece of music (unit RMS): notes of a pentatonic scale with harmonics and
    decaying envelopes, over a held chord. Not used in training; it stands in for music when no
    recording is at hand."""
    t = np.arange(samples) / sample_rate
    out = np.zeros(samples)
    root = 110.0 * 2 ** (rng.integers(0, 12) / 12)
    for step in (0, 7, 16):  # the held chord
        out += 0.3 * np.sin(2 * np.pi * root * 2 ** (step / 12) * t)
    start = 0
    while start < samples:
        length = int(sample_rate * rng.choice([0.125, 0.25, 0.5]))
        note = root * 4 * 2 ** (rng.choice([0, 2, 4, 7, 9, 12]) / 12)
        span = np.arange(min(length, samples - start)) / sample_rate
        envelope = np.exp(-span * 6.0)
        for harmonic, weight in ((1, 1.0), (2, 0.5), (3, 0.25)):
            out[start: start + span.size] += (weight * envelope
                                              * np.sin(2 * np.pi * note * harmonic * span))
        start += length
    std = out.std()
    return torch.from_numpy(out / std if std > 0 else out).float()
