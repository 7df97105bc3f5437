"""The dataset: utterances -> (waveform, token ids, id); failed loads travel as :class:`LoadFailure`; batches padded
by :func:`collate`. Decoding happens in loader workers; features are computed on the model's device."""

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

from asr.data.audio import bad_samples, load_audio, speed_perturb
from asr.data.manifest import ManifestTable, Utterance
from asr.text import Tokenizer, normalize_text

log = logging.getLogger(__name__)


class Batch(NamedTuple):
    """A padded batch of utterances.

    audio: (B, S) float waveforms, zero-padded; audio_lengths: (B,) samples;
    targets: (B, L) token ids, zero-padded; target_lengths: (B,); ids: utterance ids;
    dropped: ``(id, reason)`` of utterances whose audio failed to load (not in the batch);
    inter_targets, inter_target_lengths: the targets in the intermediate CTC's own units, when it has them
    (:meth:`asr.training.inter_ctc.InterCTC.add_targets`, before the batch goes to the device).

    In training, only ``audio``, ``targets`` and ``inter_targets`` go to the accelerator
    (:meth:`asr.training.module.ASRModule.transfer_batch_to_device`); the lengths stay on the host, where CTC and
    packed LSTMs read them, so no step waits for the device to hand a number back.
    """

    audio: torch.Tensor
    audio_lengths: torch.Tensor
    targets: torch.Tensor
    target_lengths: torch.Tensor
    ids: list[str]
    dropped: tuple[tuple[str, str], ...] = ()
    inter_targets: torch.Tensor | None = None
    inter_target_lengths: torch.Tensor | None = None


class LoadFailure(NamedTuple):
    """What :class:`AudioDataset` yields for an utterance whose audio cannot be used."""

    id: str
    reason: str


class AudioDataset(Dataset):
    """Utterances -> (waveform, token ids, id); decoding happens here, features on the model's device.

    With ``tokenizer=None`` the token ids are empty (decoding only needs audio). With ``speed_perturb``
    (e.g. ``[0.9, 1.0, 1.1]``) each read picks one factor at random and resamples the waveform so it
    plays that much faster (tempo and pitch, as Kaldi's ``sox speed``). With ``cache`` each decoded waveform, and
    each speed-perturbed copy of it, is kept in memory: later reads skip the file, the decoder and the resampler.
    :meth:`fill_cache` fills it up front in this process, so loader workers forked afterwards share it.
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        tokenizer: Tokenizer | None,
        sample_rate: int = 16000,
        speed_perturb: Sequence[float] | None = None,
        cache: bool = False,
    ) -> None:
        # a table stays one: its lines are read when asked for, and forked loader workers share its arrays
        self.utterances = utterances if isinstance(utterances, ManifestTable) else list(utterances)
        # index -> decoded waveform; (index, factor) -> that waveform at speed ``factor``
        self.cache: dict[int | tuple[int, float], torch.Tensor] | None = {} if cache else None
        self.tokenizer = tokenizer
        self.sample_rate = sample_rate
        self.speed_perturb = [float(f) for f in speed_perturb or []]
        for f in self.speed_perturb:
            if not 0.5 <= f <= 2.0:
                raise ValueError(f"data.speed_perturb factors must lie in [0.5, 2], got {f}")

    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def durations(self) -> np.ndarray:
        """(N,) seconds of each utterance, from the manifest: a table's own array (no line is read)."""
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
            wav = load_audio(u.audio_filepath, self.sample_rate)
        except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as err:
            return LoadFailure(u.id, f"{u.audio_filepath}: {err.__class__.__name__}: {err}")
        if (why := bad_samples(wav)) is not None:
            return LoadFailure(u.id, f"{u.audio_filepath}: {why}")
        if self.cache is not None:
            self.cache[index] = wav
        return wav

    def _perturbed(self, index: int, wav: torch.Tensor, factor: float) -> torch.Tensor:
        """``wav`` played ``factor`` times faster: read as if recorded at sample_rate * factor, brought back to
        sample_rate, so 1/factor as long (cached with the waveform when the cache is on)."""
        out = self.cache.get((index, factor)) if self.cache is not None else None
        if out is None:
            out = speed_perturb(wav, self.sample_rate, factor)
            if self.cache is not None:
                self.cache[(index, factor)] = out
        return out

    def fill_cache(self) -> None:
        """Decode every utterance, and resample it to each speed of ``speed_perturb``, into the cache now.

        Done in the main process before the loader starts, the loader's worker processes (forked) share these
        tensors instead of each decoding and resampling on its own: on 2 CPU cores that work would otherwise
        take turns with the model's steps. Unreadable files stay out and fail on their reads as before.
        """
        if self.cache is None:
            raise ValueError("fill_cache needs a dataset made with cache=True (data.cache_audio=true)")
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
                 f" at speeds {[1.0, *speeds]}" if speeds else "", nbytes / 2**20, time.perf_counter() - start)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, str] | LoadFailure:
        """(waveform, token ids, id), or a :class:`LoadFailure` when the audio cannot be used.

        ``item`` is an index, or ``(index, seed)`` (:class:`~asr.data.sampler.BucketBatchSampler` with
        ``draw_seeds``): the speed factor is then drawn from ``seed``, else from Python's ``random``.

        A file that went missing, is corrupt or truncated, or decodes to no or non-finite samples must not
        kill a long run: ``collate`` drops it from its batch and lists it in ``Batch.dropped``.
        """
        index, seed = item if isinstance(item, tuple) else (item, None)
        u = self.utterances[index]
        wav = self._decoded(index)
        if isinstance(wav, LoadFailure):
            return wav
        if self.speed_perturb:
            factor = (random if seed is None else random.Random(seed)).choice(self.speed_perturb)
            if factor != 1.0:
                wav = self._perturbed(index, wav, factor)
        ids = self.tokenizer.encode(normalize_text(u.text)) if self.tokenizer is not None else []
        tokens = torch.tensor(ids, dtype=torch.long)
        return wav, tokens, u.id


def collate(items: Sequence[tuple[torch.Tensor, torch.Tensor, str] | LoadFailure]) -> Batch:
    """Pad waveforms and targets into a :class:`Batch`; failed loads go to ``Batch.dropped`` (may leave B = 0)."""
    dropped = tuple((f.id, f.reason) for f in items if isinstance(f, LoadFailure))
    items = [it for it in items if not isinstance(it, LoadFailure)]
    if not items:
        empty = torch.zeros(0, dtype=torch.long)
        return Batch(torch.zeros(0, 0), empty, torch.zeros(0, 1, dtype=torch.long), empty, [], dropped)
    wavs, tokens, ids = zip(*items, strict=True)
    audio_lengths = torch.tensor([w.numel() for w in wavs], dtype=torch.long)
    target_lengths = torch.tensor([t.numel() for t in tokens], dtype=torch.long)
    audio = torch.zeros(len(wavs), int(audio_lengths.max()))
    targets = torch.zeros(len(tokens), max(1, int(target_lengths.max())), dtype=torch.long)
    for i, (w, t) in enumerate(zip(wavs, tokens, strict=True)):
        audio[i, : w.numel()] = w
        targets[i, : t.numel()] = t
    return Batch(audio, audio_lengths, targets, target_lengths, list(ids), dropped)
