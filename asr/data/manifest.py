"""Manifests: JSON Lines with NeMo's keys, one utterance a line::

    {"audio_filepath": "a.sph", "duration": 2.3, "text": "yes", "id": "an251", "speaker": "fash"}

Relative paths are relative to the manifest's folder. Optional keys say where else the audio is
(:mod:`asr.data.reading` reads all of them; ``python -m asr.import_data`` writes them):

- ``"offset"``: seconds into ``audio_filepath`` where the utterance starts (NeMo's key); it lasts
  ``duration`` seconds. A segment of a long recording, read in place.
- ``"pipe": true``: ``audio_filepath`` is a shell command (Kaldi's ``wav.scp`` ``... |``) whose
  output is the audio; written only by an import the user allowed to run commands.
- ``"row"`` and ``"column"``: ``audio_filepath`` is an Arrow or Parquet file (a Hugging Face
  dataset) whose row ``row`` holds the encoded audio's bytes in column ``column``.
 :func:`read_manifest` gives a list of
:class:`Utterance`; :class:`ManifestTable` the same sequence in 16 bytes an utterance, re-reading a
line when asked for it. See docs/data.md.
"""

from __future__ import annotations

import json
import os
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Utterance:
    """One line of a manifest."""

    audio_filepath: str
    duration: float
    text: str
    id: str = ""
    speaker: str = ""
    offset: float | None = None  # seconds: a segment [offset, offset + duration) of the file
    pipe: bool = False  # audio_filepath is a shell command writing the audio to stdout
    row: int | None = None  # audio_filepath is an Arrow/Parquet file: the row holding the bytes
    column: str = ""  # ... in this column (a struct with "bytes", as Hugging Face's Audio)

    def as_dict(self) -> dict:
        """The manifest line's keys (the optional ones only when set)."""
        d = {"audio_filepath": self.audio_filepath, "duration": self.duration, "text": self.text,
             "id": self.id, "speaker": self.speaker}
        if self.offset is not None:
            d["offset"] = self.offset
        if self.pipe:
            d["pipe"] = True
        if self.row is not None:
            d.update(row=self.row, column=self.column)
        return d


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"manifest {path} does not exist; run the recipe's prepare stage first "
            f"(`python -m asr.prepare recipe=<name> stage=all`, e.g. recipe=an4) or point the "
            f"data.*_manifest settings at your own JSONL files"
        )
    return path


def _resolve(audio: str, base: str) -> str:
    """``str(Path(audio))``, joined to the folder ``base`` when relative; builds no Path for plain
    strings (nothing ``Path`` would respell: no ``//``, no ``.`` part, no trailing ``/``)."""
    if (isinstance(audio, str) and audio not in ("", ".") and "//" not in audio
            and "/./" not in audio and not audio.startswith("./")
            and not audio.endswith(("/", "/."))):
        if audio[0] == "/" or base == ".":
            return audio
        return base + audio if base.endswith("/") else f"{base}/{audio}"
    path = Path(audio)
    return str(path if path.is_absolute() else base / path)


def _parse(line: str, base: str) -> Utterance:
    """One manifest line -> :class:`Utterance` (raises what :func:`_not_a_line` turns into the
    user's error)."""
    d = json.loads(line)
    pipe = d.get("pipe", False) is True
    offset, row = d.get("offset"), d.get("row")
    return Utterance(
        audio_filepath=d["audio_filepath"] if pipe else _resolve(d["audio_filepath"], base),
        duration=float(d["duration"]),
        text=str(d["text"]),
        id=str(d.get("id", d["audio_filepath"])),
        speaker=str(d.get("speaker", "")),
        offset=None if offset is None else float(offset),
        pipe=pipe,
        row=None if row is None else int(row),
        column=str(d.get("column", "audio")) if row is not None else "",
    )


# UnicodeDecodeError is a ValueError
_LINE_ERRORS = (json.JSONDecodeError, KeyError, TypeError, ValueError)


def _not_a_line(path: Path, lineno: int, err: Exception) -> ValueError:
    return ValueError(
        f"{path}:{lineno}: not a manifest line ({err.__class__.__name__}: {err}); "
        f'each line must be a JSON object with "audio_filepath", "duration" and "text"'
    )


def read_manifest(path: str | os.PathLike) -> list[Utterance]:
    """Read a JSONL manifest; relative audio paths are resolved against the manifest's folder.

    Raises:
        FileNotFoundError: the manifest does not exist (the message says how to make one).
        ValueError: a line is not valid JSON or lacks ``audio_filepath``/``duration``/``text``.
    """
    path = _existing(path)
    utts = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                utts.append(_parse(line, str(path.parent)))
            except _LINE_ERRORS as err:
                raise _not_a_line(path, lineno, err) from None
    return utts


class _File:
    """A manifest opened once for ``os.pread``, shared by the tables cut from it (and by forked
    workers); a pickled copy opens the path again. See docs/data.md.
    """

    def __init__(self, path: Path) -> None:
        self.path, self.base = path, str(path.parent)  # base: of relative audio paths
        self.fd = os.open(path, os.O_RDONLY)

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def lineno(self, offset: int) -> int:
        """The line number of the line at byte ``offset`` (for error messages only: reads the file
        up to it)."""
        count, pos = 1, 0
        while pos < offset:
            block = self.read(pos, min(1 << 20, offset - pos))
            if not block:
                break
            count, pos = count + block.count(b"\n"), pos + len(block)
        return count

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def __del__(self) -> None:
        if getattr(self, "fd", None) is not None:
            os.close(self.fd)


class ManifestTable(Sequence[Utterance]):
    """A manifest's utterances as three arrays: each line's byte offset and length, its duration.

    ``table[i]`` reads line ``i`` again and parses it as :func:`read_manifest` does; forked loader
    workers share the arrays. :meth:`select` keeps a subset without reading any line. See
    docs/data.md.

    Args:
        file: the opened manifest.
        offsets: (N,) int64 byte offset of each utterance's line.
        lengths: (N,) int32 byte length of each line.
        durations: (N,) float32 seconds, from the manifest (for samplers: no line is read).
    """

    CHUNK = 4096  # lines parsed and handed to ``keep`` at a time, and read together when iterating
    BLOCK = 8 << 20  # bytes: the most one read of a chunk's lines may span

    def __init__(self, file: _File, offsets: np.ndarray, lengths: np.ndarray,
                 durations: np.ndarray) -> None:
        self.file = file
        self.offsets, self.lengths, self.durations = offsets, lengths, durations

    @property
    def path(self) -> Path:
        return self.file.path

    @classmethod
    def read(cls, path: str | os.PathLike,
             keep: Callable[[list[Utterance]], Sequence[bool]] | None = None) -> ManifestTable:
        """Read a manifest, parsing each line once; errors as :func:`read_manifest`'s.

        Args:
            path: the JSONL manifest.
            keep: given the utterances of up to :attr:`CHUNK` lines, which of them to keep
                (default: all); no utterance object outlives its chunk.
        """
        file = _File(_existing(path))
        offsets, lengths, durations = array("q"), array("i"), array("f")
        chunk: list[tuple[int, int, Utterance]] = []

        def flush() -> None:
            if not chunk:
                return
            verdicts = keep([u for _, _, u in chunk]) if keep is not None else [True] * len(chunk)
            for (offset, length, utt), kept in zip(chunk, verdicts, strict=True):
                if kept:
                    offsets.append(offset)
                    lengths.append(length)
                    durations.append(utt.duration)
            chunk.clear()

        offset = 0
        with open(file.fd, "rb", closefd=False) as f:  # the descriptor the table reads
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                    if line.strip():
                        chunk.append((offset, len(raw), _parse(line, file.base)))
                except _LINE_ERRORS as err:
                    raise _not_a_line(file.path, lineno, err) from None
                offset += len(raw)
                if len(chunk) >= cls.CHUNK:
                    flush()
        flush()
        return cls(file, np.array(offsets, np.int64), np.array(lengths, np.int32),
                   np.array(durations, np.float32))

    def select(self, index: np.ndarray | Sequence[int]) -> ManifestTable:
        """The utterances at ``index`` (positions, or a boolean mask of ``len(self)``), in its
        order."""
        index = np.asarray(index)
        if index.dtype != bool:
            index = index.astype(np.int64, copy=False)
        return ManifestTable(self.file, self.offsets[index], self.lengths[index],
                             self.durations[index])

    def __len__(self) -> int:
        return len(self.offsets)

    def _utterance(self, raw: bytes, offset: int) -> Utterance:
        try:
            return _parse(raw.decode("utf-8"), self.file.base)
        except _LINE_ERRORS as err:
            raise _not_a_line(self.path, self.file.lineno(offset), err) from None

    def __getitem__(self, i: int | slice) -> Utterance | ManifestTable:
        if isinstance(i, slice):
            return self.select(np.arange(len(self))[i])
        # numpy raises IndexError out of range and counts negative ones from the end
        offset = int(self.offsets[i])
        return self._utterance(self.file.read(offset, int(self.lengths[i])), offset)

    def __iter__(self) -> Iterator[Utterance]:
        """The utterances in order; nearby lines are read in one ``pread`` (a whole table: the file
        in blocks)."""
        for lo in range(0, len(self), self.CHUNK):
            offsets = self.offsets[lo: lo + self.CHUNK]
            ends = offsets + self.lengths[lo: lo + self.CHUNK]
            first, last = int(offsets.min()), int(ends.max())
            if last - first > self.BLOCK:  # lines far apart (sparse or shuffled): one by one
                yield from (self[i] for i in range(lo, min(lo + self.CHUNK, len(self))))
                continue
            block = self.file.read(first, last - first)
            for offset, end in zip((offsets - first).tolist(), (ends - first).tolist(),
                                   strict=True):
                yield self._utterance(block[offset:end], first + offset)

    def __repr__(self) -> str:
        return f"ManifestTable({str(self.path)!r}, {len(self)} utterances)"


def write_manifest(path: str | os.PathLike, utterances: Sequence[Utterance]) -> None:
    """Write a JSONL manifest atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for u in utterances:
            f.write(json.dumps(u.as_dict(), ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
