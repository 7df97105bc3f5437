"""Transcribe audio files with a checkpoint or an exported model folder: text, JSON Lines with word times and
confidences, subtitles (SRT, WebVTT) or NIST CTM.

    python -m asr.transcribe checkpoint=exp/an4/<run>/checkpoints/best.ckpt audio=[a.flac,b.wav]
    python -m asr.transcribe checkpoint=... audio=[long.flac] format=json output=hyps.jsonl decoder=beam
    python -m asr.transcribe checkpoint=... audio=talk.flac format=srt output=talk.srt

Word times and confidences: :mod:`asr.timing` (times are seconds from the start of the file, continuous across
the pieces a long file is cut into, since the pieces' log-probs are stitched before decoding).

Any file soundfile reads, any sample rate, mono or multi-channel (averaged). Long files are cut into pieces
of at most ``chunk_seconds``, each cut at the quietest frame of the last ``search_seconds`` before the limit;
each piece is run with ``overlap_seconds`` of neighbouring audio on both sides for context, and only its own
frames are kept, so the stitched log-probs are decoded as one utterance (an LM sees the whole file). A file
that cannot be read is reported and skipped; the exit status is 1 when any file failed.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from asr.cli import user_errors
from asr.data.audio import load_audio
from asr.decoding import Decoder
from asr.inference import load_model, long_log_probs
from asr.text import Tokenizer
from asr.timing import frame_energy_db, snap_to_sound, transcript_words
from asr.transcript_formats import FORMATS, format_results, write_results

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
    quantize: str | None = None,
    word_times: str = "audio",
) -> list[dict[str, Any]]:
    """Transcribe each file; a file that fails gets an ``error`` instead of a ``text``.

    Args:
        checkpoint: a ``.ckpt`` written by ``asr.train``, or a folder written by ``asr.export format=pretrained``.
        audio: audio file paths.
        decoder: builds the decoder from the checkpoint's tokenizer (``None``: greedy).
        device: ``auto``, ``cpu`` or ``cuda``.
        chunk_seconds, overlap_seconds, search_seconds: long-file splitting (see the module doc).
        batch_seconds: padded audio seconds per forward pass.
        quantize: ``int8``: dynamic int8 quantisation of the LSTM and linear layers (CPU only); ``None``: float.
        word_times: ``audio``: the CTC spikes moved onto the sound of the words (:func:`asr.timing.snap_to_sound`);
            ``spike``: the frames of the CTC spikes as they are.

    Returns:
        one ``{"audio_filepath", "duration", "text", "words": [{"word", "start", "end", "confidence"}]}`` or
        ``{"audio_filepath", "error"}`` per file, in order.
    """
    if chunk_seconds <= 0 or overlap_seconds < 0 or search_seconds < 0:
        raise ValueError(
            f"need chunk_seconds > 0, overlap_seconds >= 0, search_seconds >= 0; got {chunk_seconds}, "
            f"{overlap_seconds}, {search_seconds}"
        )
    if word_times not in ("audio", "spike"):
        raise ValueError(f"word_times must be 'audio' or 'spike', got {word_times!r}")
    module, dev, _ = load_model(checkpoint, device, quantize)
    dec = decoder(module.tokenizer) if decoder is not None else module.decoder
    sr = module.features.config["sample_rate"]
    frame_seconds = module.samples_per_frame / sr
    results: list[dict[str, Any]] = []
    for path in tqdm(audio, desc="transcribe", unit="file", disable=len(audio) < 10, file=sys.stderr):
        try:
            wav = _read(path, sr)
            log_probs = long_log_probs(
                module, wav, dev, chunk_seconds, overlap_seconds, search_seconds, batch_seconds
            )  # (T, C)
            text = dec.decode(log_probs[None], torch.tensor([log_probs.shape[0]]))[0]
            words = transcript_words(log_probs, module.tokenizer, text, frame_seconds)
            if word_times == "audio":
                energy = frame_energy_db(wav, module.samples_per_frame, log_probs.shape[0])
                words = snap_to_sound(words, energy, frame_seconds)
            duration = wav.numel() / sr  # the last frame may reach past the last sample: times end at the audio's
            results.append({"audio_filepath": str(path), "duration": round(duration, 3), "text": text,
                            "words": [w.clipped(duration).as_dict() for w in words]})
        except (OSError, RuntimeError, ValueError) as err:  # soundfile's LibsndfileError is a RuntimeError
            results.append({"audio_filepath": str(path), "error": f"{err.__class__.__name__}: {err}"})
    return results


def _read(path: str, sample_rate: int) -> torch.Tensor:
    """(S,) samples of an audio file at ``sample_rate``; ValueError/OSError naming what is wrong with it."""
    if not Path(path).is_file():
        raise FileNotFoundError("no such file")
    wav = load_audio(path, sample_rate)
    if wav.numel() == 0:
        raise ValueError("the file holds no audio samples")
    if not torch.isfinite(wav).all():
        raise ValueError("the audio holds NaN or infinite samples")
    return wav


@hydra.main(version_base="1.3", config_path="../conf", config_name="transcribe")
def main(cfg: DictConfig) -> None:
    audio = OmegaConf.to_container(cfg.audio) if OmegaConf.is_list(cfg.audio) else [cfg.audio]
    with user_errors():
        if cfg.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {cfg.format!r}")
        if cfg.format in ("srt", "vtt") and len(audio) > 1 and not cfg.output:
            raise ValueError(f"format={cfg.format} writes one subtitle file per audio file: for {len(audio)} files "
                             f"pass output=<folder> (each goes to <folder>/<audio name>.{cfg.format})")
        results = transcribe(
            checkpoint=cfg.checkpoint,
            audio=[str(a) for a in audio],
            decoder=instantiate(cfg.decoder),
            device=cfg.device,
            chunk_seconds=cfg.chunk_seconds,
            overlap_seconds=cfg.overlap_seconds,
            search_seconds=cfg.search_seconds,
            batch_seconds=cfg.batch_seconds,
            quantize=cfg.quantize,
            word_times=cfg.word_times,
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
