"""Score a checkpoint on manifests: per split ``hyps.txt``, ``refs.txt``, ``report.json``, the
error analysis and an alignment picture under ``<out_dir>/<split>/``, and one WER table."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from asr.decoding import Decoder
from asr.inference import cached_log_probs, decode_log_probs, model_home
from asr.metrics import error_report
from asr.quantize import is_quantized
from asr.recognizer import Recognizer
from asr.report.alignment import save_sample_alignment
from asr.report.analysis import write_error_analysis
from asr.text import Tokenizer

log = logging.getLogger(__name__)


def evaluate_checkpoint(
    checkpoint: str, manifests: dict[str, str] | None = None, out_dir: str | None = None,
    device: str = "auto", batch_seconds: float = 200.0, progress: bool = True,
    decoder: Callable[[Tokenizer], Decoder] | None = None, decoder_settings: dict | None = None,
    cache_dir: str | None = None, quantize: str | None = None,
) -> dict[str, dict]:
    """Decode each manifest with ``checkpoint`` and write ``<out_dir>/<name>/``: ``hyps.txt``,
    ``refs.txt``, ``report.json``, ``errors.{md,json}`` and ``alignment.png``.

    Args:
        checkpoint: a ``.ckpt`` of ``asr.train`` or a model folder of ``asr.export``.
        manifests: ``{name: path}``; none: those stored in the checkpoint (a folder keeps none).
        out_dir: default ``<run dir>/decode``, or ``<folder>/decode`` for a model folder.
        device: ``auto``, ``cpu`` or ``cuda`` (``auto`` is the CPU for an int8 model).
        batch_seconds: padded audio seconds per batch.
        decoder: builds the decoder from the tokenizer (``None``: greedy).
        decoder_settings: plain description of the decoder, copied into each report.
        cache_dir: reuse ``<cache_dir>/<name>[.int8].pt`` while weights and manifest are the same.
        quantize: ``int8``: int8 LSTM and linear layers (CPU only); ``None``: as stored.

    Returns:
        ``{name: report}`` (:func:`asr.metrics.error_report`, plus timings, ``rtf`` and paths).
    """
    recognizer = Recognizer.load(checkpoint, device, quantize)
    quantize = "int8" if is_quantized(recognizer) else None  # asked for, or the folder's
    dec = recognizer.decoder_for(decoder)
    manifests = dict(manifests or recognizer.eval_manifests)
    if not manifests:
        raise ValueError(f"no manifests to evaluate: {checkpoint} stores none; "
                         "pass manifests='{test: path/to/test.jsonl}'")
    out = Path(out_dir) if out_dir else model_home(checkpoint) / "decode"
    settings = decoder_settings or {"name": type(dec).__name__}
    reports = {}
    for name, manifest in manifests.items():
        if not Path(manifest).is_file():
            raise FileNotFoundError(
                f"manifest {name}={manifest} does not exist; "
                f"pass manifests='{{{name}: path/to/{name}.jsonl}}'"
            )
        cache_file = (str(Path(cache_dir) / f"{name}{'.' + quantize if quantize else ''}.pt")
                      if cache_dir else None)
        data = cached_log_probs(recognizer, checkpoint, manifest, cache_file, batch_seconds,
                                progress, quantize)
        start = time.perf_counter()
        hyps = decode_log_probs(dec, data["log_probs"])
        report = error_report(data["refs"], hyps)
        report.update(split=name, manifest=str(manifest), checkpoint=str(checkpoint),
                      device=str(recognizer.device), quantize=quantize, decoder=settings,
                      **_timings(data, time.perf_counter() - start))
        write_split(out / name, recognizer, data, hyps, report)
        reports[name] = report
    return reports


def _timings(data: dict, search_seconds: float) -> dict:
    """Decoding time and real-time factors of one split: the forward pass (when it ran) and the
    search."""
    seconds, forward = data["audio_seconds"], data["forward_seconds"]
    total = forward + search_seconds
    return dict(
        audio_seconds=round(seconds, 2), decode_seconds=round(total, 2),
        rtf=round(total / max(seconds, 1e-9), 5), forward_seconds=round(forward, 3),
        search_seconds=round(search_seconds, 3),
        search_rtf=round(search_seconds / max(seconds, 1e-9), 5), cached_log_probs=data["cached"],
    )


def write_split(split_dir: Path, recognizer: Recognizer, data: dict, hyps: list[str],
                report: dict) -> None:
    """``hyps.txt`` and ``refs.txt`` (sclite trn style: ``text (id)``), ``report.json``,
    ``errors.{md,json}`` and ``alignment.png`` of one scored split."""
    ids, refs = data["ids"], data["refs"]
    split_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / "hyps.txt").write_text("".join(f"{h} ({i})\n"
                                                for i, h in zip(ids, hyps, strict=True)))
    (split_dir / "refs.txt").write_text("".join(f"{r} ({i})\n"
                                                for i, r in zip(ids, refs, strict=True)))
    (split_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_error_analysis(split_dir, ids, refs, hyps)  # worst utterances, top confusions
    try:
        save_sample_alignment(split_dir, ids, refs, data["log_probs"], recognizer.tokenizer,
                              recognizer.frame_seconds)
    except ValueError as err:  # a picture is not worth failing an evaluation for
        log.warning("no alignment.png for %s: %s", split_dir.name, err)


def format_table(reports: dict[str, dict]) -> str:
    """One WER table for all splits."""
    head = (f"{'split':<12} {'utts':>5} {'words':>6} {'WER %':>7} {'CER %':>7} {'sub':>5} "
            f"{'del':>5} {'ins':>5}")
    rows = [head, "-" * len(head)]
    for name, r in reports.items():
        rows.append(
            f"{name:<12} {r['utterances']:>5} {r['ref_words']:>6} {100 * r['wer']:>7.2f} "
            f"{100 * r['cer']:>7.2f} {r['substitutions']:>5} {r['deletions']:>5} "
            f"{r['insertions']:>5}"
        )
    return "\n".join(rows)
