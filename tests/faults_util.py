"""Helpers of the fault-injection tests: a small AN4-layout corpus built from the real AN4 audio."""

from __future__ import annotations

import shutil
from pathlib import Path

from asr.data import read_manifest


def an4_tree(an4_dir: Path, dest: Path, n_train: int, n_test: int) -> dict[str, dict]:
    """Copy ``n_train``/``n_test`` real AN4 utterances into an AN4-layout tree ``dest`` (ready to prepare).

    Returns:
        ``{id: {"path": audio Path, "text": TEXT, "split": "train"|"test", "fid": fileid}}``, the caller may
        damage the files or edit ``text`` and then call :func:`write_etc`.
    """
    utts = {}
    train = read_manifest(an4_dir / "train.jsonl") + read_manifest(an4_dir / "dev.jsonl")
    for split, chosen in (("train", train[:n_train]), ("test", read_manifest(an4_dir / "test.jsonl")[:n_test])):
        for u in chosen:
            src = Path(u.audio_filepath)
            fid = f"{src.parent.parent.name}/{src.parent.name}/{u.id}"
            dst = dest / "an4" / "wav" / (fid + ".sph")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            utts[u.id] = {"path": dst, "text": u.text.upper(), "split": split, "fid": fid}
    (dest / ".extracted").touch()  # prepare() then neither downloads nor extracts
    return utts


def write_etc(dest: Path, utts: dict[str, dict]) -> None:
    """Write ``an4/etc/an4_{train,test}.{transcription,fileids}`` for the utterances of :func:`an4_tree`."""
    etc = dest / "an4" / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        mine = [(uid, u) for uid, u in utts.items() if u["split"] == split]
        (etc / f"an4_{split}.fileids").write_text("".join(u["fid"] + "\n" for _, u in mine))
        lines = [f"<s> {u['text']} </s> ({uid})\n" for uid, u in mine if u["text"] is not None]
        (etc / f"an4_{split}.transcription").write_text("".join(lines), encoding="utf-8")
