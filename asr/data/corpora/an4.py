"""CMU AN4 (census): download, extract, and write train/dev/test manifests.

The dev split is held out of train by whole speakers, so model selection sees unseen speakers as
the test set does. The archive's layout: see docs/data.md.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from asr.audio import probe_audio
from asr.data.download import download, extract_tar
from asr.data.manifest import Utterance, write_manifest

log = logging.getLogger(__name__)

AN4_URL = "http://www.speech.cs.cmu.edu/databases/an4/an4_sphere.tar.gz"
# CMU publishes no checksum: these are the copies of an4_sphere.tar.gz known here, NVIDIA's mirror
# for NeMo (https://dldata-public.s3.us-east-2.amazonaws.com/an4_sphere.tar.gz) and a repacked copy
# with its 13 `fcaw` test transcript lines restored. See docs/data.md.
AN4_CHECKSUMS = (
    "sha256:a0525579493735d32b60fb6fa5975dd0eaacde087b0a4eeb7f13b7ef33077b12",
    "md5:8920692a830bea166f542456513564b2",
)
_LINE = re.compile(r"^\s*(?:<s>)?\s*(?P<text>.*?)\s*(?:</s>)?\s*\((?P<id>[^()\s]+)\)\s*$")


def parse_transcription(path: Path) -> dict[str, str]:
    """``id -> TEXT`` from an AN4 transcription file (the ``<s> … </s>`` or the bare style)."""
    out: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if not m:
            raise ValueError(f"{path}:{lineno}: cannot parse transcription line {line!r}")
        out[m["id"]] = m["text"]
    return out


def _utterances(root: Path, split: str, rejected: list[dict]) -> list[Utterance]:
    etc = root / "an4" / "etc"
    texts = parse_transcription(etc / f"an4_{split}.transcription")
    fileids = [ln.strip() for ln in (etc / f"an4_{split}.fileids").read_text().splitlines()
               if ln.strip()]
    utts = []
    for fid in tqdm(fileids, desc=f"prepare an4 {split}", unit="utt", leave=False):
        uid = Path(fid).name
        rel = Path("an4", "wav", fid + ".sph")
        audio = root / rel
        reason = None
        if uid not in texts:
            reason = f"no transcript for {uid} in an4_{split}.transcription"
        elif not texts[uid].strip():
            reason = "empty transcript"
        else:
            info, reason = probe_audio(audio)
        if reason:
            rejected.append({"audio_filepath": str(rel), "id": uid, "split": split,
                             "reason": reason})
            continue
        utts.append(
            Utterance(
                audio_filepath=str(rel),
                duration=round(info.frames / info.samplerate, 4),
                text=texts[uid].lower(),
                id=uid,
                speaker=Path(fid).parent.name,
            )
        )
    return utts


def split_dev(train: list[Utterance], dev_size: int,
              seed: int) -> tuple[list[Utterance], list[Utterance]]:
    """(train, dev): whole speakers, chosen with ``seed``, held out until dev has at least
    ``dev_size`` utterances."""
    speakers = sorted({u.speaker for u in train})
    random.Random(seed).shuffle(speakers)
    dev_speakers: set[str] = set()
    for spk in speakers:
        if sum(u.speaker in dev_speakers for u in train) >= dev_size:
            break
        dev_speakers.add(spk)
    return ([u for u in train if u.speaker not in dev_speakers],
            [u for u in train if u.speaker in dev_speakers])


def _write(data: Path, manifests: dict[str, str], splits: dict[str, list[Utterance]],
           rejected: list[dict]) -> None:
    """The manifests of the splits, and ``rejected.jsonl`` with each reject's reason."""
    for split, utts in splits.items():
        write_manifest(manifests[split], utts)
        log.info("an4 %s: %d utterances, %.1f min -> %s", split, len(utts),
                 sum(u.duration for u in utts) / 60, manifests[split])
    with (data / "rejected.jsonl").open("w", encoding="utf-8") as f:
        for r in rejected:
            f.write(json.dumps(r) + "\n")
    if rejected:
        log.warning("an4: rejected %d utterances, reasons in %s", len(rejected),
                    data / "rejected.jsonl")


def prepare(
    data_dir: str,
    download_dir: str,
    url: str = AN4_URL,
    checksums: Sequence[str] | None = AN4_CHECKSUMS,
    dev_size: int = 100,
    seed: int = 0,
    progress: bool = True,
    stages: Sequence[str] = ("download", "manifests"),
) -> dict[str, str]:
    """Download (unless cached), extract and write ``train/dev/test.jsonl`` under ``data_dir``.

    Each stage leaves a marker, so a rerun skips finished work. An archive already at
    ``<download_dir>/an4_sphere.tar.gz`` is used without touching the network.

    Args:
        data_dir: where the corpus is extracted and the manifests written.
        download_dir: cache of downloaded archives.
        url: where to fetch the archive (a mirror or file:// works too).
        checksums: the archive must match one of these (``"sha256:<hex>"`` / ``"md5:<hex>"``);
            ``None``: unchecked.
        dev_size: at least this many training utterances, by whole speakers, are held out as dev.
        seed: chooses the dev speakers.
        stages: ``download`` (fetch + extract) and/or ``manifests``.

    Returns:
        ``{"train": path, "dev": path, "test": path}`` (``{}`` when only ``download`` ran).
    """
    unknown = set(stages) - {"download", "manifests"}
    if unknown:
        raise ValueError(f"an4 prepare stages must be download and/or manifests, "
                         f"got {sorted(unknown)}")
    data = Path(data_dir)
    manifests = {s: str(data / f"{s}.jsonl") for s in ("train", "dev", "test")}
    done = data / ".prepared"
    if done.exists() and all(Path(p).exists() for p in manifests.values()):
        return manifests
    extracted = data / ".extracted"
    if not extracted.exists() and "download" in stages:
        archive = download(url, Path(download_dir) / "an4_sphere.tar.gz", checksums,
                           progress=progress, checksum_setting="prepare.checksums")
        log.info("extracting %s into %s", archive, data)
        extract_tar(archive, data, progress=progress)
        extracted.touch()
    if "manifests" not in stages:
        return {}
    if not extracted.exists():
        raise FileNotFoundError(f"{data} holds no extracted AN4 corpus: run the download stage "
                                f"first (`python -m asr.prepare recipe=an4 stage=download`)")

    rejected: list[dict] = []
    train, dev = split_dev(_utterances(data, "train", rejected), dev_size, seed)
    test = _utterances(data, "test", rejected)
    _write(data, manifests, {"train": train, "dev": dev, "test": test}, rejected)
    done.touch()
    return manifests
