"""Serve a model: ``python -m asr.serve checkpoint=<.ckpt or model folder> port=8000``.

FastAPI on uvicorn, bound to 127.0.0.1 unless ``host=`` says otherwise; settings in
``conf/serve.yaml``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from asr.cli import user_errors
from asr.recognizer import Recognizer, check_options


def model_name(checkpoint: str, name: str | None) -> str:
    """The model id: ``name``, else the model folder's name or the checkpoint file's stem."""
    path = Path(checkpoint)
    return name or (path.name if path.is_dir() else path.stem)


def check_settings(cfg: DictConfig) -> None:
    """A ValueError naming the first bad setting."""
    positive = {"port": cfg.port, "max_upload_mb": cfg.max_upload_mb,
                "max_audio_seconds": cfg.max_audio_seconds, "queue_size": cfg.queue_size,
                "batch.max_seconds": cfg.batch.max_seconds}
    for key, value in positive.items():
        if not isinstance(value, int | float) or value <= 0:
            raise ValueError(f"{key} must be a positive number; got {value!r}")
    if not 0 <= cfg.batch.max_wait_ms <= 10_000:
        raise ValueError(f"batch.max_wait_ms must be 0..10000; got {cfg.batch.max_wait_ms!r}")
    if cfg.port > 65535:
        raise ValueError(f"port must be 1..65535; got {cfg.port}")


@hydra.main(version_base="1.3", config_path="../../conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    with user_errors():
        try:
            import uvicorn

            from asr.serve.app import Settings, build_app
            from asr.serve.batcher import BatchWorker
        except ImportError as err:
            raise ImportError(f"{err}: serving needs the serve extra: pip install -e "
                              "'.[serve]'") from None
        check_settings(cfg)
        chunking = {k: float(cfg[k]) for k in ("chunk_seconds", "overlap_seconds",
                                              "search_seconds", "batch_seconds")}
        check_options(cfg.word_times, chunking)
        recognizer = Recognizer.load(cfg.checkpoint, cfg.device, cfg.quantize)
        decoder = recognizer.decoder_for(instantiate(cfg.decoder))
        worker = BatchWorker(recognizer, decoder, bool(cfg.batch.enabled),
                             float(cfg.batch.max_seconds), float(cfg.batch.max_wait_ms),
                             int(cfg.queue_size), cfg.word_times, **chunking)
        settings = Settings(model_name(cfg.checkpoint, cfg.name), recognizer.sample_rate,
                            int(cfg.max_upload_mb * 2**20), float(cfg.max_audio_seconds),
                            str(cfg.language))
        app = build_app(worker, settings)
    print(f"serving {settings.model_id} on http://{cfg.host}:{cfg.port}/ "
          f"(API: http://{cfg.host}:{cfg.port}/v1)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=cfg.host, port=int(cfg.port), log_level=cfg.log_level,
                access_log=bool(cfg.access_log))


if __name__ == "__main__":
    main()
