"""Transcribe audio files with a checkpoint: text (``file<TAB>text``) or JSON Lines out.

    python -m asr.transcribe checkpoint=exp/an4/<run>/checkpoints/best.ckpt audio=[a.flac,b.wav]
    python -m asr.transcribe checkpoint=... audio=[long.flac] format=json output=hyps.jsonl decoder=beam

Any file soundfile reads, any sample rate, mono or multi-channel (averaged). Long files are cut into pieces
of at most ``chunk_seconds``, each cut at the quietest frame of the last ``search_seconds`` before the limit;
each piece is run with ``overlap_seconds`` of neighbouring audio on both sides for context, and only its own
frames are kept, so the stitched log-probs are decoded as one utterance (an LM sees the whole file). A file
that cannot be read is reported and skipped; the exit status is 1 when any file failed.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from asr.cli import user_errors
from asr.data.audio import load_audio
from asr.decoding import Decoder
from asr.inference import long_log_probs, resolve_device
from asr.text import Tokenizer
from asr.training.module import ASRModule

log = logging.getLogger(__name__)


def transcribe(
    checkpoint: str,
    audio: Sequence[str],
    decoder: Callable[[Tokenizer], Decoder] | None = None,
    device: str = "auto",
    chunk_seconds: float = 30.0,
    overlap_seconds: float = 1.0,
    search_seconds: float = 5.0,
    batch_seconds: float = 200.0,
) -> list[dict[str, Any]]:
    """Transcribe each file; a file that fails gets an ``error`` instead of a ``text``.

    Args:
        checkpoint: a ``.ckpt`` written by ``asr.train``.
        audio: audio file paths.
        decoder: builds the decoder from the checkpoint's tokenizer (``None``: greedy).
        device: ``auto``, ``cpu`` or ``cuda``.
        chunk_seconds, overlap_seconds, search_seconds: long-file splitting (see the module doc).
        batch_seconds: padded audio seconds per forward pass.

    Returns:
        one ``{"audio_filepath", "duration", "text"}`` or ``{"audio_filepath", "error"}`` per file, in order.
    """
    if chunk_seconds <= 0 or overlap_seconds < 0 or search_seconds < 0:
        raise ValueError(
            f"need chunk_seconds > 0, overlap_seconds >= 0, search_seconds >= 0; got {chunk_seconds}, "
            f"{overlap_seconds}, {search_seconds}"
        )
    dev = resolve_device(device)
    module = ASRModule.load_for_inference(checkpoint, map_location=dev).to(dev)
    dec = decoder(module.tokenizer) if decoder is not None else module.decoder
    sr = module.features.config["sample_rate"]
    results: list[dict[str, Any]] = []
    for path in audio:
        try:
            if not Path(path).is_file():
                raise FileNotFoundError("no such file")
            wav = load_audio(path, sr)
            if wav.numel() == 0:
                raise ValueError("the file holds no audio samples")
            if not torch.isfinite(wav).all():
                raise ValueError("the audio holds NaN or infinite samples")
            log_probs = long_log_probs(
                module, wav, dev, chunk_seconds, overlap_seconds, search_seconds, batch_seconds
            )  # (T, C)
            text = dec.decode(log_probs[None], torch.tensor([log_probs.shape[0]]))[0]
            results.append(
                {"audio_filepath": str(path), "duration": round(wav.numel() / sr, 3), "text": text}
            )
        except (OSError, RuntimeError, ValueError) as err:  # soundfile's LibsndfileError is a RuntimeError
            results.append({"audio_filepath": str(path), "error": f"{err.__class__.__name__}: {err}"})
    return results


def format_results(results: list[dict[str, Any]], fmt: str) -> str:
    """``text``: ``file<TAB>text`` lines (failed files left out; they go to stderr); ``json``: JSON Lines."""
    if fmt == "json":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results)
    return "".join(f"{r['audio_filepath']}\t{r['text']}\n" for r in results if "text" in r)


@hydra.main(version_base="1.3", config_path="../conf", config_name="transcribe")
def main(cfg: DictConfig) -> None:
    audio = OmegaConf.to_container(cfg.audio) if OmegaConf.is_list(cfg.audio) else [cfg.audio]
    with user_errors():
        if cfg.format not in ("text", "json"):
            raise ValueError(f"format must be 'text' or 'json', got {cfg.format!r}")
        results = transcribe(
            checkpoint=cfg.checkpoint,
            audio=[str(a) for a in audio],
            decoder=instantiate(cfg.decoder),
            device=cfg.device,
            chunk_seconds=cfg.chunk_seconds,
            overlap_seconds=cfg.overlap_seconds,
            search_seconds=cfg.search_seconds,
            batch_seconds=cfg.batch_seconds,
        )
    text = format_results(results, cfg.format)
    if cfg.output:
        Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"error: {r['audio_filepath']}: {r['error']}; skipped", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(results)} files failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
