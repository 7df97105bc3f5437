"""The FastAPI application: OpenAI's ``/v1/audio/transcriptions`` and ``/v1/models``,
``/health``, and the page at ``/``.

Every error answers in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``. The
model runs on the :class:`~asr.serve.batcher.BatchWorker`'s thread; decoding uploads runs in the
server's thread pool; the event loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, JSONResponse, Response

from asr.serve.batcher import BatchWorker, QueueFull
from asr.serve.responses import GRANULARITIES, RESPONSE_FORMATS, render
from asr.serve.uploads import ApiError, decode_audio, read_form, upload_bytes

log = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("page.html")


@dataclass
class Settings:
    """What the routes need to know besides the worker."""

    model_id: str
    sample_rate: int
    max_upload_bytes: int = 25 * 2**20
    max_audio_seconds: float = 900.0
    language: str = "english"


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


def install_error_handlers(app: FastAPI) -> None:
    """OpenAI's error body for our errors, unknown routes, bad methods and anything unforeseen."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, err: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        return error_response(ApiError(err.status_code, str(err.detail), None, code))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(ApiError(400, str(err.errors())[:500], None, "invalid_request"))

    @app.exception_handler(Exception)
    async def bug(_: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(ApiError(500, f"internal error: {err.__class__.__name__}", None,
                                       "internal_error", "server_error"))


def form_options(form: Any, settings: Settings) -> tuple[str, list[str]]:
    """``(response_format, timestamp_granularities)`` of a form, checked; the model checked."""
    model = form.get("model")
    if model not in (None, "", settings.model_id):
        raise ApiError(404, f"The model {model!r} does not exist: this server serves "
                            f"{settings.model_id!r} (GET /v1/models)", "model", "model_not_found")
    fmt = form.get("response_format") or "json"
    if fmt not in RESPONSE_FORMATS:
        raise ApiError(400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}; got "
                            f"{fmt!r}", "response_format", "invalid_value")
    grains = [g for key in ("timestamp_granularities[]", "timestamp_granularities")
              for g in form.getlist(key)]
    if set(grains) - set(GRANULARITIES):
        raise ApiError(400, f"timestamp_granularities must be word and/or segment; got {grains}",
                       "timestamp_granularities", "invalid_value")
    return str(fmt), grains


def build_app(worker: BatchWorker, settings: Settings) -> FastAPI:
    """The application over a running worker (closed with the application)."""
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        worker.close()

    app = FastAPI(title="asr", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.worker, app.state.settings, app.state.started = worker, settings, time.time()
    install_error_handlers(app)
    page = PAGE.read_text(encoding="utf-8").replace("{{MODEL}}", html.escape(settings.model_id))

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": settings.model_id, **worker.health()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(settings, app.state.started)]}

    @app.get("/v1/models/{model}")
    async def model(model: str) -> dict[str, Any]:
        if model != settings.model_id:
            raise ApiError(404, f"The model {model!r} does not exist", "model", "model_not_found")
        return model_card(settings, app.state.started)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        return await transcribe_request(request, worker, settings)

    return app


def model_card(settings: Settings, created: float) -> dict[str, Any]:
    return {"id": settings.model_id, "object": "model", "created": int(created),
            "owned_by": "asr"}


async def transcribe_request(request: Request, worker: BatchWorker,
                             settings: Settings) -> Response:
    """One ``POST /v1/audio/transcriptions``: read, check, decode, queue, wait, answer."""
    started = time.perf_counter()
    worker.arriving += 1
    try:
        form = await read_form(request, settings.max_upload_bytes)
        try:
            fmt, grains = form_options(form, settings)
            name, data = await upload_bytes(form)
        finally:
            await form.close()
        wav = await run_in_threadpool(decode_audio, name, data, settings.sample_rate,
                                      settings.max_audio_seconds)
    finally:
        worker.arriving -= 1  # before submit: the worker need not wait for this one
    try:
        future = worker.submit(wav)
    except QueueFull:
        raise ApiError(503, f"the server is busy: {worker.queue.maxsize} requests are waiting "
                            "(the queue_size setting); retry later", None, "queue_full",
                       "server_error") from None
    transcript, batch = await asyncio.wrap_future(future)
    headers = {"X-Batch-Size": str(batch),
               "X-Processing-Ms": f"{1000 * (time.perf_counter() - started):.1f}"}
    return render(transcript, fmt, settings.language, grains, headers)
