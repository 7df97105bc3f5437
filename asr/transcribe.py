"""Transcribe audio files with a checkpoint or an exported model folder: text, JSON Lines with
word times and confidences (:mod:`asr.timing`), subtitles (SRT, WebVTT) or NIST CTM.

    python -m asr.transcribe checkpoint=exp/an4/<run>/checkpoints/best.ckpt audio=[a.flac,b.wav]
    python -m asr.transcribe checkpoint=... audio=[long.flac] format=json output=hyps.jsonl \
        decoder=beam
    python -m asr.transcribe checkpoint=... audio=talk.flac format=srt output=talk.srt

Long files are cut at quiet frames into pieces of at most ``chunk_seconds``, each run with
``overlap_seconds`` of context; the pieces' log-probs are stitched and decoded as one utterance.
A file that cannot be read is reported and skipped; the exit status is then 1.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from asr.cli import user_errors
from asr.decoding import Decoder
from asr.recognizer import Recognizer, check_options
from asr.text import Tokenizer
from asr.transcript_formats import FORMATS, format_results, write_results

log = logging.getLogger(__name__)


def transcribe(
    checkpoint: str,
    audio: Sequence[str],
    decoder: Callable[[Tokenizer], Decoder] | None = None,
    device: str = "auto",
    quantize: str | None = None,
    word_times: str = "audio",
    **chunking: float,
) -> list[dict[str, Any]]:
    """Transcribe each file with :meth:`asr.Recognizer.transcribe`; a file that fails gets an
    ``error`` instead of a ``text``, and the others go on.

    Args:
        checkpoint: a ``.ckpt`` of ``asr.train`` or a folder of ``asr.export format=pretrained``.
        audio: audio file paths.
        decoder: builds the decoder from the tokenizer (``None``: greedy).
        device: ``auto``, ``cpu`` or ``cuda``.
        quantize: ``int8``: int8 LSTM and linear layers (CPU only); ``None``: as stored.
        word_times: ``audio`` (spikes moved onto the sound) or ``spike``.
        chunking: ``chunk_seconds``, ``overlap_seconds``, ``search_seconds``, ``batch_seconds``.

    Returns:
        per file, in order, ``{"audio_filepath", "duration", "text", "words": [{"word", "start",
        "end", "confidence"}]}`` or ``{"audio_filepath", "error"}``.
    """
    check_options(word_times, chunking)
    recognizer = Recognizer.load(checkpoint, device, quantize)
    dec = recognizer.decoder_for(decoder)
    results: list[dict[str, Any]] = []
    for path in tqdm(audio, desc="transcribe", unit="file", disable=len(audio) < 10,
                     file=sys.stderr):
        try:
            t = recognizer.transcribe(path, dec, word_times, **chunking)
            results.append({"audio_filepath": str(path), **t.as_dict()})
        except (OSError, RuntimeError, ValueError) as err:  # LibsndfileError is a RuntimeError
            results.append({"audio_filepath": str(path),
                            "error": f"{err.__class__.__name__}: {err}"})
    return results


@hydra.main(version_base="1.3", config_path="../conf", config_name="transcribe")
def main(cfg: DictConfig) -> None:
    audio = OmegaConf.to_container(cfg.audio) if OmegaConf.is_list(cfg.audio) else [cfg.audio]
    with user_errors():
        if cfg.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {cfg.format!r}")
        if cfg.format in ("srt", "vtt") and len(audio) > 1 and not cfg.output:
            raise ValueError(f"format={cfg.format} writes one subtitle file per audio file: for "
                             f"{len(audio)} files pass output=<folder> (each goes to "
                             f"<folder>/<audio name>.{cfg.format})")
        results = transcribe(
            checkpoint=cfg.checkpoint,
            audio=[str(a) for a in audio],
            decoder=instantiate(cfg.decoder),
            device=cfg.device,
            quantize=cfg.quantize,
            word_times=cfg.word_times,
            chunk_seconds=cfg.chunk_seconds,
            overlap_seconds=cfg.overlap_seconds,
            search_seconds=cfg.search_seconds,
            batch_seconds=cfg.batch_seconds,
        )
        if cfg.output:
            written = write_results(results, cfg.format, cfg.output)
            print(f"wrote {', '.join(map(str, written))}" if len(written) < 4 else
                  f"wrote {len(written)} files under {cfg.output}", file=sys.stderr)
        else:
            sys.stdout.write(format_results(results, cfg.format))
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"error: {r['audio_filepath']}: {r['error']}; skipped", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(results)} files failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
