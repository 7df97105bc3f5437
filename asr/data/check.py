"""Check manifests against the tokenizer and the model before training.

Per manifest: hours, utterance count, a duration histogram, the characters found against those
the tokenizer covers, and the utterances too short for their label under CTC once subsampled (the
commonest cause of an infinite or NaN CTC loss). Training drops those by the same rule
(:mod:`asr.data.filter`); this report lists them.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path

from asr.data.filter import UtteranceFilter
from asr.data.manifest import read_manifest
from asr.text import ctc_min_frames, normalize_text

log = logging.getLogger(__name__)

# Upper edges (seconds) of the duration histogram; the last bin is open.
BIN_EDGES = (1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0)


def check_manifest(manifest: str | os.PathLike, rule: UtteranceFilter) -> dict:
    """Statistics and problems of one manifest (durations are taken from it; no audio is read).

    Args:
        manifest: JSONL manifest.
        rule: the run's :class:`~asr.data.filter.UtteranceFilter`. With more than one tokenizer
            (intermediate CTC), utterances too short for the others' labels are counted as
            ``inter_too_short``: kept, but their intermediate loss is zero.

    Returns:
        ``{"manifest", "utterances", "hours", "histogram", "chars", "unknown_chars",
        "unusable_text", "too_short", "too_short_utts"}``, plus ``"inter_too_short"`` with more
        than one tokenizer.
    """
    utts = read_manifest(manifest)
    durations = [u.duration for u in utts]
    histogram = Counter()
    for d in durations:
        edge = next((e for e in BIN_EDGES if d < e), None)
        histogram[f"<{edge:g}s" if edge else f">={BIN_EDGES[-1]:g}s"] += 1
    chars: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    unusable = 0
    too_short = []
    inter_too_short = 0
    frames = rule.frames(utts)
    assert frames is not None, ("the data check counts CTC lengths: "
                                "the filter needs the model's output frames")
    for u, n in zip(utts, frames, strict=True):
        text = normalize_text(u.text)
        chars.update(text)
        bad = rule.unknown_chars(text)
        unknown.update(c for c in text if c in bad)
        rejected = rule.reject(u, n)
        if rejected is not None and rejected[0] == "text":
            unusable += 1
        elif rejected is not None:
            need = ctc_min_frames(rule.tokenizers[0].encode(text))
            too_short.append({"id": u.id, "duration": u.duration, "frames": int(n), "needed": need})
        elif any(n < ctc_min_frames(t.encode(text)) for t in rule.tokenizers[1:]):
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
        **({"inter_too_short": inter_too_short} if len(rule.tokenizers) > 1 else {}),
    }


def format_check(name: str, report: dict) -> str:
    """A few readable lines for the log."""
    hist = "  ".join(f"{k}:{v}" for k, v in report["histogram"].items())
    found = "".join(report["chars"])
    lines = [
        f"{name}: {report['utterances']} utterances, {report['hours']:.2f} h "
        f"({report['manifest']})",
        f"  durations  {hist}",
        f"  characters {found!r}",
    ]
    if report["unknown_chars"]:
        lines.append(f"  NOT in the tokenizer: {report['unknown_chars']} -> "
                     f"{report['unusable_text']} utterances dropped")
    if report["too_short"]:
        ids = ", ".join(u["id"] for u in report["too_short_utts"][:10])
        lines.append(f"  too short for their label under CTC: {report['too_short']} dropped "
                     f"({ids} ...)")
    if report.get("inter_too_short"):
        lines.append(f"  too short for their intermediate-CTC label: {report['inter_too_short']} "
                     "(kept; their intermediate loss is zero: a smaller model.subsampling_factor "
                     "fits them)")
    return "\n".join(lines)


def write_checks(reports: dict[str, dict], out_dir: str | os.PathLike) -> Path:
    """``<out_dir>/data_check.json`` with every report (too-short utterances listed in full)."""
    out = Path(out_dir) / "data_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(reports, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def check_manifests(manifests: dict[str, str], rule: UtteranceFilter,
                    out_dir: str | os.PathLike) -> dict[str, dict]:
    """:func:`check_manifest` for each ``{name: path}``; logged and written to
    ``<out_dir>/data_check.json``."""
    reports = {name: check_manifest(path, rule) for name, path in manifests.items()}
    for name, report in reports.items():
        log.info("data check\n%s", format_check(name, report))
    log.info("data check report: %s", write_checks(reports, out_dir))
    return reports
