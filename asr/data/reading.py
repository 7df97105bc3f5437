"""An utterance's audio, wherever its manifest line says it is: a whole file, a segment of a long
recording (``offset``), a shell command's output (``pipe``), or encoded bytes in a row of an Arrow
or Parquet file (``row``, ``column``: a Hugging Face dataset). See :mod:`asr.data.manifest`.

Nothing is re-encoded to be read: files are decoded by libsndfile, segments are read from their
first frame to their last, bytes are decoded from memory. Errors are ``OSError``,
``RuntimeError`` (libsndfile's, a failed command) or ``ValueError`` (a segment past the end);
:func:`where` says where the audio was, for the message.
"""

from __future__ import annotations

import io
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from asr.data.manifest import Utterance

PIPE_SECONDS = 600  # the longest a wav.scp command may run before it counts as failed


def where(u: Utterance) -> str:
    """Where the audio of ``u`` is, for messages."""
    if u.pipe:
        base = f"command `{u.audio_filepath}`"
    elif u.row is not None:
        base = f"{u.audio_filepath} row {u.row} column {u.column!r}"
    else:
        base = u.audio_filepath
    if u.offset is not None:
        base += f" at {u.offset:.3f}-{u.offset + u.duration:.3f} s"
    return base


def run_pipe(command: str) -> bytes:
    """The standard output of a Kaldi ``wav.scp`` command (``... |``), run by the shell."""
    cmd = command.rstrip().removesuffix("|")
    try:
        done = subprocess.run(cmd, shell=True, capture_output=True, timeout=PIPE_SECONDS)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"command `{command}` ran over {PIPE_SECONDS} s") from None
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"command `{command}` failed with exit status {done.returncode}: "
                           f"{err[0]}")
    if not done.stdout:
        raise RuntimeError(f"command `{command}` wrote no audio")
    return done.stdout


@lru_cache(maxsize=8)
def _arrow_table(path: str):
    """An Arrow IPC file (stream, as ``datasets.save_to_disk`` writes, or file format), memory
    mapped: rows are read without loading the file."""
    import pyarrow as pa

    source = pa.memory_map(path)
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        return pa.ipc.open_file(pa.memory_map(path)).read_all()


@lru_cache(maxsize=4)
def _parquet_group(path: str, group: int, column: str):
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).read_row_group(group, columns=[column]).column(column)


@lru_cache(maxsize=16)
def _parquet_groups(path: str) -> tuple[int, ...]:
    """First row of each row group, and the total, of a Parquet file."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    starts = [0]
    for g in range(meta.num_row_groups):
        starts.append(starts[-1] + meta.row_group(g).num_rows)
    return tuple(starts)


def embedded_bytes(path: str, row: int, column: str) -> bytes:
    """The encoded audio held in ``column`` (a struct with ``bytes``, or plain binary) of row
    ``row`` of an Arrow or Parquet file."""
    if path.endswith(".parquet"):
        starts = _parquet_groups(path)
        if not 0 <= row < starts[-1]:
            raise ValueError(f"{path} has {starts[-1]} rows, not a row {row}")
        group = int(np.searchsorted(starts, row, side="right")) - 1
        value = _parquet_group(path, group, column)[row - starts[group]].as_py()
    else:
        table = _arrow_table(path)
        if column not in table.column_names:
            raise ValueError(f"{path} has no column {column!r} (it has {table.column_names})")
        if not 0 <= row < table.num_rows:
            raise ValueError(f"{path} has {table.num_rows} rows, not a row {row}")
        value = table.column(column)[row].as_py()
    data = value.get("bytes") if isinstance(value, dict) else value
    if not data:
        raise ValueError(f"{path} row {row} column {column!r} holds no audio bytes")
    return data


def encoded(u: Utterance) -> bytes | None:
    """The encoded bytes holding ``u``'s audio when they are not a plain file (command output,
    embedded bytes), else ``None``."""
    if u.pipe:
        return run_pipe(u.audio_filepath)
    if u.row is not None:
        return embedded_bytes(u.audio_filepath, u.row, u.column)
    return None


def _open(u: Utterance, data: bytes | None) -> sf.SoundFile:
    return sf.SoundFile(io.BytesIO(data) if data is not None else u.audio_filepath)


def _read(u: Utterance, f: sf.SoundFile) -> np.ndarray:
    """All of ``f``, or the segment ``u`` names: (S, C) float32."""
    if u.offset is None:
        return f.read(dtype="float32", always_2d=True)
    start, count = int(round(u.offset * f.samplerate)), int(round(u.duration * f.samplerate))
    if start + count > f.frames + 1:  # a frame of slack for rounding
        raise ValueError(f"segment {u.offset:.3f}-{u.offset + u.duration:.3f} s of "
                         f"{where(u)} ends past the recording's {f.frames / f.samplerate:.3f} s")
    f.seek(start)
    return f.read(count, dtype="float32", always_2d=True)


def read_samples(u: Utterance) -> tuple[np.ndarray, int]:
    """``u``'s samples as the source holds them: (S, C) float32 and the sample rate; a segment
    only its frames.

    Raises:
        ValueError: the segment ends past the end of its recording.
    """
    with _open(u, encoded(u)) as f:
        return _read(u, f), f.samplerate


def load_utterance(u: Utterance, sample_rate: int = 16000) -> torch.Tensor:
    """``u``'s audio, mono (channels averaged) at ``sample_rate``: (S,) float32 in [-1, 1].

    Raises:
        OSError, RuntimeError (libsndfile's, a failed command), ValueError: the audio cannot be
            read; say :func:`where` with the error.
    """
    return mono_at(*read_samples(u), sample_rate)


def mono_at(data: np.ndarray, rate: int, sample_rate: int) -> torch.Tensor:
    """(S, C) samples at ``rate`` -> (S',) mono (channels averaged) at ``sample_rate``."""
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1) if data.shape[1] > 1
                                                else data[:, 0]))
    return wav if rate == sample_rate else AF.resample(wav, rate, sample_rate)


def audio_bytes(u: Utterance) -> tuple[bytes, str]:
    """Encoded audio of ``u`` alone and its file extension, for a tar shard: a file's bytes, a
    command's output or embedded bytes as they are; a segment cut out as lossless FLAC (16-bit
    sources) or 32-bit float WAV."""
    data = encoded(u)
    if u.offset is None:
        if data is None:
            path = Path(u.audio_filepath)
            return path.read_bytes(), path.suffix.lstrip(".").lower() or "audio"
        return data, sf.info(io.BytesIO(data)).format.lower()
    with _open(u, data) as f:
        samples, rate, subtype = _read(u, f), f.samplerate, f.subtype
    buf = io.BytesIO()
    if subtype == "PCM_16":
        sf.write(buf, samples, rate, format="FLAC", subtype="PCM_16")
        return buf.getvalue(), "flac"
    sf.write(buf, samples, rate, format="WAV", subtype="FLOAT")
    return buf.getvalue(), "wav"
