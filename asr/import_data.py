"""Import a corpus kept in another toolkit's format into our JSONL manifest, reading the audio in
place (nothing is copied or re-encoded):

    python -m asr.import_data source=kaldi:data/train out=data/mine/train.jsonl
    python -m asr.import_data source=lhotse:cuts_train.jsonl.gz out=data/mine/train.jsonl
    python -m asr.import_data source=lhotse:recordings.jsonl.gz \\
        lhotse.supervisions=supervisions.jsonl.gz out=data/mine/train.jsonl
    python -m asr.import_data source=hf:my_dataset hf.split=train out=data/mine/train.jsonl

Writes ``out`` and, beside it, ``<out stem>.rejected.jsonl`` (every utterance left out, with the
reason); prints the counts and the setting that trains on it. Settings: conf/import_data.yaml.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import hydra
from omegaconf import DictConfig

from asr.cli import user_errors
from asr.data.formats import Imported
from asr.data.manifest import write_manifest

KINDS = ("kaldi", "lhotse", "hf")
EXTRAS = {"lhotse": "lhotse", "hf": "datasets"}


def split_source(source: str | None) -> tuple[str, str]:
    """``"kind:path"`` -> ``(kind, path)``, checked."""
    kind, _, path = (source or "").partition(":")
    if kind not in KINDS or not path:
        raise ValueError(f"source={source}: expected kaldi:<data dir>, lhotse:<cuts or recordings "
                         "manifest> or hf:<dataset folder, Parquet file/folder or audiofolder>")
    return kind, path


def read_source(cfg: DictConfig) -> Imported:
    """The source's utterances by its reader (:mod:`asr.data.formats`)."""
    kind, path = split_source(cfg.source)
    try:
        if kind == "kaldi":
            from asr.data.formats.kaldi import read_kaldi

            return read_kaldi(path, allow_pipes=cfg.allow_pipes)
        if kind == "lhotse":
            from asr.data.formats.lhotse_cuts import read_lhotse

            return read_lhotse(path, supervisions=cfg.lhotse.supervisions,
                               allow_pipes=cfg.allow_pipes)
        from asr.data.formats.huggingface import read_huggingface

        return read_huggingface(path, **cfg.hf)
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] in {"lhotse", "datasets", "pyarrow"}:
            raise ImportError(f"source={cfg.source} needs the {err.name.split('.')[0]} package: "
                              "pip install -e '.[formats]' (make install installs it)") from None
        raise


def rejected_path(out: Path) -> Path:
    """``data/x/train.jsonl`` -> ``data/x/train.rejected.jsonl``."""
    return out.with_name(out.name.removesuffix(".jsonl") + ".rejected.jsonl")


def import_data(cfg: DictConfig) -> dict:
    """Read ``cfg.source``, write ``cfg.out`` and its rejected list; returns the summary."""
    if not cfg.out:
        raise ValueError("out is not set: out=<the JSONL manifest to write>, e.g. "
                         "out=data/mine/train.jsonl")
    out = Path(cfg.out)
    imported = read_source(cfg)
    write_manifest(out, imported.utterances)
    rejected = rejected_path(out)
    tmp = rejected.with_name(rejected.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in imported.rejected:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, rejected)
    reasons = Counter(r["reason"].split(":")[0] for r in imported.rejected)
    return {"source": cfg.source, "manifest": str(out), "rejected_file": str(rejected),
            "utterances": len(imported.utterances),
            "hours": round(sum(u.duration for u in imported.utterances) / 3600, 4),
            "speakers": len({u.speaker for u in imported.utterances if u.speaker}),
            "rejected": len(imported.rejected), "reasons": dict(reasons.most_common())}


def summary_lines(s: dict) -> list[str]:
    lines = [f"{s['source']}: {s['utterances']} utterances, {s['hours']:.2f} h, "
             f"{s['speakers']} speakers -> {s['manifest']}"]
    if s["rejected"]:
        lines.append(f"rejected {s['rejected']} (listed with reasons in {s['rejected_file']}):")
        lines += [f"  {n:6d}  {reason}" for reason, n in s["reasons"].items()]
    lines.append(f"use: data.train_manifest={Path(s['manifest']).resolve()} (or "
                 "data.val_manifest=, data.test_manifest=, or evaluate's manifests.<name>=)")
    return lines


@hydra.main(version_base="1.3", config_path="../conf", config_name="import_data")
def main(cfg: DictConfig) -> None:
    with user_errors():
        for line in summary_lines(import_data(cfg)):
            print(line, flush=True)


if __name__ == "__main__":
    main()
