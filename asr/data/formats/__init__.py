"""Corpora as other toolkits keep them, read into our manifest's utterances: Kaldi data dirs
(:mod:`.kaldi`), Lhotse manifests (:mod:`.lhotse_cuts`), Hugging Face datasets
(:mod:`.huggingface`).

Each reader returns an :class:`Imported`: every utterance of the source is either taken (an
:class:`~asr.data.manifest.Utterance` pointing at the audio in place: a file, a segment of one, a
command, a row's bytes) or rejected with the reason. ``python -m asr.import_data`` writes both.
The libraries (lhotse, datasets) are imported by their readers only.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import soundfile as sf

from asr.data.manifest import Utterance
from asr.data.reading import encoded, where


@dataclass
class Imported:
    """What a reader took and what it rejected (``{"id", "reason", ...}``, in source order)."""

    utterances: list[Utterance] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)

    def reject(self, uid: str, reason: str, **extra) -> None:
        self.rejected.append({"id": uid, "reason": reason, **extra})


def source_seconds(u: Utterance) -> float:
    """Seconds of the whole audio ``u`` points at (the recording, not the segment), from its
    header; a command is run, embedded bytes are read.

    Raises:
        OSError, RuntimeError, ValueError: the audio cannot be opened; the message says where.
    """
    try:
        data = encoded(u)
        info = sf.info(io.BytesIO(data) if data is not None else u.audio_filepath)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise RuntimeError(f"{where(u)}: {err}") from None
    if info.frames <= 0:
        raise ValueError(f"{where(u)}: no samples")
    return info.frames / info.samplerate


def segment_problem(u: Utterance, total: float, overshoot: float = 0.5) -> tuple[float, str | None]:
    """``u``'s duration clipped to its recording of ``total`` seconds (Kaldi's extract-segments
    allows ``overshoot`` seconds past the end), or a reason to reject it."""
    start = u.offset or 0.0
    if u.duration <= 0:
        return 0.0, f"segment of {u.duration:.3f} s (start {start:.3f}): not positive"
    if start >= total:
        return 0.0, f"segment starts at {start:.3f} s, the recording lasts {total:.3f} s"
    end = start + u.duration
    if end > total + overshoot:
        return 0.0, (f"segment ends at {end:.3f} s, {end - total:.3f} s past the recording's "
                     f"{total:.3f} s")
    return min(end, total) - start, None
