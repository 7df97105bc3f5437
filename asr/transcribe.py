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

from asr.data import load_audio
from asr.decoding import Decoder
from asr.module import ASRModule
from asr.text import Tokenizer

log = logging.getLogger(__name__)


def frame_stride(module: ASRModule) -> int:
    """Input samples per output frame: the feature hop times the model's subsampling."""
    factor = int(module.model.output_lengths(torch.tensor([1_000_000]))) / 1_000_000
    return int(round(module.features.hop_length / factor))


def split_points(
    wav: torch.Tensor, sample_rate: int, stride: int, chunk_seconds: float, search_seconds: float
) -> list[int]:
    """Cut positions (samples, multiples of ``stride``) so that no piece is longer than ``chunk_seconds``.

    Each cut is placed at the start of the lowest-energy ``stride``-long frame in the last ``search_seconds``
    of the piece (``search_seconds=0``: fixed windows).

    Returns:
        ``[0, cut_1, ..., len(wav)]``.
    """
    n = wav.numel()
    max_len = max(stride, int(chunk_seconds * sample_rate) // stride * stride)
    search = int(search_seconds * sample_rate) // stride * stride
    cuts = [0]
    while n - cuts[-1] > max_len:
        start = cuts[-1]
        end = start + max_len
        lo = max(start + stride, end - search)
        if lo < end:
            energy = wav[lo:end].reshape(-1, stride).pow(2).mean(dim=1)  # (frames,)
            cuts.append(lo + int(energy.argmin()) * stride)
        else:
            cuts.append(end)
    cuts.append(n)
    return cuts


@torch.inference_mode()
def long_log_probs(
    module: ASRModule,
    wav: torch.Tensor,
    device: torch.device,
    chunk_seconds: float = 30.0,
    overlap_seconds: float = 1.0,
    search_seconds: float = 5.0,
    batch_seconds: float = 200.0,
) -> torch.Tensor:
    """(S,) waveform of any length -> (T, C) log-probs, computed piecewise and stitched (see module doc)."""
    sr = module.features.config["sample_rate"]
    stride = frame_stride(module)
    cuts = split_points(wav, sr, stride, chunk_seconds, search_seconds)
    ctx = int(overlap_seconds * sr) // stride * stride
    pieces = []  # (context start, context end, frames to skip, frames to keep or None for all)
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        s, e = max(0, a - ctx), min(wav.numel(), b + ctx)
        last = i == len(cuts) - 2
        pieces.append((s, e, (a - s) // stride, None if last else (b - a) // stride))
    per_batch = max(1, int(batch_seconds // (chunk_seconds + 2 * overlap_seconds)))
    out = []
    for k in range(0, len(pieces), per_batch):
        group = pieces[k : k + per_batch]
        lengths = torch.tensor([e - s for s, e, _, _ in group])
        audio = torch.zeros(len(group), int(lengths.max()))  # (B, S)
        for j, (s, e, _, _) in enumerate(group):
            audio[j, : e - s] = wav[s:e]
        log_probs, out_lengths = module(audio.to(device), lengths.to(device))  # (B, T, C), (B,)
        for j, (_, _, skip, keep) in enumerate(group):
            valid = log_probs[j, : int(out_lengths[j])].float().cpu()
            out.append(valid[skip:] if keep is None else valid[skip : skip + keep])
    return torch.cat(out)


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
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device
    )
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
    if cfg.format not in ("text", "json"):
        print(f"error: format must be 'text' or 'json', got {cfg.format!r}", file=sys.stderr)
        sys.exit(2)
    audio = OmegaConf.to_container(cfg.audio) if OmegaConf.is_list(cfg.audio) else [cfg.audio]
    try:
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
    except (FileNotFoundError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
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
