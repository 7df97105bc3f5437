"""Hugging Face datasets held on disk, read into manifest utterances with the audio left in place.

:func:`read_huggingface` reads three layouts:

- a ``save_to_disk`` folder: a ``Dataset`` (``state.json``, ``dataset_info.json``,
  ``data-*.arrow``) or a ``DatasetDict`` (``dataset_dict.json`` and a folder per split);
- Parquet: one file (``Dataset.to_parquet``), or a folder of them whose files are grouped into
  splits by name: the Hub's ``data/<split>-00000-of-00001.parquet``, its converted
  ``<split>/0000.parquet``, plain ``<split>.parquet`` (point at one config's folder); a single
  ``.arrow`` file is read like a Parquet file;
- an ``audiofolder``: audio files with a ``metadata.csv`` or ``metadata.jsonl`` naming each in
  ``file_name`` (or ``<column>_file_name``), as ``load_dataset("audiofolder")`` reads it, or one
  such folder per split.

The mapping, row by row (nothing is decoded but the header, nothing is re-encoded or extracted):

- a row whose audio holds bytes (the ``Audio`` feature's struct ``{bytes, path}``, or plain
  binary) -> ``audio_filepath`` = the absolute path of the ``.arrow``/``.parquet`` file holding the
  row, ``row`` = its index within that file, ``column`` = the audio column: the bytes are read
  where they are (:func:`asr.data.reading.embedded_bytes`);
- a row with null bytes but a ``path`` naming a file on disk (``datasets`` keeps local paths
  until it embeds them) -> that file; an audiofolder row -> its file;
- columns: audio: the one the dataset's features (the schema metadata's ``huggingface`` key, or
  ``dataset_info.json``) declare ``Audio``, else the first struct with ``bytes``; text, speaker
  and id: the first present of :data:`TEXT_COLUMNS`, :data:`SPEAKER_COLUMNS`, :data:`ID_COLUMNS`
  (ids without a column: ``<split or "row">-<row index in the split>``); each can be named
  (``hf.audio_column=`` ... in ``python -m asr.import_data``);
- duration: from the audio's header. A row is rejected, with the reason, when it has no bytes and
  no file, its audio cannot be opened, its text is empty, or its id was taken already.

``datasets`` and ``pyarrow`` are optional: imported here only inside functions.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from asr.data.formats import Imported, source_seconds
from asr.data.manifest import Utterance

TEXT_COLUMNS = ("text", "sentence", "transcription", "transcript", "normalized_text")
SPEAKER_COLUMNS = ("speaker_id", "speaker", "client_id")
ID_COLUMNS = ("id", "utt_id", "file", "path")
METADATA_FILES = ("metadata.csv", "metadata.jsonl")
BATCH_ROWS = 1024  # rows of a Parquet file read at a time
# a shard's part of a Parquet file's name: "-00000-of-00004" (and the Hub's older "-<hash>"), "0000"
_SHARD_SUFFIX = re.compile(r"[-_]\d+-of-\d+(-[0-9a-f]+)?$|^\d+$")


@dataclass(frozen=True)
class _Columns:
    """The column names a dataset's rows are read from (``None``: absent)."""

    audio: str
    text: str
    speaker: str | None
    id: str | None


def read_huggingface(path: str | os.PathLike, split: str | None = None,
                     audio_column: str | None = None, text_column: str | None = None,
                     speaker_column: str | None = None, id_column: str | None = None) -> Imported:
    """Read a Hugging Face dataset on disk: every row taken as an utterance or rejected.

    Args:
        path: a ``save_to_disk`` folder (of a ``Dataset`` or ``DatasetDict``), a Parquet (or
            Arrow) file or folder of Parquet files, or an ``audiofolder``.
        split: which split of a ``DatasetDict`` or of a folder holding several; required there.
        audio_column: the column with the audio (default: the one the features call ``Audio``).
        text_column: the transcript's column (default: the first of :data:`TEXT_COLUMNS`).
        speaker_column: the speaker's (default: the first of :data:`SPEAKER_COLUMNS`, if any).
        id_column: the utterance id's (default: the first of :data:`ID_COLUMNS`, else
            ``<split or "row">-<index>``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: no dataset there, the split is missing or unknown, or a column is not found;
            the message names the setting (``hf.split=``, ``hf.text_column=`` ...) to fix it.
    """
    root = Path(os.path.abspath(path))
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist; expected a save_to_disk folder, a Parquet "
                                f"file or folder, or an audiofolder")
    given = {"audio": audio_column, "text": text_column, "speaker": speaker_column,
             "id": id_column}
    folder = _audiofolder(root, split) if root.is_dir() else None
    if folder is not None:
        return _read_audiofolder(*folder, given)
    files, name = _data_files(root, split)
    return _read_tables(files, name, given)


def _choose(names: list[str], split: str | None, root: Path) -> str:
    """The split to read among ``names``: ``split``, or the only one."""
    if split is None and len(names) == 1:
        return names[0]
    if split in names:
        return split
    unknown = f" ({split!r} is not one of them)" if split is not None else ""
    raise ValueError(f"{root} holds the splits {names}{unknown}; choose one with hf.split=<name>")


def _split_name(file: Path) -> str:
    """The split a Parquet file of a folder belongs to: its name less a shard number
    (``train-00000-of-00002`` -> ``train``), else its folder's (``train/0000.parquet``)."""
    return _SHARD_SUFFIX.sub("", file.stem) or file.parent.name


def _data_files(root: Path, split: str | None) -> tuple[list[Path], str | None]:
    """The Arrow/Parquet files of the split to read, in row order, and the split's name."""
    if root.is_file():
        if root.suffix not in (".arrow", ".parquet"):
            raise ValueError(f"{root} is not an .arrow or .parquet file; give a Hugging Face "
                             f"dataset's file or folder")
        return [root], split
    if (root / "dataset_dict.json").is_file():
        splits = json.loads((root / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        name = _choose(list(splits), split, root)
        return _data_files(root / name, name)
    if (root / "state.json").is_file():
        state = json.loads((root / "state.json").read_text(encoding="utf-8"))
        return [root / f["filename"] for f in state["_data_files"]], split or state.get("_split")
    groups: dict[str, list[Path]] = {}
    for file in sorted(root.rglob("*.parquet")):
        if not any(part.startswith(".") for part in file.relative_to(root).parts):
            groups.setdefault(_split_name(file), []).append(file)
    if not groups:
        raise ValueError(
            f"{root} holds no Hugging Face dataset: expected dataset_dict.json or state.json "
            f"(save_to_disk), .parquet files, or {' or '.join(METADATA_FILES)} beside audio files "
            f"(audiofolder)")
    return groups[_choose(sorted(groups), split, root)], split


def _open(file: Path) -> tuple[Any, Iterator[Any]]:
    """The schema of an Arrow (IPC stream, as ``save_to_disk`` writes, or file) or Parquet file
    and its record batches, read in turn (Arrow memory mapped)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if file.suffix == ".parquet":
        parquet = pq.ParquetFile(file)
        return parquet.schema_arrow, parquet.iter_batches(batch_size=BATCH_ROWS)
    try:
        stream = pa.ipc.open_stream(pa.memory_map(str(file)))
        return stream.schema, iter(stream)
    except pa.ArrowInvalid:
        reader = pa.ipc.open_file(pa.memory_map(str(file)))
        return reader.schema, (reader.get_batch(i) for i in range(reader.num_record_batches))


def _features(file: Path, schema: Any) -> dict:
    """The ``datasets`` features of a file's columns (``{"audio": {"_type": "Audio"}, ...}``):
    from the schema's ``huggingface`` metadata, else the folder's ``dataset_info.json``."""
    meta = (schema.metadata or {}).get(b"huggingface")
    if meta is not None:
        features = json.loads(meta).get("info", {}).get("features")
    elif (file.parent / "dataset_info.json").is_file():
        info = json.loads((file.parent / "dataset_info.json").read_text(encoding="utf-8"))
        features = info.get("features")
    else:
        features = None
    return features if isinstance(features, dict) else {}


def _column(names: list[str], given: str | None, defaults: tuple[str, ...], setting: str,
            source: Path, required: bool = False) -> str | None:
    """``given`` (which must be among ``names``), else the first of ``defaults`` present."""
    if given is not None:
        if given not in names:
            raise ValueError(f"{source} has no column {given!r} (it has {names}); "
                             f"fix {setting}<column>")
        return given
    found = next((c for c in defaults if c in names), None)
    if found is None and required:
        raise ValueError(f"{source}: none of its columns {names} is one of {list(defaults)}; "
                         f"name the column to read with {setting}<column>")
    return found


def _columns(file: Path, schema: Any, given: dict) -> _Columns:
    """Which columns of ``file`` hold the audio, text, speaker and id."""
    import pyarrow as pa

    names = list(schema.names)
    audio = given["audio"]
    if audio is None:
        features = _features(file, schema)
        declared = [n for n in names if isinstance(features.get(n), dict)
                    and features[n].get("_type") == "Audio"]
        structs = [f.name for f in schema
                   if pa.types.is_struct(f.type) and f.type.get_field_index("bytes") >= 0]
        audio = (declared or structs or [None])[0]
        if audio is None:
            raise ValueError(f"{file}: no column is Hugging Face Audio or holds bytes (columns: "
                             f"{names}); name the audio column with hf.audio_column=<column>")
    _column(names, audio, (), "hf.audio_column=", file)
    return _Columns(audio=audio,
                    text=_column(names, given["text"], TEXT_COLUMNS, "hf.text_column=", file,
                                 required=True),
                    speaker=_column(names, given["speaker"], SPEAKER_COLUMNS,
                                    "hf.speaker_column=", file),
                    id=_column(names, given["id"], ID_COLUMNS, "hf.id_column=", file))


def _local(name: str | None, base: Path, missing: str) -> Utterance | str:
    """The audio file ``name`` (relative to ``base``) as an utterance, or why there is none."""
    if not name:
        return missing
    path = Path(name) if os.path.isabs(name) else base / name
    if "://" in name or not path.is_file():
        return f"{missing}; its path {name!r} is no file"
    return Utterance(os.path.abspath(path), 0.0, "")


def _audio(file: Path, values: Any, column: str, first: int) -> list[Utterance | str]:
    """Where each row of a batch's audio column is: its bytes in ``file`` (row ``first + k``), a
    file its ``path`` names, or why neither."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_struct(values.type):
        # flatten(), not field(): a null struct makes its fields null
        fields = dict(zip([f.name for f in values.type], values.flatten(), strict=True))
        data, paths = fields.get("bytes"), fields.get("path")
    elif pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type):
        data, paths = values, None
    else:
        raise ValueError(f"{file}: column {column!r} is {values.type}, not encoded audio (a "
                         f"struct with bytes, or binary); name the audio column with "
                         f"hf.audio_column=<column>")
    n = len(values)
    has = ([False] * n if data is None
           else pc.fill_null(pc.greater(pc.binary_length(data), 0), False).to_pylist())
    names = [None] * n if paths is None else paths.to_pylist()
    return [Utterance(str(file), 0.0, "", row=first + k, column=column) if has[k]
            else _local(names[k], file.parent, "no audio bytes") for k in range(n)]


def _uid(value: Any, split: str | None, index: int) -> str:
    return f"{split or 'row'}-{index}" if value is None or value == "" else str(value)


def _add(out: Imported, seen: dict[str, str], audio: Utterance | str, source: str, uid: str,
         text: Any, speaker: Any) -> None:
    """Take one row as an utterance (duration from its audio's header), or reject it."""
    if isinstance(audio, str):
        out.reject(uid, audio, source=source)
        return
    if text is None or not str(text).strip():
        out.reject(uid, "empty text", source=source)
        return
    if uid in seen:
        out.reject(uid, f"repeated id (taken from {seen[uid]})", source=source)
        return
    try:
        seconds = source_seconds(audio)
    except (OSError, RuntimeError, ValueError) as err:
        out.reject(uid, f"unreadable audio: {err}", source=source)
        return
    seen[uid] = source
    out.utterances.append(replace(audio, duration=seconds, text=str(text).strip(), id=uid,
                                  speaker="" if speaker is None else str(speaker)))


def _read_tables(files: list[Path], split: str | None, given: dict) -> Imported:
    """Every row of the Arrow/Parquet ``files`` (one split, in order), taken or rejected."""
    out, seen, index = Imported(), {}, 0
    for file in files:
        schema, batches = _open(file)
        cols, first = _columns(file, schema, given), 0
        for batch in batches:
            audio = _audio(file, batch.column(cols.audio), cols.audio, first)
            texts, speakers, ids = (
                batch.column(c).to_pylist() if c is not None else [None] * batch.num_rows
                for c in (cols.text, cols.speaker, cols.id))
            for k, where in enumerate(audio):
                _add(out, seen, where, f"{file} row {first + k}", _uid(ids[k], split, index + k),
                     texts[k], speakers[k])
            first, index = first + batch.num_rows, index + batch.num_rows
    return out


def _metadata(folder: Path) -> Path | None:
    return next((folder / m for m in METADATA_FILES if (folder / m).is_file()), None)


def _audiofolder(root: Path, split: str | None) -> tuple[Path, str | None] | None:
    """The metadata file of an audiofolder at ``root`` (or of its split folder ``split``) and
    the split's name; ``None`` when ``root`` is no audiofolder."""
    meta = _metadata(root)
    if meta is not None:
        return meta, split
    groups = {d.name: m for d in sorted(root.iterdir())
              if d.is_dir() and (m := _metadata(d)) is not None}
    if not groups:
        return None
    name = _choose(sorted(groups), split, root)
    return groups[name], name


def _metadata_rows(meta: Path) -> tuple[list[str], list[dict]]:
    """The columns and rows of ``metadata.csv`` / ``metadata.jsonl``."""
    rows: list[dict] = []
    with meta.open(encoding="utf-8", newline="") as f:
        if meta.suffix == ".csv":
            reader = csv.DictReader(f)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{meta}:{lineno}: not a JSON object ({err})") from None
    return list(dict.fromkeys(k for row in rows for k in row)), rows


def _read_audiofolder(meta: Path, split: str | None, given: dict) -> Imported:
    """Every row of an audiofolder's metadata: its file taken as an utterance, or rejected."""
    names, rows = _metadata_rows(meta)
    wanted = [f"{given['audio']}_file_name"] if given["audio"] else ["file_name"] + [
        n for n in names if n.endswith("_file_name")]
    file_column = next((n for n in wanted if n in names), None)
    if file_column is None:
        raise ValueError(f"{meta}: no column {' or '.join(wanted) or 'file_name'} (it has "
                         f"{names}); an audiofolder's metadata names each audio file in file_name")
    others = [n for n in names if n != file_column]
    text = _column(others, given["text"], TEXT_COLUMNS, "hf.text_column=", meta, required=True)
    speaker = _column(others, given["speaker"], SPEAKER_COLUMNS, "hf.speaker_column=", meta)
    ids = _column(others, given["id"], ID_COLUMNS, "hf.id_column=", meta)
    out: Imported = Imported()
    seen: dict[str, str] = {}
    for i, row in enumerate(rows):
        audio = _local(row.get(file_column), meta.parent, f"no {file_column}")
        _add(out, seen, audio, f"{meta} row {i}", _uid(row.get(ids) if ids else None, split, i),
             row.get(text), row.get(speaker) if speaker else None)
    return out
