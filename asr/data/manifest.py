"""Manifests: JSON Lines with NeMo's keys, one utterance a line::

    {"audio_filepath": "wav/a.sph", "duration": 2.3, "text": "yes", "id": "an251-fash-b", "speaker": "fash"}

Relative paths are relative to the manifest's folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Utterance:
    """One line of a manifest."""

    audio_filepath: str
    duration: float
    text: str
    id: str = ""
    speaker: str = ""


def read_manifest(path: str | os.PathLike) -> list[Utterance]:
    """Read a JSONL manifest; relative audio paths are resolved against the manifest's folder.

    Raises:
        FileNotFoundError: the manifest does not exist (the message says how to make one).
        ValueError: a line is not valid JSON or lacks ``audio_filepath``/``duration``/``text``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"manifest {path} does not exist; run the recipe's prepare stage first "
            f"(`python -m asr.prepare recipe=<name> stage=all`, e.g. recipe=an4) or point the "
            f"data.*_manifest settings at your own JSONL files"
        )
    base = path.parent
    utts = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                audio = Path(d["audio_filepath"])
                utts.append(
                    Utterance(
                        audio_filepath=str(audio if audio.is_absolute() else base / audio),
                        duration=float(d["duration"]),
                        text=str(d["text"]),
                        id=str(d.get("id", d["audio_filepath"])),
                        speaker=str(d.get("speaker", "")),
                    )
                )
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise ValueError(
                    f"{path}:{lineno}: not a manifest line ({err.__class__.__name__}: {err}); each line must be "
                    f'a JSON object with "audio_filepath", "duration" and "text"'
                ) from None
    return utts


def write_manifest(path: str | os.PathLike, utterances: Sequence[Utterance]) -> None:
    """Write a JSONL manifest atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for u in utterances:
            f.write(json.dumps(asdict(u), ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
