"""Which utterances can train: one rule for the data module, the data check and the rejects list.

An utterance is left out, with its reason, when its normalised text is empty or holds a character
one of the model's tokenizers cannot encode, when its duration lies outside
``[min_duration, max_duration]`` (training only), or when it has fewer output frames than
:func:`~asr.text.ctc_min_frames` of its label: its CTC loss would be infinite.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from asr.data.manifest import Utterance
from asr.text import Tokenizer, ctc_min_frames, normalize_text

# why an utterance is left out: the kinds :meth:`UtteranceFilter.reject` returns, as logged
KINDS = {
    "text": "with empty text or characters outside the tokenizer",
    "duration": "outside data.min_duration..data.max_duration",
    "ctc": "too short for their label under CTC after subsampling "
           "(they would give an infinite loss)",
}


class UtteranceFilter:
    """The rule above, for the tokenizers and the model of one run.

    Args:
        tokenizers: every tokenizer a label must encode with; the first (the model's) decides
            the CTC length check.
        output_frames: (N,) sample counts -> (N,) model output frames; ``None``: no CTC check.
        sample_rate: the rate audio is resampled to (manifest durations -> samples).
        min_duration, max_duration: the training range in seconds (``None``: open).
    """

    def __init__(
        self,
        tokenizers: Sequence[Tokenizer],
        output_frames: Callable[[torch.Tensor], torch.Tensor] | None = None,
        sample_rate: int = 16000,
        min_duration: float | None = None,
        max_duration: float | None = None,
    ) -> None:
        if not tokenizers:
            raise ValueError("UtteranceFilter needs at least the model's tokenizer")
        self.tokenizers = list(tokenizers)
        self.output_frames = output_frames
        self.sample_rate = sample_rate
        self.min_duration, self.max_duration = min_duration, max_duration

    def frames(self, utterances: Sequence[Utterance]) -> list[int] | None:
        """Model output frames of each utterance, from its manifest duration (``None`` without
        ``output_frames``)."""
        if self.output_frames is None:
            return None
        if not utterances:
            return []
        samples = torch.tensor([round(u.duration * self.sample_rate) for u in utterances],
                               dtype=torch.long)
        return [int(n) for n in self.output_frames(samples).tolist()]

    def unknown_chars(self, text: str) -> set[str]:
        """Characters of a normalised text that any of the tokenizers cannot encode."""
        if len(self.tokenizers) == 1:
            return self.tokenizers[0].unknown_chars(text)
        return set().union(*(t.unknown_chars(text) for t in self.tokenizers))

    def reject(self, utt: Utterance, frames: int | None = None,
               check_duration: bool = False) -> tuple[str, str] | None:
        """``(kind, reason)`` when ``utt`` must be left out (kind: a key of :data:`KINDS`), else
        ``None``.

        Args:
            frames: its model output frames (see :meth:`frames`); ``None``: no CTC check.
            check_duration: apply ``[min_duration, max_duration]``.
        """
        text = normalize_text(utt.text)
        if not text:
            return "text", "empty text"
        unknown = self.unknown_chars(text)
        if unknown:
            return "text", f"characters outside the tokenizer: {''.join(sorted(unknown))!r}"
        lo, hi = self.min_duration, self.max_duration
        if check_duration and ((lo is not None and utt.duration < lo)
                               or (hi is not None and utt.duration > hi)):
            return "duration", (f"duration {utt.duration} s "
                                "outside data.min_duration..data.max_duration")
        if frames is None:
            return None
        ids = self.tokenizers[0].encode(text)
        # a label needs at most 2 len - 1 frames: count its repeats only for short utterances
        if frames < 2 * len(ids) - 1 and frames < (need := ctc_min_frames(ids)):
            return "ctc", f"too short for its label under CTC ({frames} frames < {need})"
        return None

    def rejects(self, utterances: Sequence[Utterance], check_duration: bool = False,
                check_ctc: bool = True) -> list[tuple[str, str] | None]:
        """:meth:`reject` of each utterance, their output frames computed together.

        Args:
            utterances: a chunk of a manifest (see :meth:`asr.data.manifest.ManifestTable.read`).
            check_duration: apply ``[min_duration, max_duration]``.
            check_ctc: check the CTC length (when the filter has ``output_frames``).
        """
        frames = self.frames(utterances) if check_ctc else None
        if frames is None:
            return [self.reject(u, None, check_duration) for u in utterances]
        return [self.reject(u, n, check_duration)
                for u, n in zip(utterances, frames, strict=True)]
