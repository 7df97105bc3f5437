"""A manifest as tar shards (WebDataset layout) for training at scale: a few large sequential
reads instead of millions of small random ones, and no manifest held in memory.

Each utterance is its audio file's bytes and its manifest record as JSON. Shards are cut by seconds
of audio; each ``shard-NNNNNN.tar`` gets an index ``shard-NNNNNN.json`` written last (so a cut run
resumes), and ``index.json`` plus ``durations.npy`` are what training reads at start-up. See
docs/data.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import webdataset as wds
from tqdm import tqdm

from asr.data.manifest import Utterance, read_manifest
from asr.data.reading import audio_bytes, where

log = logging.getLogger(__name__)

INDEX = "index.json"
DURATIONS = "durations.npy"
FORMAT = "asr-shards/1"


class _HashingFile:
    """A write-only file that keeps the SHA-256 and byte count of what passes through it."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("wb")
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.bytes += len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()


def shard_name(i: int) -> str:
    return f"shard-{i:06d}.tar"


def cut(durations: Sequence[float], shard_seconds: float) -> list[range]:
    """Consecutive ranges of utterances holding about ``shard_seconds`` of audio each (a shard
    closes once it reaches that many seconds; every shard holds at least one utterance)."""
    if shard_seconds <= 0:
        raise ValueError(f"shard_seconds must be > 0, got {shard_seconds}")
    ranges, start, total = [], 0, 0.0
    for i, d in enumerate(durations):
        total += d
        if total >= shard_seconds:
            ranges.append(range(start, i + 1))
            start, total = i + 1, 0.0
    if start < len(durations):
        ranges.append(range(start, len(durations)))
    return ranges


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _write_shard(path: Path, utts: Sequence[Utterance], first_key: int) -> dict:
    """One tar shard and its index; utterances whose audio cannot be read are left out, listed."""
    tmp = path.with_name(path.name + ".tmp")
    out = _HashingFile(tmp)
    writer = wds.TarWriter(out, mtime=0.0)  # mtime 0: the same corpus gives the same bytes
    ids, durations, missing = [], [], []
    for k, u in enumerate(utts):
        try:
            audio, ext = audio_bytes(u)
        except (OSError, RuntimeError, ValueError) as err:
            missing.append({"id": u.id, "audio_filepath": where(u),
                            "reason": f"{err.__class__.__name__}: {err}"})
            continue
        record = {"id": u.id, "text": u.text, "duration": u.duration, "speaker": u.speaker,
                  "audio_filepath": u.audio_filepath}
        writer.write({"__key__": f"{first_key + k:09d}", ext: audio,
                      "json": json.dumps(record).encode()})
        ids.append(u.id)
        durations.append(u.duration)
    writer.close()
    out.close()
    os.replace(tmp, path)
    index = {"name": path.name, "utterances": len(ids), "seconds": round(sum(durations), 3),
             "bytes": out.bytes, "sha256": out.sha256.hexdigest(), "ids": ids,
             "durations": durations, "missing": missing}
    _write_json(path.with_suffix(".json"), index)
    return index


def _done(path: Path) -> dict | None:
    """A shard's index when the shard is complete (index written, size as recorded), else None."""
    side = path.with_suffix(".json")
    if not side.is_file() or not path.is_file():
        return None
    index = json.loads(side.read_text(encoding="utf-8"))
    return index if path.stat().st_size == index["bytes"] else None


def write_shards(manifest: str | os.PathLike, out: str | os.PathLike,
                 shard_seconds: float = 1000.0, shuffle: bool = True, seed: int = 0) -> dict:
    """Write ``manifest``'s utterances as tar shards into ``out``; returns ``index.json``.

    Args:
        manifest: a JSONL manifest (:mod:`asr.data.manifest`).
        out: the folder for the shards; a run cut short continues where it stopped (same settings).
        shard_seconds: seconds of audio per shard.
        shuffle: shuffle the utterances (with ``seed``) before cutting, so each shard mixes
            speakers (training shuffles shards and buffers within them, not the whole corpus).
        seed: the shuffle's seed.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    utts = read_manifest(manifest)
    if not utts:
        raise ValueError(f"manifest {manifest} has no utterances to shard")
    settings = {"format": FORMAT, "manifest": str(Path(manifest).resolve()),
                "utterances": len(utts), "shard_seconds": shard_seconds, "shuffle": shuffle,
                "seed": seed}
    marker = out / ".settings.json"
    if marker.is_file():
        before = json.loads(marker.read_text(encoding="utf-8"))
        if before != settings:
            raise ValueError(f"{out} holds shards written with other settings ({before}); "
                             f"to write these ({settings}) remove the folder or choose another "
                             "out=")
    else:
        _write_json(marker, settings)
    order = list(range(len(utts)))
    if shuffle:
        random.Random(seed).shuffle(order)
    ranges = cut([utts[i].duration for i in order], shard_seconds)
    shards, resumed = [], 0
    for i, r in enumerate(tqdm(ranges, desc=f"sharding {manifest}", unit="shard",
                               disable=None)):
        path = out / shard_name(i)
        index = _done(path)
        if index is None:
            index = _write_shard(path, [utts[order[k]] for k in r], r.start)
        else:
            resumed += 1
        shards.append(index)
    if resumed:
        log.info("%d of %d shards were already written (a cut run continued)", resumed,
                 len(ranges))
    return _write_index(out, shards, settings)


def _write_index(out: Path, shards: list[dict], settings: dict) -> dict:
    """``index.json`` (the shard list) and ``durations.npy``, once every shard is complete."""
    durations = np.concatenate([np.asarray(s["durations"], dtype=np.float32) for s in shards])
    tmp = out / (DURATIONS + ".tmp")
    with tmp.open("wb") as f:
        np.save(f, durations)
    os.replace(tmp, out / DURATIONS)
    missing = [m for s in shards for m in s["missing"]]
    index = {**settings, "utterances": int(len(durations)),
             "seconds": round(float(durations.sum(dtype=np.float64)), 3),
             "missing": missing,
             "shards": [{k: s[k] for k in ("name", "utterances", "seconds", "bytes", "sha256")}
                        for s in shards]}
    _write_json(out / INDEX, index)
    if missing:
        log.warning("%d utterances left out: their audio could not be read "
                    "(listed under \"missing\" in %s): %s",
                    len(missing), out / INDEX, ", ".join(m["id"] for m in missing[:10]))
    return index


def verify_shards(folder: str | os.PathLike) -> list[str]:
    """Problems found re-reading every shard of ``folder`` against ``index.json`` (size and
    SHA-256); [] when none."""
    folder = Path(folder)
    index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
    problems = []
    for s in tqdm(index["shards"], desc=f"verifying {folder}", unit="shard", disable=None):
        path = folder / s["name"]
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != s["sha256"]:
            problems.append(f"{path}: SHA-256 {digest.hexdigest()} differs from the index's "
                            f"{s['sha256']}")
    return problems
