"""Check manifests against the tokenizer and the model before training.

Per manifest: hours, utterance count, a duration histogram, the characters found against those the
tokenizer covers, and the utterances too short for their label under CTC once the model has subsampled
them (the commonest cause of an infinite or NaN CTC loss). Training drops those (see
``ASRDataModule(output_frames=...)``); this report lists them.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

from asr.data import ctc_min_frames, read_manifest
from asr.text import Tokenizer, normalize_text

log = logging.getLogger(__name__)

# Upper edges (seconds) of the duration histogram; the last bin is open.
BIN_EDGES = (1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0)


def check_manifest(
    manifest: str | os.PathLike,
    tokenizer: Tokenizer,
    output_frames: Callable[[torch.Tensor], torch.Tensor],
    sample_rate: int = 16000,
    inter_tokenizer: Tokenizer | None = None,
) -> dict:
    """Statistics and problems of one manifest (durations are taken from it; no audio is read).

    Args:
        manifest: JSONL manifest.
        tokenizer: the tokenizer training will use.
        output_frames: (N,) sample counts -> (N,) model output frames (``ASRModule.output_frames``).
        sample_rate: the rate audio is resampled to.
        inter_tokenizer: the intermediate CTC's own units, if it has them (``inter_ctc.tokenizer``): utterances
            whose labels in those units need more frames than the model gives are counted (``inter_too_short``);
            they are kept (their main CTC loss is possible), but their intermediate loss is zero.

    Returns:
        ``{"manifest", "utterances", "hours", "histogram": {bin: count}, "chars": {char: count},
        "unknown_chars": {char: count}, "unusable_text": n, "too_short": n, "too_short_utts": [...]}``, and
        ``"inter_too_short": n`` with ``inter_tokenizer``.
    """
    utts = read_manifest(manifest)
    durations = [u.duration for u in utts]
    labels: list[str] = []
    histogram = Counter()
    for d in durations:
        edge = next((e for e in BIN_EDGES if d < e), None)
        histogram[f"<{edge:g}s" if edge else f">={BIN_EDGES[-1]:g}s"] += 1
    chars: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    unusable = 0
    samples = torch.tensor([round(d * sample_rate) for d in durations], dtype=torch.long)
    frames = output_frames(samples).tolist() if utts else []
    too_short = []
    inter_too_short = 0
    for u, n in zip(utts, frames, strict=True):
        text = normalize_text(u.text)
        labels.append(text)
        chars.update(text)
        bad = tokenizer.unknown_chars(text)
        unknown.update(c for c in text if c in bad)
        if not text or bad:
            unusable += 1
            continue
        need = ctc_min_frames(tokenizer.encode(text))
        if n < need:
            too_short.append({"id": u.id, "duration": u.duration, "frames": int(n), "needed": need})
        elif inter_tokenizer is not None and n < ctc_min_frames(inter_tokenizer.encode(text)):
            inter_too_short += 1
    order = [f"<{e:g}s" for e in BIN_EDGES] + [f">={BIN_EDGES[-1]:g}s"]
    return {
        "manifest": str(manifest),
        "utterances": len(utts),
        "hours": round(sum(durations) / 3600, 4),
        "histogram": {k: histogram.get(k, 0) for k in order},
        "chars": dict(sorted(chars.items())),
        "unknown_chars": dict(sorted(unknown.items())),
        "unusable_text": unusable,
        "too_short": len(too_short),
        "too_short_utts": too_short,
        **({"inter_too_short": inter_too_short} if inter_tokenizer is not None else {}),
    }


def format_check(name: str, report: dict) -> str:
    """A few readable lines for the log."""
    hist = "  ".join(f"{k}:{v}" for k, v in report["histogram"].items())
    found = "".join(report["chars"])
    lines = [
        f"{name}: {report['utterances']} utterances, {report['hours']:.2f} h ({report['manifest']})",
        f"  durations  {hist}",
        f"  characters {found!r}",
    ]
    if report["unknown_chars"]:
        lines.append(f"  NOT in the tokenizer: {report['unknown_chars']} -> "
                     f"{report['unusable_text']} utterances dropped")
    if report["too_short"]:
        ids = ", ".join(u["id"] for u in report["too_short_utts"][:10])
        lines.append(f"  too short for their label under CTC: {report['too_short']} dropped ({ids} ...)")
    if report.get("inter_too_short"):
        lines.append(f"  too short for their intermediate-CTC label: {report['inter_too_short']} (kept; their "
                     "intermediate loss is zero: a smaller model.subsampling_factor fits them)")
    return "\n".join(lines)


def write_checks(reports: dict[str, dict], out_dir: str | os.PathLike) -> Path:
    """``<out_dir>/data_check.json`` with every report (too-short utterances listed in full)."""
    out = Path(out_dir) / "data_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(reports, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def check_manifests(
    manifests: dict[str, str],
    tokenizer: Tokenizer,
    output_frames: Callable[[torch.Tensor], torch.Tensor],
    out_dir: str | os.PathLike,
    sample_rate: int = 16000,
    inter_tokenizer: Tokenizer | None = None,
) -> dict[str, dict]:
    """:func:`check_manifest` for each ``{name: path}``; logged, and written to ``<out_dir>/data_check.json``.

    Args:
        manifests: ``{name: JSONL path}``.
        tokenizer, output_frames, sample_rate, inter_tokenizer: as for :func:`check_manifest`.
        out_dir: where ``data_check.json`` goes.
    """
    reports = {n: check_manifest(p, tokenizer, output_frames, sample_rate, inter_tokenizer)
               for n, p in manifests.items()}
    for name, report in reports.items():
        log.info("data check\n%s", format_check(name, report))
    log.info("data check report: %s", write_checks(reports, out_dir))
    return reports
