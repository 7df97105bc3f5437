"""Transcripts with word times as files people use: JSON Lines, SubRip (SRT), WebVTT and NIST CTM.

Each writer takes the results of :func:`asr.transcribe.transcribe`: ``{"audio_filepath",
"duration", "text", "words": [{"word", "start", "end", "confidence"}]}`` per file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FORMATS = ("text", "json", "srt", "vtt", "ctm")
SUBTITLES = ("srt", "vtt")


def cues(
    words: list[dict[str, Any]], max_chars: int = 42, max_seconds: float = 6.0,
    max_pause: float = 1.0,
) -> list[tuple[float, float, str]]:
    """Words -> subtitle cues ``(start, end, text)``: a new cue after a pause over ``max_pause``
    seconds, or when the line would pass ``max_chars`` characters or ``max_seconds`` of speech."""
    out: list[tuple[float, float, str]] = []
    line: list[dict[str, Any]] = []
    for w in words:
        if line:
            text = " ".join(x["word"] for x in line + [w])
            if (w["start"] - line[-1]["end"] > max_pause or len(text) > max_chars
                    or w["end"] - line[0]["start"] > max_seconds):
                out.append((line[0]["start"], line[-1]["end"], " ".join(x["word"] for x in line)))
                line = []
        line.append(w)
    if line:
        out.append((line[0]["start"], line[-1]["end"], " ".join(x["word"] for x in line)))
    return out


def _clock(seconds: float, sep: str) -> str:
    """``HH:MM:SS<sep>mmm`` (SRT: ``,``; WebVTT: ``.``)."""
    ms = int(round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(result: dict[str, Any]) -> str:
    """One file's SubRip subtitles: numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, a blank line
    after each."""
    return "".join(f"{i}\n{_clock(a, ',')} --> {_clock(b, ',')}\n{text}\n\n"
                   for i, (a, b, text) in enumerate(cues(result["words"]), 1))


def to_vtt(result: dict[str, Any]) -> str:
    """One file's WebVTT subtitles: the ``WEBVTT`` header, then cues with ``HH:MM:SS.mmm`` times."""
    return "WEBVTT\n\n" + "".join(f"{_clock(a, '.')} --> {_clock(b, '.')}\n{text}\n\n"
                                  for a, b, text in cues(result["words"]))


def to_ctm(result: dict[str, Any]) -> str:
    """NIST CTM lines ``<file> 1 <start> <duration> <word> <confidence>`` (sclite's ``-h ctm``
    input); the file field is the audio file's name without its extension."""
    name = Path(result["audio_filepath"]).stem.replace(" ", "_")
    return "".join(f"{name} 1 {w['start']:.3f} {w['end'] - w['start']:.3f} {w['word']} "
                   f"{w['confidence']:.3f}\n" for w in result["words"])


def format_results(results: list[dict[str, Any]], fmt: str) -> str:
    """All files in one text: ``text`` (``file<TAB>text`` lines), ``json`` (JSON Lines, failed
    files with their ``error``), ``ctm``, or ``srt``/``vtt`` (one file only: subtitles are per
    audio file). Files that failed are left out of all but ``json``; the caller reports them."""
    ok = [r for r in results if "text" in r]
    if fmt == "json":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results)
    if fmt == "text":
        return "".join(f"{r['audio_filepath']}\t{r['text']}\n" for r in ok)
    if fmt == "ctm":
        return "".join(to_ctm(r) for r in ok)
    if fmt in SUBTITLES:
        if len(results) != 1:
            raise ValueError(f"format={fmt} writes one subtitle file per audio file: for "
                             f"{len(results)} files pass output=<folder> "
                             f"(each goes to <folder>/<audio name>.{fmt})")
        return (to_srt if fmt == "srt" else to_vtt)(ok[0]) if ok else ""
    raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")


def write_results(results: list[dict[str, Any]], fmt: str, output: str) -> list[Path]:
    """Write ``results`` to ``output``: one file, or for ``srt``/``vtt`` with several audio files
    (or an existing folder) one ``<output>/<audio name>.<fmt>`` per file (``<name>.1.<fmt>``,
    ``<name>.2.<fmt>``, ... when files in different folders share a name). Returns the files
    written."""
    out = Path(output)
    if fmt in SUBTITLES and (len(results) > 1 or out.is_dir()):
        out.mkdir(parents=True, exist_ok=True)
        written = []
        stems = [Path(r["audio_filepath"]).stem for r in results if "text" in r]
        seen: dict[str, int] = {}
        for r in results:
            if "text" in r:
                stem = Path(r["audio_filepath"]).stem
                if stems.count(stem) > 1:  # a/x.wav and b/x.wav: x.1.srt, x.2.srt, not one file
                    seen[stem] = seen.get(stem, 0) + 1
                    stem = f"{stem}.{seen[stem]}"
                path = out / f"{stem}.{fmt}"
                path.write_text(format_results([r], fmt), encoding="utf-8")
                written.append(path)
        return written
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(format_results(results, fmt), encoding="utf-8")
    return [out]
