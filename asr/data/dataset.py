"""The dataset: utterances -> (waveform, token ids, id); failed loads travel as
:class:`LoadFailure`; batches padded by :func:`collate`. Decoding happens in loader workers;
features are computed on the model's device."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset

from asr.audio import bad_samples, speed_perturb
from asr.data.augment import AudioAugment, draw_generator
from asr.data.manifest import ManifestTable, Utterance
from asr.data.reading import load_utterance, where
from asr.text import Tokenizer, normalize_text

log = logging.getLogger(__name__)


class LoadFailure(NamedTuple):
    """What a dataset yields for an utterance whose audio cannot be used."""

    id: str
    reason: str
    text: str = ""  # its normalised transcript, when known: scored as an empty hypothesis


class Batch(NamedTuple):
    """A padded batch of utterances.

    audio: (B, S) float waveforms, zero-padded; audio_lengths: (B,) samples;
    targets: (B, L) token ids, zero-padded; target_lengths: (B,); ids: utterance ids;
    texts: their normalised transcripts (what WER is scored against);
    dropped: the :class:`LoadFailure` of utterances whose audio failed to load (not in the batch);
    inter_targets, inter_target_lengths: the labels in the intermediate CTC's own units, if any.

    Only ``audio`` and the targets go to the accelerator; the lengths stay on the host, where CTC
    and packed LSTMs read them, so no step waits for the device to hand a number back.
    """

    audio: torch.Tensor
    audio_lengths: torch.Tensor
    targets: torch.Tensor
    target_lengths: torch.Tensor
    ids: list[str]
    texts: list[str] = []
    dropped: tuple[LoadFailure, ...] = ()
    inter_targets: torch.Tensor | None = None
    inter_target_lengths: torch.Tensor | None = None


class Item(NamedTuple):
    """One utterance, ready to batch: (S,) waveform, its label in each tokenizer's ids (the
    model's first, then the intermediate CTC's), id and normalised text."""

    wav: torch.Tensor
    labels: tuple[torch.Tensor, ...]
    id: str
    text: str


def encode_labels(text: str, tokenizers: Sequence[Tokenizer], strict: bool = True
                  ) -> tuple[torch.Tensor, ...]:
    """``text``'s ids in each tokenizer. ``strict=False``: a text a tokenizer cannot encode gets an
    empty label (validation scores such an utterance but leaves it out of the loss)."""
    labels = []
    for tok in tokenizers:
        try:
            ids = tok.encode(text)
        except ValueError:
            if strict:
                raise
            ids = []
        labels.append(torch.tensor(ids, dtype=torch.long))
    return tuple(labels)


class AudioDataset(Dataset):
    """Utterances -> :class:`Item` (waveform, labels, id, text), or :class:`LoadFailure`.

    Args:
        utterances: a manifest's utterances (a :class:`ManifestTable` or a list).
        tokenizers: the tokenizer(s) labels are made with (the model's first); none: no labels.
        sample_rate: audio is resampled to this rate.
        speed_perturb: speed factors, one drawn per read (e.g. ``[0.9, 1.0, 1.1]``).
        cache: keep each decoded waveform, and its speed-perturbed copies, in memory.
        strict_labels: ``False``: a text a tokenizer cannot encode gets an empty label.
        augment: waveform augmentation (noise, reverberation, non-speech), drawn per read from
            its seed; babble draws other utterances of this dataset.
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        tokenizers: Tokenizer | Sequence[Tokenizer] | None = None,
        sample_rate: int = 16000,
        speed_perturb: Sequence[float] | None = None,
        cache: bool = False,
        strict_labels: bool = True,
        augment: AudioAugment | None = None,
    ) -> None:
        self.augment = augment
        # a table stays one: its lines are read when asked for, and forked workers share its arrays
        self.utterances = utterances if isinstance(utterances, ManifestTable) else list(utterances)
        # index -> decoded waveform; (index, factor) -> that waveform at speed ``factor``
        self.cache: dict[int | tuple[int, float], torch.Tensor] | None = {} if cache else None
        single = hasattr(tokenizers, "encode")
        self.tokenizers = [tokenizers] if single else list(tokenizers or [])
        self.strict_labels = strict_labels
        self.sample_rate = sample_rate
        self.speed_perturb = [float(f) for f in speed_perturb or []]
        for f in self.speed_perturb:
            if not 0.5 <= f <= 2.0:
                raise ValueError(f"data.speed_perturb factors must lie in [0.5, 2], got {f}")

    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def durations(self) -> np.ndarray:
        """(N,) seconds of each utterance, from the manifest (a table's own array: no line read)."""
        if isinstance(self.utterances, ManifestTable):
            return self.utterances.durations
        return np.array([u.duration for u in self.utterances], dtype=np.float64)

    def _decoded(self, index: int) -> torch.Tensor | LoadFailure:
        """Utterance ``index``'s waveform at ``sample_rate``, from the cache when it holds it."""
        wav = self.cache.get(index) if self.cache is not None else None
        if wav is not None:
            return wav
        u = self.utterances[index]
        try:
            wav = load_utterance(u, self.sample_rate)
        except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as err:
            return LoadFailure(u.id, f"{where(u)}: {err.__class__.__name__}: {err}")
        if (why := bad_samples(wav)) is not None:
            return LoadFailure(u.id, f"{where(u)}: {why}")
        if self.cache is not None:
            self.cache[index] = wav
        return wav

    def _perturbed(self, index: int, wav: torch.Tensor, factor: float) -> torch.Tensor:
        """``wav`` played ``factor`` times faster (1/factor as long), cached with the waveform
        when the cache is on."""
        out = self.cache.get((index, factor)) if self.cache is not None else None
        if out is None:
            out = speed_perturb(wav, self.sample_rate, factor)
            if self.cache is not None:
                self.cache[(index, factor)] = out
        return out

    def fill_cache(self) -> None:
        """Decode every utterance, at each speed of ``speed_perturb``, into the cache now.

        Done in the main process before the loader starts, so forked workers share these tensors
        instead of each decoding on its own. Unreadable files stay out and fail on their reads.
        """
        if self.cache is None:
            raise ValueError("fill_cache needs a dataset made with cache=True "
                             "(data.cache_audio=true)")
        start = time.perf_counter()
        speeds = [f for f in self.speed_perturb if f != 1.0]
        for index in range(len(self)):
            wav = self._decoded(index)
            if isinstance(wav, LoadFailure):
                continue
            for factor in speeds:
                self._perturbed(index, wav, factor)
        nbytes = sum(t.numel() * t.element_size() for t in self.cache.values())
        log.info("cached %d utterances%s in memory: %.0f MB, %.1f s", len(self),
                 f" at speeds {[1.0, *speeds]}" if speeds else "", nbytes / 2**20,
                 time.perf_counter() - start)

    def __getitem__(self, item: int | tuple[int, int]) -> Item | LoadFailure:
        """:class:`Item` or :class:`LoadFailure` (``collate`` drops it from its batch and lists it
        in ``Batch.dropped``: a broken file must not kill a long run).

        ``item`` is an index, or ``(index, seed)`` (the training sampler's): the speed factor is
        then drawn from ``seed``, else from Python's ``random``.
        """
        index, seed = item if isinstance(item, tuple) else (item, None)
        u = self.utterances[index]
        text = normalize_text(u.text)
        wav = self._decoded(index)
        if isinstance(wav, LoadFailure):
            return wav._replace(text=text)
        if self.speed_perturb:
            factor = (random if seed is None else random.Random(seed)).choice(self.speed_perturb)
            if factor != 1.0:
                wav = self._perturbed(index, wav, factor)
        if self.augment is not None:
            wav, speech = self.augment(wav, draw_generator(seed), self._voices)
            text = text if speech else ""
        return Item(wav, encode_labels(text, self.tokenizers, self.strict_labels), u.id, text)


    def _voices(self, count: int, rng: np.random.Generator) -> list[torch.Tensor]:
        """``count`` other utterances drawn at random (babble); unreadable ones are left out."""
        drawn = (self._decoded(int(i)) for i in rng.integers(len(self), size=count))
        return [wav for wav in drawn if not isinstance(wav, LoadFailure)]


def _pad(labels: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels -> (B, L) zero-padded ids (L >= 1), (B,) lengths."""
    lengths = torch.tensor([t.numel() for t in labels], dtype=torch.long)
    padded = torch.zeros(len(labels), max(1, int(lengths.max())), dtype=torch.long)
    for i, t in enumerate(labels):
        padded[i, : t.numel()] = t
    return padded, lengths


def collate(items: Sequence[Item | LoadFailure]) -> Batch:
    """Pad waveforms and labels into a :class:`Batch`; failed loads go to ``Batch.dropped`` (which
    may leave B = 0)."""
    dropped = tuple(f for f in items if isinstance(f, LoadFailure))
    items = [it for it in items if not isinstance(it, LoadFailure)]
    if not items:
        empty = torch.zeros(0, dtype=torch.long)
        return Batch(torch.zeros(0, 0), empty, torch.zeros(0, 1, dtype=torch.long), empty, [], [],
                     dropped)
    audio_lengths = torch.tensor([it.wav.numel() for it in items], dtype=torch.long)
    audio = torch.zeros(len(items), int(audio_lengths.max()))
    for i, it in enumerate(items):
        audio[i, : it.wav.numel()] = it.wav
    n_labels = len(items[0].labels)
    targets, target_lengths = _pad([it.labels[0] for it in items]) if n_labels else _pad(
        [torch.zeros(0, dtype=torch.long)] * len(items))
    inter = _pad([it.labels[1] for it in items]) if n_labels > 1 else (None, None)
    return Batch(audio, audio_lengths, targets, target_lengths, [it.id for it in items],
                 [it.text for it in items], dropped, *inter)
