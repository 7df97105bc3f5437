"""Waveform augmentation of training reads (``audio_augment`` settings, conf/audio_augment/).

Each training read may be heard through a room (an impulse response from a folder such as
OpenSLR's RIRS_NOISES, or a room simulated once at setup), then under noise at an SNR drawn from a
range (generated coloured noise, babble of other training utterances, or recordings from a folder
such as MUSAN), or be replaced by non-speech (silence or noise, with an empty transcript) so the
model learns to say nothing when nobody talks. Every draw comes from the read's seed
(the sampler's), so exact resume and shard mode give the same audio.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from asr.audio import load_audio
from asr.distortions import (
    COLORS,
    babble,
    colored_noise,
    fit_length,
    mix,
    reverberate,
    rms,
    simulate_rooms,
)

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".sph", ".ogg")
CACHED = 1024  # whole files a FileBank keeps in memory
# other training utterances: (how many, generator) -> waveforms
Voices = Callable[[int, np.random.Generator], list[torch.Tensor]]


def audio_files(where: str, setting: str) -> list[Path]:
    """The audio files of a folder (recursively, sorted) or of a JSONL manifest."""
    path = Path(where)
    if path.is_file():
        with open(path) as f:
            files = [Path(json.loads(line)["audio_filepath"]) for line in f if line.strip()]
        files = [p if p.is_absolute() else path.parent / p for p in files]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    else:
        raise FileNotFoundError(f"{setting}={where}: no such folder or manifest")
    if not files:
        raise ValueError(f"{setting}={where}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in it")
    return files


class FileBank:
    """Audio files read on demand: a random stretch of a drawn file, at ``sample_rate``."""

    def __init__(self, files: Sequence[Path], sample_rate: int) -> None:
        self.files = list(files)
        self.sample_rate = sample_rate
        self._cache: dict[int, torch.Tensor] = {}  # whole files read (impulse responses are short)

    def whole(self, rng: np.random.Generator) -> torch.Tensor:
        """A drawn file, whole (impulse responses), kept for the next draw of it (at most
        ``CACHED`` files)."""
        index = int(rng.integers(len(self.files)))
        if index not in self._cache:
            if len(self._cache) >= CACHED:
                self._cache.pop(next(iter(self._cache)))
            self._cache[index] = load_audio(self.files[index], self.sample_rate)
        return self._cache[index]

    def stretch(self, samples: int, rng: np.random.Generator) -> torch.Tensor:
        """``samples`` of a drawn file from a random offset (repeated when it is shorter)."""
        path = self.files[int(rng.integers(len(self.files)))]
        info = sf.info(str(path))
        want = int(np.ceil(samples * info.samplerate / self.sample_rate)) + 1
        if info.frames <= want:
            return fit_length(load_audio(path, self.sample_rate), samples, rng)
        start = int(rng.integers(info.frames - want + 1))
        data, rate = sf.read(str(path), start=start, frames=want, dtype="float32",
                             always_2d=True)
        wav = torch.from_numpy(data[:, 0].copy())
        if rate != self.sample_rate:
            import torchaudio.functional as AF
            wav = AF.resample(wav, rate, self.sample_rate)
        return fit_length(wav, samples, rng)


def _weights(table: Mapping[str, float] | None, known: Sequence[str], setting: str
             ) -> dict[str, float]:
    table = {k: float(v) for k, v in (table or {}).items() if v}
    for name, weight in table.items():
        if name not in known or weight < 0:
            raise ValueError(f"{setting}.{name}={weight}: the sources are {', '.join(known)}, "
                             "each with a weight >= 0")
    return table


def _draw(table: Mapping[str, float], rng: np.random.Generator) -> str:
    names = list(table)
    p = np.array([table[n] for n in names])
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _range(value: Sequence[float], setting: str) -> tuple[float, float]:
    low, high = (float(v) for v in value)
    if low > high:
        raise ValueError(f"{setting}={list(value)}: give [low, high]")
    return low, high


def _prob(section: Mapping, setting: str) -> float:
    p = float(section.get("prob", 0.0))
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{setting}.prob={p}: a probability lies in [0, 1]")
    return p


class AudioAugment:
    """Distorts training reads; ``__call__(wav, rng, voices)`` -> (waveform, still speech?).

    Args:
        sample_rate: of the waveforms.
        noise: ``{prob, snr: [low, high] dB, sources: {name: weight}, voices: [low, high],
            folder}``; sources: ``white``, ``pink``, ``brown`` (generated), ``babble`` (``voices``
            other training utterances at once), ``files`` (recordings under ``folder``, a folder
            or a JSONL manifest, e.g. MUSAN's).
        reverb: ``{prob, rir_folder, rooms, rt60: [low, high] s, seed}``: impulse responses from
            ``rir_folder`` (e.g. RIRS_NOISES/simulated_rirs) and/or ``rooms`` rooms simulated at
            setup with RT60 drawn from ``rt60`` (pyroomacoustics).
        nonspeech: ``{prob, sources: {name: weight}, level_db: [low, high]}``: the read replaced
            by ``silence`` (digital zeros), generated noise (``white``/``pink``/``brown``) or
            ``files`` (``noise.folder``'s recordings outside any ``speech`` folder) at an RMS of
            ``level_db`` dB full scale, with an empty transcript.
    """

    def __init__(self, sample_rate: int = 16000, noise: Mapping | None = None,
                 reverb: Mapping | None = None, nonspeech: Mapping | None = None) -> None:
        self.sample_rate = sample_rate
        noise, reverb, nonspeech = dict(noise or {}), dict(reverb or {}), dict(nonspeech or {})
        self.noise_prob = _prob(noise, "audio_augment.noise")
        self.snr = _range(noise.get("snr", [0, 20]), "audio_augment.noise.snr")
        self.voices = tuple(int(v) for v in _range(noise.get("voices", [3, 7]),
                                                    "audio_augment.noise.voices"))
        colors = (*COLORS, "babble", "files")
        self.noise_sources = _weights(noise.get("sources"), colors, "audio_augment.noise.sources")
        folder = noise.get("folder")
        self.files = (FileBank(audio_files(folder, "audio_augment.noise.folder"), sample_rate)
                      if folder else None)
        if self.noise_prob and not self.noise_sources:
            raise ValueError("audio_augment.noise.prob > 0 needs audio_augment.noise.sources, "
                             "e.g. {pink: 1, babble: 1}")
        if "files" in self.noise_sources and self.files is None:
            raise ValueError("audio_augment.noise.sources.files needs audio_augment.noise.folder "
                             "(a MUSAN folder: python -m asr.prepare_noise corpus=musan)")
        self.reverb_prob = _prob(reverb, "audio_augment.reverb")
        self.rirs = self._impulse_responses(reverb)
        self.nonspeech_prob = _prob(nonspeech, "audio_augment.nonspeech")
        self.nonspeech_sources = _weights(nonspeech.get("sources", {"silence": 1, "pink": 1}),
                                          ("silence", *COLORS, "files"),
                                          "audio_augment.nonspeech.sources")
        self.level_db = _range(nonspeech.get("level_db", [-60, -20]),
                               "audio_augment.nonspeech.level_db")
        self.nonspeech_files = None
        if "files" in self.nonspeech_sources:
            if self.files is None:
                raise ValueError("audio_augment.nonspeech.sources.files needs "
                                 "audio_augment.noise.folder")
            kept = [p for p in self.files.files if "speech" not in p.parts]
            self.nonspeech_files = FileBank(kept, sample_rate) if kept else None

    def _impulse_responses(self, reverb: Mapping) -> tuple[FileBank | None, list[torch.Tensor]]:
        folder, rooms = reverb.get("rir_folder"), int(reverb.get("rooms", 0) or 0)
        bank = (FileBank(audio_files(folder, "audio_augment.reverb.rir_folder"), self.sample_rate)
                if folder else None)
        simulated: list[torch.Tensor] = []
        if rooms:
            start = time.perf_counter()
            simulated = simulate_rooms(rooms, reverb.get("rt60", [0.2, 0.9]), self.sample_rate,
                                       int(reverb.get("seed", 0)))
            log.info("simulated %d rooms for reverberation in %.1f s", rooms,
                     time.perf_counter() - start)
        if self.reverb_prob and bank is None and not simulated:
            raise ValueError("audio_augment.reverb.prob > 0 needs audio_augment.reverb.rooms > 0 "
                             "or audio_augment.reverb.rir_folder (RIRS_NOISES/simulated_rirs: "
                             "python -m asr.prepare_noise corpus=rirs)")
        return bank, simulated

    @property
    def needs_voices(self) -> bool:
        return bool(self.noise_prob and "babble" in self.noise_sources)

    def __call__(self, wav: torch.Tensor, rng: np.random.Generator, voices: Voices | None = None
                 ) -> tuple[torch.Tensor, bool]:
        """The distorted read, and whether it still holds the utterance's speech (``False``: it
        was replaced by non-speech, whose transcript is empty)."""
        if self.nonspeech_prob and rng.random() < self.nonspeech_prob:
            return self.nonspeech(wav.numel(), rng), False
        if self.reverb_prob and rng.random() < self.reverb_prob:
            wav = reverberate(wav, self._rir(rng))
        if self.noise_prob and rng.random() < self.noise_prob:
            source = _draw(self.noise_sources, rng)
            noise = self._noise(source, wav.numel(), rng, voices)
            wav = mix(wav, noise, float(rng.uniform(*self.snr)))
        return wav, True

    def _rir(self, rng: np.random.Generator) -> torch.Tensor:
        bank, simulated = self.rirs
        if bank is not None and (not simulated or rng.random() < 0.5):
            return bank.whole(rng)
        return simulated[int(rng.integers(len(simulated)))]

    def _noise(self, source: str, samples: int, rng: np.random.Generator,
               voices: Voices | None) -> torch.Tensor:
        if source == "babble":
            if voices is None:
                raise ValueError("babble needs the other training utterances")
            return babble(voices(int(rng.integers(self.voices[0], self.voices[1] + 1)), rng),
                          samples, rng)
        if source == "files":
            return self.files.stretch(samples, rng)
        return colored_noise(samples, source, rng)

    def nonspeech(self, samples: int, rng: np.random.Generator) -> torch.Tensor:
        """``samples`` of silence or noise alone, at a drawn level."""
        source = _draw(self.nonspeech_sources, rng)
        if source == "silence":
            return torch.zeros(samples)
        if source == "files" and self.nonspeech_files is not None:
            sound = self.nonspeech_files.stretch(samples, rng)
        else:
            sound = colored_noise(samples, source if source in COLORS else "pink", rng)
        level = rms(sound)
        gain = 10 ** (float(rng.uniform(*self.level_db)) / 20) / level if level > 0 else 0.0
        return sound * gain


def draw_generator(seed: int | None) -> np.random.Generator:
    """The generator of a read's augmentation draws: from the sampler's per-read seed (so a
    resumed run draws the same), or fresh entropy without one."""
    return np.random.default_rng(None if seed is None else [int(seed), 37])
