"""Score a checkpoint on manifests: per-split hyps.txt, refs.txt, report.json and one printed WER table.

    python -m asr.evaluate checkpoint=exp/an4/<run>/checkpoints/best.ckpt
    python -m asr.evaluate checkpoint=... manifests='{test: data/an4/test.jsonl}'
    python -m asr.evaluate checkpoint=... data=librispeech    # dev-clean dev-other test-clean test-other
    python -m asr.evaluate checkpoint=... decoder=beam decoder.beam_size=50
    python -m asr.evaluate -m checkpoint=... decoder=beam_lm decoder.lexicon=... decoder.lm=... \
        decoder.lm_weight=0.5,1,1.5,2 decoder.word_score=-1,0,1

The model's log-probs are cached once per checkpoint and split (``cache_dir``), so a decoder sweep costs one
forward pass per split and one search per point.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm import tqdm

from asr.alignment import save_sample_alignment
from asr.analysis import write_error_analysis
from asr.data import AudioDataset, BucketBatchSampler, collate, read_manifest
from asr.decoding import Decoder
from asr.metrics import error_report
from asr.module import ASRModule
from asr.text import Tokenizer, normalize_text

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def run_dir_of(checkpoint: str | os.PathLike) -> Path:
    """``exp/<recipe>/<run>/checkpoints[/top]/x.ckpt`` -> ``exp/<recipe>/<run>``.

    A checkpoint outside a run's ``checkpoints/`` folder (copied elsewhere) -> the folder it is in.
    """
    path = Path(checkpoint).resolve()
    for parent in path.parents:
        if parent.name == "checkpoints":
            return parent.parent
    return path.parent


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.inference_mode()
def compute_log_probs(
    module: ASRModule,
    manifest: str,
    device: torch.device,
    batch_seconds: float = 200.0,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the model over every utterance of a manifest.

    Returns:
        ``{"ids", "refs" (normalised), "log_probs" (one (T, C) float32 CPU tensor per utterance),
        "audio_seconds", "forward_seconds"}``, in manifest order.
    """
    start = time.perf_counter()
    utts = read_manifest(manifest)
    ds = AudioDataset(utts, tokenizer=None, sample_rate=module.features.config["sample_rate"])
    sampler = BucketBatchSampler([u.duration for u in utts], batch_seconds, num_buckets=1, shuffle=False,
                                 drop_last=False, num_replicas=1, rank=0)
    out: dict[str, torch.Tensor] = {}
    for batch in tqdm(DataLoader(ds, batch_sampler=sampler, collate_fn=collate), desc=Path(manifest).name,
                      unit="batch", disable=not progress, leave=False):
        for utt_id, why in batch.dropped:
            # scored as an empty hypothesis (all deletions), never silently left out of the WER
            log.warning("%s: utterance %s failed to load, decoded as empty: %s", manifest, utt_id, why)
            out[utt_id] = torch.zeros(0, module.tokenizer.num_classes)
        if not batch.ids:
            continue
        log_probs, lengths = module(batch.audio.to(device), batch.audio_lengths.to(device))  # (B, T, C), (B,)
        log_probs, lengths = log_probs.float().cpu(), lengths.cpu()
        for i, utt_id in enumerate(batch.ids):
            out[utt_id] = log_probs[i, : int(lengths[i])].clone()
    ids = [u.id for u in utts]
    return {
        "ids": ids,
        "refs": [normalize_text(u.text) for u in utts],
        "log_probs": [out[i] for i in ids],
        "audio_seconds": sum(u.duration for u in utts),
        "forward_seconds": time.perf_counter() - start,
    }


def _cache_key(checkpoint: str, manifest: str, device: torch.device) -> dict[str, Any]:
    """What cached log-probs depend on: checkpoint and manifest (path, size, mtime) and the device."""
    key: dict[str, Any] = {"version": CACHE_VERSION, "device": device.type}
    for name, path in (("checkpoint", checkpoint), ("manifest", manifest)):
        st = os.stat(path)
        key.update(
            {name: str(Path(path).resolve()), f"{name}_size": st.st_size, f"{name}_mtime_ns": st.st_mtime_ns}
        )
    return key


def cached_log_probs(
    module: ASRModule, checkpoint: str, manifest: str, device: torch.device, cache_file: str | None,
    batch_seconds: float = 200.0, progress: bool = True,
) -> dict[str, Any]:
    """:func:`compute_log_probs`, loaded from ``cache_file`` when made from the same checkpoint and manifest.

    The result has ``cached`` (True when loaded); ``forward_seconds`` is the time the forward pass took when
    the cache was written.
    """
    key = _cache_key(checkpoint, manifest, device)
    if cache_file and Path(cache_file).is_file():
        try:
            data = torch.load(cache_file, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated or foreign file: recompute and overwrite
            log.warning("ignoring unreadable log-prob cache %s (%s)", cache_file, err)
        else:
            if data.get("key") == key:
                log.info("log-probs of %s from cache %s", manifest, cache_file)
                return {**data, "cached": True}
            log.info("cache %s was made from another checkpoint/manifest; recomputing", cache_file)
    data = compute_log_probs(module, manifest, device, batch_seconds, progress)
    if cache_file:
        Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{cache_file}.tmp{os.getpid()}"
        torch.save({**data, "key": key}, tmp)
        os.replace(tmp, cache_file)  # atomic: a parallel sweep job never reads half a file
    return {**data, "cached": False}


def decode_log_probs(decoder: Decoder, log_probs: list[torch.Tensor], batch_size: int = 32) -> list[str]:
    """Decode per-utterance (T, C) log-probs in padded batches of ``batch_size``."""
    hyps: list[str] = []
    for start in range(0, len(log_probs), batch_size):
        chunk = log_probs[start : start + batch_size]
        lengths = torch.tensor([lp.shape[0] for lp in chunk])
        padded = torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True)  # (B, T, C)
        hyps.extend(decoder.decode(padded, lengths))
    return hyps


@torch.inference_mode()
def transcribe_manifest(
    module: ASRModule,
    manifest: str,
    device: torch.device,
    batch_seconds: float = 200.0,
    progress: bool = True,
    decoder: Decoder | None = None,
) -> tuple[list[str], list[str], list[str], float]:
    """Decode every utterance of a manifest (greedy unless ``decoder`` is given).

    Returns:
        (ids, refs, hyps, seconds of audio), in manifest order; refs are normalised manifest texts.
    """
    data = compute_log_probs(module, manifest, device, batch_seconds, progress)
    hyps = decode_log_probs(decoder or module.decoder, data["log_probs"])
    return data["ids"], data["refs"], hyps, data["audio_seconds"]


def evaluate(
    checkpoint: str,
    manifests: dict[str, str] | None = None,
    out_dir: str | None = None,
    device: str = "auto",
    batch_seconds: float = 200.0,
    progress: bool = True,
    decoder: Callable[[Tokenizer], Decoder] | None = None,
    decoder_settings: dict | None = None,
    cache_dir: str | None = None,
) -> dict[str, dict]:
    """Decode each manifest with ``checkpoint`` and write ``<out_dir>/<name>/{hyps.txt,refs.txt,report.json}``,
    the error analysis ``errors.{md,json}`` (:mod:`asr.analysis`) and ``alignment.png`` (:mod:`asr.alignment`).

    Args:
        checkpoint: a ``.ckpt`` written by ``asr.train``.
        manifests: ``{name: path}``; empty/None = the eval manifests stored in the checkpoint.
        out_dir: default ``<run dir>/decode`` (the checkpoint's ``checkpoints/`` folder's parent).
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_seconds: padded audio seconds per batch.
        decoder: builds the decoder from the checkpoint's tokenizer (``None``: greedy).
        decoder_settings: plain description of the decoder, copied into each report.
        cache_dir: keep the model's log-probs in ``<cache_dir>/<name>.pt`` and reuse them while the
            checkpoint and manifest are unchanged (``None``: no cache).

    Returns:
        ``{name: report}`` (see :func:`asr.metrics.error_report`, plus timings, ``rtf`` and paths).
    """
    dev = resolve_device(device)
    module = ASRModule.load_for_inference(checkpoint, map_location=dev).to(dev)
    dec = decoder(module.tokenizer) if decoder is not None else module.decoder
    manifests = dict(manifests or module.eval_manifests)
    if not manifests:
        raise ValueError(
            f"no manifests to evaluate: {checkpoint} stores none; pass manifests='{{test: path/to/test.jsonl}}'"
        )
    out = Path(out_dir) if out_dir else run_dir_of(checkpoint) / "decode"
    sample_rate = module.features.config["sample_rate"]
    frame_seconds = 1.0 / float(module.output_frames(torch.tensor([sample_rate]))[0])  # for alignment plots
    reports = {}
    for name, manifest in manifests.items():
        if not Path(manifest).is_file():
            raise FileNotFoundError(
                f"manifest {name}={manifest} does not exist; "
                f"pass manifests='{{{name}: path/to/{name}.jsonl}}'"
            )
        cache_file = str(Path(cache_dir) / f"{name}.pt") if cache_dir else None
        data = cached_log_probs(module, checkpoint, manifest, dev, cache_file, batch_seconds, progress)
        start = time.perf_counter()
        hyps = decode_log_probs(dec, data["log_probs"])
        search_seconds = time.perf_counter() - start
        ids, refs, seconds = data["ids"], data["refs"], data["audio_seconds"]
        report = error_report(refs, hyps)
        forward = data["forward_seconds"]
        total = forward + search_seconds
        report.update(
            split=name, manifest=str(manifest), checkpoint=str(checkpoint), audio_seconds=round(seconds, 2),
            decode_seconds=round(total, 2), rtf=round(total / max(seconds, 1e-9), 5),
            forward_seconds=round(forward, 3), search_seconds=round(search_seconds, 3),
            search_rtf=round(search_seconds / max(seconds, 1e-9), 5), cached_log_probs=data["cached"],
            device=str(dev), decoder=decoder_settings or {"name": type(dec).__name__},
        )
        split_dir = out / name
        split_dir.mkdir(parents=True, exist_ok=True)
        # sclite "trn" style: text (id)
        (split_dir / "hyps.txt").write_text("".join(f"{h} ({i})\n" for i, h in zip(ids, hyps, strict=True)))
        (split_dir / "refs.txt").write_text("".join(f"{r} ({i})\n" for i, r in zip(ids, refs, strict=True)))
        (split_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        write_error_analysis(split_dir, ids, refs, hyps)  # errors.md/json: worst utterances, top confusions
        try:
            save_sample_alignment(split_dir, ids, refs, data["log_probs"], module.tokenizer, frame_seconds)
        except ValueError as err:  # a picture is not worth failing an evaluation for
            log.warning("no alignment.png for %s: %s", name, err)
        reports[name] = report
    return reports


def subset_manifests(manifest_dir: str | os.PathLike, subsets: list[str]) -> dict[str, str]:
    """``{subset: <manifest_dir>/<subset>.jsonl}``: the ``data=librispeech`` choice of ``asr.evaluate``."""
    return {s: str(Path(manifest_dir) / f"{s}.jsonl") for s in subsets}


def format_table(reports: dict[str, dict]) -> str:
    """One WER table for all splits."""
    head = f"{'split':<12} {'utts':>5} {'words':>6} {'WER %':>7} {'CER %':>7} {'sub':>5} {'del':>5} {'ins':>5}"
    rows = [head, "-" * len(head)]
    for name, r in reports.items():
        rows.append(
            f"{name:<12} {r['utterances']:>5} {r['ref_words']:>6} {100 * r['wer']:>7.2f} {100 * r['cer']:>7.2f} "
            f"{r['substitutions']:>5} {r['deletions']:>5} {r['insertions']:>5}"
        )
    return "\n".join(rows)


def sweep_summary(sweep_dir: str | os.PathLike) -> str:
    """WER per split for every point of a decoder sweep (``<sweep_dir>/<job>/<split>/report.json``).

    Columns are the decoder settings that differ between points (e.g. ``lm_weight``, ``word_score``), then
    one WER column per split; rows are sorted by the settings.
    """
    points: dict[str, dict[str, dict]] = {}
    for path in sorted(Path(sweep_dir).glob("*/*/report.json")):
        report = json.loads(path.read_text())
        points.setdefault(str(path.parent.parent), {})[report["split"]] = report
    if not points:
        return f"no report.json under {sweep_dir}"
    settings = {job: next(iter(r.values()))["decoder"] for job, r in points.items()}
    keys = sorted({k for s in settings.values() for k in s})
    varying = [k for k in keys if len({json.dumps(s.get(k)) for s in settings.values()}) > 1] or ["name"]
    splits = sorted({split for r in points.values() for split in r})
    head = " | ".join([*varying, *(f"{s} WER %" for s in splits), "job"])
    rows = [head, " | ".join("---" for _ in [*varying, *splits, "job"])]

    def order(job: str) -> list[tuple]:  # numbers numerically, anything else by its text
        values = [settings[job].get(k) for k in varying]
        return [(0, v, "") if isinstance(v, int | float) else (1, 0, json.dumps(v)) for v in values]

    for job in sorted(points, key=order):
        wers = [f"{100 * points[job][s]['wer']:.2f}" if s in points[job] else "-" for s in splits]
        rows.append(" | ".join([*(str(settings[job].get(k)) for k in varying), *wers, Path(job).name]))
    return "\n".join(rows)


class SweepSummary(Callback):
    """Hydra callback: after a multirun, write and print ``<sweep dir>/summary.md``."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        table = sweep_summary(sweep_dir)
        (sweep_dir / "summary.md").write_text(table + "\n")
        print(f"\n{table}\nsummary: {sweep_dir / 'summary.md'}")


OmegaConf.register_new_resolver("run_dir_of", lambda ckpt: str(run_dir_of(ckpt)), replace=True)


def _decoder_settings(cfg: DictConfig) -> dict:
    """The decoder group as plain data for reports: its choice name and its settings."""
    name = HydraConfig.get().runtime.choices.get("decoder", "custom")
    plain = OmegaConf.to_container(cfg.decoder, resolve=True)
    settings = {k: v for k, v in plain.items() if not k.startswith("_")}
    return {"name": name, **settings}


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> dict[str, dict]:
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:  # one folder per sweep point
        out_dir = hydra_cfg.runtime.output_dir
    elif cfg.out_dir:
        out_dir = cfg.out_dir
    else:
        choice = hydra_cfg.runtime.choices.get("decoder", "greedy")
        out_dir = str(run_dir_of(cfg.checkpoint) / "decode" / ("" if choice == "greedy" else choice))
    try:
        manifests = OmegaConf.to_container(cfg.manifests) if cfg.manifests else {}
        if cfg.get("data"):
            manifests.update(subset_manifests(cfg.data.manifest_dir, list(cfg.data.subsets)))
        reports = evaluate(
            checkpoint=cfg.checkpoint,
            manifests=manifests or None,
            out_dir=out_dir,
            device=cfg.device,
            batch_seconds=cfg.batch_seconds,
            decoder=instantiate(cfg.decoder),
            decoder_settings=_decoder_settings(cfg),
            cache_dir=cfg.cache_dir,
        )
    except (FileNotFoundError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(format_table(reports))
    print(f"per-split hyps.txt, refs.txt, report.json under {Path(out_dir)}")
    return reports


if __name__ == "__main__":
    main()
