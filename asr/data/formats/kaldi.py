"""A Kaldi data dir as our utterances: ``wav.scp``, ``text``, and if present ``segments``,
``utt2spk``, ``utt2dur``, ``reco2dur`` (the files ``utils/validate_data_dir.sh`` knows).

- Without ``segments`` each ``wav.scp`` entry is one utterance (the whole file); with it, each
  segment ``<utt> <recording> <start> <end>`` is one, read in place at its offset (``end`` -1: to
  the end of the recording). Kaldi's ``extract-segments`` lets a segment end up to 0.5 s past its
  recording (cut there); further is rejected.
- A ``wav.scp`` entry ending in ``|`` is a shell command (``sox a.wav -t wav - |``, ``flac -c -d
  a.flac |``). It runs only with ``allow_pipes=True`` (the import command's ``allow_pipes=true``),
  each time the audio is read; its relative paths resolve against the current directory, as in
  Kaldi. Relative file paths are resolved against the current directory too and written absolute.
- Kaldi archive entries (``foo.ark:1234``) are rejected: ``wav-copy`` them to files first.
- Durations come from ``segments``, else ``utt2dur``, else the audio header (a command is run).
- Speakers come from ``utt2spk``. Every utterance of ``text``, ``wav.scp`` or ``segments`` is taken
  or rejected with the reason.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from asr.data.formats import Imported, segment_problem, source_seconds
from asr.data.manifest import Utterance

ARK = re.compile(r"\.ark:\d+$")  # an entry of a Kaldi archive, at a byte offset


def read_table(path: Path, required: bool = True) -> dict[str, tuple[int, str]]:
    """A Kaldi table file: ``{key: (line number, rest of the line)}`` in file order (the first
    of a repeated key; see :func:`repeated_keys`); ``{}`` for a missing optional file."""
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"{path} does not exist: a Kaldi data dir needs wav.scp and "
                                    "text (segments, utt2spk, utt2dur optional)")
        return {}
    table: dict[str, tuple[int, str]] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.strip().split(maxsplit=1)
            if parts and parts[0] not in table:
                table[parts[0]] = (lineno, parts[1] if len(parts) > 1 else "")
    return table


def repeated_keys(path: Path) -> list[str]:
    """Keys on more than one line of a Kaldi table file (each once, in order)."""
    if not path.is_file():
        return []
    seen: set[str] = set()
    twice: list[str] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            parts = line.split(maxsplit=1)
            if parts and parts[0] in seen and parts[0] not in twice:
                twice.append(parts[0])
            elif parts:
                seen.add(parts[0])
    return twice


def _audio(value: str) -> tuple[str, bool] | str:
    """A ``wav.scp`` value as (path or command, is a command), or why it cannot be read."""
    if value.endswith("|"):
        return value, True
    if ARK.search(value) or value.startswith("ark:"):
        return ("a Kaldi archive entry: copy it to a file first (wav-copy ark:... "
                "ark,scp:... or sox) and point wav.scp at the file")
    if value == "-" or " " in value:
        return f"not a file path or a command ending in '|': {value!r}"
    return str(Path(value).absolute()), False


def _check_pipes(folder: Path, wavs: dict[str, tuple[int, str]], allow_pipes: bool) -> None:
    if allow_pipes:
        return
    for _, (lineno, value) in wavs.items():
        if value.endswith("|"):
            raise ValueError(
                f"{folder / 'wav.scp'}:{lineno} is a shell command ({value!r}); asr runs "
                "wav.scp commands only when told to: add allow_pipes=true to the import command "
                "(the command then runs each time the audio is read), or convert the audio to "
                "files and point wav.scp at them")


class _Recordings:
    """``wav.scp`` resolved once per recording: (path or command, is a command) or a reason; the
    recording's length when asked (``reco2dur``, else the header, cached)."""

    def __init__(self, folder: Path) -> None:
        self.wavs = read_table(folder / "wav.scp")
        self.reco2dur = {k: float(v) for k, (_, v) in read_table(folder / "reco2dur",
                                                                   False).items()}
        self._audio = {k: _audio(v) for k, (_, v) in self.wavs.items()}
        self._seconds: dict[str, float | str] = {}

    def audio(self, reco: str) -> tuple[str, bool] | str:
        return self._audio.get(reco, f"recording {reco} is not in wav.scp")

    def seconds(self, reco: str) -> float | str:
        """The recording's length, or why it cannot be opened."""
        if reco in self.reco2dur:
            return self.reco2dur[reco]
        if reco not in self._seconds:
            path, pipe = self._audio[reco]
            try:
                self._seconds[reco] = source_seconds(Utterance(path, 0.0, "", reco, pipe=pipe))
            except (OSError, RuntimeError, ValueError) as err:
                self._seconds[reco] = f"unreadable audio: {err}"
        return self._seconds[reco]


def _spans(folder: Path, recordings: _Recordings) -> dict[str, tuple[str, float | None, float]]:
    """``{utt: (recording, offset or None, duration or -1 unknown)}`` from ``segments`` (end -1:
    to the recording's end) or, without it, one utterance per recording."""
    segments = read_table(folder / "segments", required=False)
    if not segments:
        utt2dur = {k: float(v) for k, (_, v) in read_table(folder / "utt2dur", False).items()}
        return {reco: (reco, None, utt2dur.get(reco, -1.0)) for reco in recordings.wavs}
    spans = {}
    for utt, (lineno, value) in segments.items():
        parts = value.split()
        try:
            reco, start, end = parts[0], float(parts[1]), float(parts[2])
        except (IndexError, ValueError):
            raise ValueError(f"{folder / 'segments'}:{lineno}: not '<utt> <recording> <start> "
                             f"<end>': {utt} {value}") from None
        spans[utt] = (reco, start, end - start if end >= 0 else -1.0)
    return spans


def _utterance(utt: str, span: tuple[str, float | None, float], text: str, speaker: str,
               recordings: _Recordings) -> Utterance | str:
    """The utterance, or why it is rejected."""
    reco, offset, duration = span
    audio = recordings.audio(reco)
    if isinstance(audio, str):
        return audio
    path, pipe = audio
    if offset is None and duration > 0:
        return Utterance(path, duration, text, utt, speaker, pipe=pipe)
    total = recordings.seconds(reco)
    if isinstance(total, str):
        return total
    if offset is None:
        return Utterance(path, total, text, utt, speaker, pipe=pipe)
    u = Utterance(path, duration if duration >= 0 else total - offset, text, utt, speaker,
                  offset=offset, pipe=pipe)
    clipped, problem = segment_problem(u, total)
    return problem or Utterance(path, round(clipped, 6), text, utt, speaker, offset, pipe)


def read_kaldi(folder: str | os.PathLike, allow_pipes: bool = False) -> Imported:
    """The utterances of a Kaldi data dir (module docstring), each taken or rejected.

    Raises:
        FileNotFoundError: no ``wav.scp`` or ``text``.
        ValueError: ``wav.scp`` holds a command and ``allow_pipes`` is off; a ``segments`` line
            is malformed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Kaldi data dir {folder} does not exist")
    recordings = _Recordings(folder)
    texts = read_table(folder / "text")
    _check_pipes(folder, recordings.wavs, allow_pipes)
    spans = _spans(folder, recordings)
    speakers = {k: v for k, (_, v) in read_table(folder / "utt2spk", False).items()}
    out = Imported()
    twice = set(repeated_keys(folder / "text")) | set(
        repeated_keys(folder / ("segments" if (folder / "segments").is_file() else "wav.scp")))
    for utt in twice:
        out.reject(utt, "id on more than one line of text, segments or wav.scp: which one is "
                        "meant is unclear")
    for utt, span in spans.items():
        if utt in twice:
            continue
        if utt not in texts:
            out.reject(utt, f"no transcript: not in {folder / 'text'}")
            continue
        u = _utterance(utt, span, texts[utt][1], speakers.get(utt, ""), recordings)
        if isinstance(u, str):
            out.reject(utt, u)
        else:
            out.utterances.append(u)
    source = "segments" if (folder / "segments").is_file() else "wav.scp"
    for utt in texts:
        if utt not in spans and utt not in twice:
            out.reject(utt, f"no audio: not in {folder / source}")
    return out
