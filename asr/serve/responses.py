"""A transcript in OpenAI's response formats: ``json``, ``text``, ``srt``, ``vtt``,
``verbose_json``.

``verbose_json`` is OpenAI's shape (``task``, ``language``, ``duration``, ``text``, ``words``,
``segments``), with each word's and each segment's ``confidence`` added: a word's is the smallest
peak posterior of its tokens (:mod:`asr.timing`), a segment's the mean of its words'. Segments are
the subtitle cues of :func:`asr.transcript_formats.cues`.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, PlainTextResponse, Response

from asr.recognizer import Transcript
from asr.transcript_formats import cues, to_srt, to_vtt

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("word", "segment")


def segments(words: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cues of ``words`` as OpenAI segments, each with its words' mean confidence."""
    out, i = [], 0
    for n, (start, end, text) in enumerate(cues(words)):
        mine = words[i : i + len(text.split())]
        i += len(mine)
        out.append({"id": n, "seek": 0, "start": start, "end": end, "text": text,
                    "confidence": round(sum(w["confidence"] for w in mine) / len(mine), 3)})
    return out


def verbose(t: Transcript, language: str, granularities: list[str]) -> dict[str, Any]:
    """OpenAI's ``verbose_json``: words and segments both unless ``granularities`` names one."""
    result = t.as_dict()
    body = {"task": "transcribe", "language": language, "duration": result["duration"],
            "text": t.text}
    want = set(granularities) or set(GRANULARITIES)
    if "word" in want:
        body["words"] = result["words"]
    if "segment" in want:
        body["segments"] = segments(result["words"])
    return body


def render(t: Transcript, fmt: str, language: str, granularities: list[str],
           headers: dict[str, str]) -> Response:
    """The HTTP response for transcript ``t`` in response format ``fmt`` (checked before)."""
    if fmt == "json":
        return JSONResponse({"text": t.text}, headers=headers)
    if fmt == "verbose_json":
        return JSONResponse(verbose(t, language, granularities), headers=headers)
    if fmt == "text":
        return PlainTextResponse(t.text + "\n", headers=headers)
    if fmt == "srt":
        return PlainTextResponse(to_srt(t.as_dict()), headers=headers)
    return PlainTextResponse(to_vtt(t.as_dict()), media_type="text/vtt", headers=headers)
