"""A request's upload: the body read with a size limit, its form parsed, its audio decoded.

The size limit holds before the body is read whole: a ``Content-Length`` over it is refused at
once, and the bytes of a body sent without one are counted as they arrive.
"""

from __future__ import annotations

import io
import re
from collections.abc import Awaitable, Callable
from typing import Any

import soundfile as sf
import torch
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request

from asr.audio import bad_samples, load_audio

Receive = Callable[[], Awaitable[dict[str, Any]]]


class ApiError(Exception):
    """A request that cannot be served: its status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status, message, param, code, kind)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


def too_large(limit: int, setting: str = "max_upload_mb") -> ApiError:
    return ApiError(413, f"the upload is larger than {limit / 2**20:g} MB (the server's "
                         f"{setting} setting)", "file", "file_too_large")


def limited_receive(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises :func:`too_large` once the body passes ``limit`` bytes."""
    seen = 0

    async def wrapped() -> dict[str, Any]:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise too_large(limit)
        return message

    return wrapped


async def read_form(request: Request, limit: int) -> FormData:
    """The multipart form of ``request``, its body held to ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise too_large(limit) if length.isdigit() else ApiError(
            400, f"bad Content-Length header {length!r}", None, "bad_header")
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        raise ApiError(400, f"send the audio as multipart/form-data with a 'file' field (got "
                            f"Content-Type {kind or 'none'!r})", "file", "bad_content_type")
    limited = Request(request.scope, limited_receive(request.receive, limit))
    try:
        return await limited.form(max_files=1, max_fields=32)
    except ApiError:
        raise
    except Exception as err:  # noqa: BLE001 (starlette's parse errors: MultiPartException, ...)
        raise ApiError(400, f"the multipart form cannot be read: {err}", None,
                       "bad_form") from None


def check_filename(name: str | None) -> str:
    """The upload's name, which must be a bare file name (it only names the file in errors)."""
    name = name or "upload"
    if any(c in name for c in "/\\\0") or name in (".", "..") or len(name) > 255:
        raise ApiError(400, f"the file name {name[:80]!r} must be a bare name (no path, no "
                            "'..', at most 255 characters)", "file", "invalid_file_name")
    return name


async def upload_bytes(form: FormData) -> tuple[str, bytes]:
    """``(file name, contents)`` of the form's ``file`` field."""
    upload = form.get("file")
    if upload is None:
        raise ApiError(400, "the form has no 'file' field: send the audio as the multipart field "
                            "'file'", "file", "missing_file")
    if not isinstance(upload, UploadFile):
        raise ApiError(400, "'file' must be a file upload, not a text field", "file",
                       "invalid_file")
    name = check_filename(upload.filename)
    data = await upload.read()
    if not data:
        raise ApiError(400, f"{name}: the uploaded file is empty", "file", "empty_file")
    return name, data


def decode_audio(name: str, data: bytes, sample_rate: int, max_seconds: float) -> torch.Tensor:
    """(S,) mono float32 at ``sample_rate`` from a file's bytes (anything libsndfile reads), or
    a 400 saying why not."""
    def bad(reason: str, code: str = "invalid_audio") -> ApiError:
        return ApiError(400, f"{name}: {reason}", "file", code)

    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            frames, rate, note = f.frames, f.samplerate, f.extra_info
        if "should be" in note:  # libsndfile's note on a chunk longer than the file
            line = next(ln for ln in note.splitlines() if "should be" in ln)
            raise bad(f"truncated audio: header and file size disagree ({line.strip()})")
        if frames <= 0:
            raise bad("the audio holds no samples")
        if frames / rate > max_seconds:
            raise bad(f"{frames / rate:.1f} s of audio is longer than the server's "
                      f"max_audio_seconds={max_seconds:g}", "audio_too_long")
        wav = load_audio(io.BytesIO(data), sample_rate)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        why = re.sub(r"^Error opening <[^>]*>: ", "", str(err)).strip()
        raise bad(f"the audio cannot be decoded ({why}); send WAV, FLAC, OGG (Vorbis/Opus), "
                  "MP3 or SPHERE") from None
    expected = frames * sample_rate / rate
    if wav.numel() < 0.99 * expected - 1:
        raise bad(f"truncated audio: the header says {frames} samples, "
                  f"{int(wav.numel() * rate / sample_rate)} decode")
    reason = bad_samples(wav)
    if reason:
        raise bad(f"the audio holds {reason}")
    return wav
