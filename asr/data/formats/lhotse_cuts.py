"""A Lhotse corpus as our utterances: a CutSet manifest, or a RecordingSet read together with its
SupervisionSet (``.jsonl``/``.jsonl.gz`` are read lazily, ``.json`` whole).

- One utterance per supervision, ``id`` = the supervision's id (else the cut's), ``text`` and
  ``speaker`` = the supervision's. Its audio is read in place: ``offset`` is always set, so only
  the supervision's span is read. In a cut, supervision times are relative to the cut: ``offset``
  = ``cut.start`` + the supervision's start, the supervision clipped to the cut when it overhangs
  by rounding only (:data:`CLIP_TOLERANCE`); one that a truncation or windowing cut in two is
  rejected, as its text would not match the audio. With a RecordingSet, ``offset`` and
  ``duration`` are the supervision's own.
- A recording must have one source: a ``file`` (a relative path resolves against the current
  directory, as Lhotse resolves it; written absolute) or a ``command`` (run only with
  ``allow_pipes=True``, each time the audio is read). URLs (nothing is downloaded), audio held in
  memory, Lhotse Shar placeholders, several sources (a file per channel) and Lhotse transforms
  (speed, volume, reverb, ...; plain resampling is fine: our loader resamples) are rejected.
- Our loader averages all channels: a cut (or, with a RecordingSet, a supervision) that selects
  some of a multi-channel recording's channels is rejected; so are feature-only cuts, MixedCut
  (mixes, padded cuts) and PaddingCut.
- Supervisions past the recording's end are rejected or clipped by
  :func:`~asr.data.formats.segment_problem`, against the manifest's recording duration or, when
  shorter, the file's (each file's header is read once with libsndfile; an unreadable or missing
  file is rejected). Commands are not run at import.

Every supervision is taken or rejected with the reason (a repeated id too); a cut without
supervisions is rejected under its own id.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from asr.data.formats import Imported, segment_problem, source_seconds
from asr.data.manifest import Utterance

if TYPE_CHECKING:
    from lhotse import Recording, SupervisionSegment
    from lhotse.cut import Cut

CLIP_TOLERANCE = 0.01  # seconds a supervision may overhang its cut (rounding) and be clipped


@dataclass(frozen=True)
class _Audio:
    """Where a recording's audio is, for our manifest, and how many seconds it lasts."""

    path: str  # a file, or the command when ``pipe``
    pipe: bool
    seconds: float


class _Recordings:
    """Each recording checked once: its :class:`_Audio`, or why it cannot be read in place.

    Args:
        allow_pipes: take ``command`` sources (else they raise).
    """

    def __init__(self, allow_pipes: bool) -> None:
        self.allow_pipes = allow_pipes
        self._checked: dict[tuple, _Audio | str] = {}
        self._files: dict[str, float | str] = {}

    def audio(self, rec: Recording) -> _Audio | str:
        """``rec``'s audio or the reason to reject its supervisions.

        Raises:
            ValueError: ``rec`` is a command and pipes are not allowed.
        """
        # cuts embed their recording: the same id may come back many times (or transformed)
        key = (rec.id, tuple((s.type, s.source if isinstance(s.source, str) else None)
                             for s in rec.sources), _transforms(rec))
        if key not in self._checked:
            self._checked[key] = self._check(rec)
        return self._checked[key]

    def _check(self, rec: Recording) -> _Audio | str:
        if len(rec.sources) != 1:
            return (f"several sources: recording {rec.id} has {len(rec.sources)} (a file per "
                    "channel?); the import reads one file a recording")
        src = rec.sources[0]
        if src.type == "url":
            return (f"url source: recording {rec.id} is at {src.source}; the import downloads "
                    "nothing: fetch the audio and point the recording at the file")
        if src.type == "memory":
            return (f"in-memory audio: recording {rec.id} holds its audio as bytes in the "
                    "manifest; write it to files first")
        if src.type == "shar":
            return (f"lhotse shar: recording {rec.id} is a Shar placeholder; read the Shar "
                    "with lhotse and write the audio to files first")
        if src.type not in ("file", "command"):
            return f"unknown source type: recording {rec.id} has a {src.type!r} source"
        changes = [name for name in _transforms(rec) if name != "Resample"]
        if changes:
            return (f"lhotse transforms: recording {rec.id} applies {', '.join(changes)} when "
                    "loaded; the import reads the source as it is (import the original "
                    "recordings)")
        if src.type == "command":
            if not self.allow_pipes:
                raise ValueError(
                    f"recording {rec.id} is read by a shell command ({src.source!r}); asr runs "
                    "such commands only when told to: add allow_pipes=true to the import "
                    "command (the command then runs each time the audio is read), or convert "
                    "the audio to files")
            return _Audio(src.source, True, rec.duration)
        path = os.path.abspath(src.source)
        seconds = self._file_seconds(path)
        if isinstance(seconds, str):
            return f"{seconds} (recording {rec.id})"
        return _Audio(path, False, min(rec.duration, seconds))

    def _file_seconds(self, path: str) -> float | str:
        """The file's length from its header, or why it cannot be opened (once a file)."""
        if path not in self._files:
            if not os.path.isfile(path):
                self._files[path] = f"missing file: {path} does not exist"
            else:
                try:
                    self._files[path] = source_seconds(Utterance(path, 0.0, ""))
                except (OSError, RuntimeError, ValueError) as err:
                    self._files[path] = f"unreadable audio: {err}"
        return self._files[path]


def _transforms(rec: Recording) -> tuple[str, ...]:
    """The names of ``rec``'s Lhotse transforms (objects, or dicts as read from JSON)."""
    return tuple(t["name"] if isinstance(t, dict) else type(t).__name__
                 for t in rec.transforms or ())


def _channel_problem(selected: int | list[int], rec: Recording, what: str) -> str | None:
    """Why reading ``selected`` channels of ``rec`` (``what``: the cut, the supervision) is not
    what our loader reads (all channels, averaged), or None."""
    chosen = sorted({selected} if isinstance(selected, int) else set(selected))
    if chosen == sorted(rec.channel_ids):
        return None
    return (f"channel selection: {what} uses channel(s) {chosen} of recording {rec.id} "
            f"(channels {list(rec.channel_ids)}); the import reads all channels averaged")


class _Collector:
    """Utterances taken and rejected, and the ids seen (a repeated id is rejected)."""

    def __init__(self) -> None:
        self.out = Imported()
        self.seen: dict[str, str] = {}  # id -> where it was first seen

    def add(self, uid: str, where: str, sup: SupervisionSegment, audio: _Audio | str,
            span: tuple[float, float] | str, **extra) -> None:
        """Take ``sup`` at ``span`` (offset, duration in the recording), or reject it."""
        if uid in self.seen:
            self.out.reject(uid, f"repeated id: already in {self.seen[uid]}; which one is "
                                 "meant is unclear", **extra)
            return
        self.seen[uid] = where
        problem = audio if isinstance(audio, str) else span if isinstance(span, str) else None
        if problem is None and sup.text is None:
            problem = "no transcript: the supervision's text is None"
        if problem is None:
            u = Utterance(audio.path, round(span[1], 6), sup.text, uid, sup.speaker or "",
                          offset=round(span[0], 6), pipe=audio.pipe)
            clipped, problem = segment_problem(u, audio.seconds)
            if problem is None:
                self.out.utterances.append(
                    Utterance(u.audio_filepath, round(clipped, 6), u.text, uid, u.speaker,
                              offset=u.offset, pipe=u.pipe))
                return
        self.out.reject(uid, problem, **extra)


def _cut_problem(cut: Cut, recordings: _Recordings) -> _Audio | str:
    """The audio of ``cut``'s recording, or why the cut's supervisions are rejected."""
    from lhotse.cut.data import DataCut

    kind = type(cut).__name__
    if not isinstance(cut, DataCut):
        return (f"{kind}: cut {cut.id} is built from other cuts (mixed or padded) when loaded; "
                "the import reads single recordings (import the cuts before mixing or padding)")
    if not cut.has_recording:
        return f"feature-only cut: {kind} {cut.id} has features but no recording"
    audio = recordings.audio(cut.recording)
    if isinstance(audio, str):
        return audio
    return _channel_problem(cut.channel, cut.recording, f"{kind} {cut.id}") or audio


def _in_cut(sup: SupervisionSegment, cut: Cut) -> tuple[float, float] | str:
    """``sup``'s (offset, duration) in the recording, clipped to ``cut``, or why not."""
    start, end = max(sup.start, 0.0), min(sup.end, cut.duration)
    if sup.start < -CLIP_TOLERANCE or sup.end > cut.duration + CLIP_TOLERANCE:
        return (f"outside the cut: supervision {sup.start:.3f}-{sup.end:.3f} s runs past cut "
                f"{cut.id} (0-{cut.duration:.3f} s), so its text would not match the cut's "
                "audio; import the cuts before truncating or windowing, or "
                "trim_to_supervisions()")
    return cut.start + start, end - start


def _read_cuts(cuts: Iterable[Cut], recordings: _Recordings) -> Imported:
    acc = _Collector()
    for cut in cuts:
        if not cut.supervisions:
            acc.out.reject(cut.id, f"no supervisions: {type(cut).__name__} {cut.id} has nothing "
                                   "to transcribe", cut=cut.id)
            continue
        audio = _cut_problem(cut, recordings)
        several = len(cut.supervisions) > 1
        for i, sup in enumerate(cut.supervisions):
            uid = sup.id or (f"{cut.id}-{i}" if several else cut.id)
            acc.add(uid, f"cut {cut.id}", sup, audio, _in_cut(sup, cut), cut=cut.id)
    return acc.out


def _read_recordings(recs: Iterable[Recording], sups: Iterable[SupervisionSegment],
                     source: Path, recordings: _Recordings) -> Imported:
    by_id: dict[str, Recording] = {}
    for rec in recs:
        by_id.setdefault(rec.id, rec)
    acc = _Collector()
    for i, sup in enumerate(sups):
        rec = by_id.get(sup.recording_id)
        if rec is None:
            audio = f"no recording: {sup.recording_id} is not in {source}"
        else:
            audio = recordings.audio(rec)
            if not isinstance(audio, str):
                audio = _channel_problem(sup.channel, rec, f"supervision {sup.id}") or audio
        span = ((sup.start, sup.duration) if sup.start >= 0 else
                f"negative start: supervision starts at {sup.start:.3f} s")
        uid = sup.id or f"{sup.recording_id}-{i}"
        acc.add(uid, f"recording {sup.recording_id}", sup, audio, span, recording=sup.recording_id)
    return acc.out


def _load(path: Path):
    """A Lhotse manifest of any kind (lazily when JSONL)."""
    from lhotse.serialization import load_manifest_lazy_or_eager

    if not path.is_file():
        raise FileNotFoundError(f"Lhotse manifest {path} does not exist")
    manifest = load_manifest_lazy_or_eager(path)
    if manifest is None:
        raise ValueError(f"Lhotse manifest {path} is empty")
    return manifest


def read_lhotse(path: str | os.PathLike, supervisions: str | os.PathLike | None = None,
                allow_pipes: bool = False) -> Imported:
    """The utterances of a Lhotse CutSet, or of a RecordingSet and its SupervisionSet (module
    docstring), each supervision taken or rejected with the reason.

    Args:
        path: a CutSet manifest, or a RecordingSet one when ``supervisions`` is given
            (``.jsonl``, ``.jsonl.gz``, ``.json``; the kind is read from the content).
        supervisions: the SupervisionSet manifest of the RecordingSet ``path``.
        allow_pipes: take ``command`` sources (run each time the audio is read).

    Raises:
        FileNotFoundError: a manifest does not exist.
        ValueError: a manifest is empty or of the wrong kind; a recording is a shell command and
            ``allow_pipes`` is off.
    """
    from lhotse import CutSet, RecordingSet, SupervisionSet

    path = Path(path)
    manifest = _load(path)
    recordings = _Recordings(allow_pipes)
    if isinstance(manifest, CutSet):
        if supervisions is not None:
            raise ValueError(f"{path} is a CutSet, which carries its supervisions: leave "
                             "lhotse.supervisions unset (it goes with a RecordingSet)")
        return _read_cuts(manifest, recordings)
    if isinstance(manifest, RecordingSet):
        if supervisions is None:
            raise ValueError(f"{path} is a RecordingSet: pass its SupervisionSet too "
                             "(supervisions=<path>; lhotse.supervisions=<path> in the import "
                             "command), or import a CutSet")
        sups = _load(Path(supervisions))
        if not isinstance(sups, SupervisionSet):
            raise ValueError(f"lhotse.supervisions={supervisions} is a {type(sups).__name__}, "
                             "not a SupervisionSet")
        return _read_recordings(manifest, sups, path, recordings)
    if isinstance(manifest, SupervisionSet):
        raise ValueError(f"{path} is a SupervisionSet: pass its RecordingSet as the source "
                         f"(source=lhotse:<recordings>) and this as lhotse.supervisions={path}")
    raise ValueError(f"{path} is a {type(manifest).__name__}, which has no audio: import a "
                     "CutSet, or a RecordingSet with lhotse.supervisions=<SupervisionSet>")
