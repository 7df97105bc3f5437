"""Score a checkpoint on manifests: per-split hyps.txt, refs.txt, report.json and one printed WER table.

    python -m asr.evaluate checkpoint=exp/an4/<run>/checkpoints/best.ckpt
    python -m asr.evaluate checkpoint=... manifests='{test: data/an4/test.jsonl}'
    python -m asr.evaluate checkpoint=... data=librispeech    # dev-clean dev-other test-clean test-other
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm import tqdm

from asr.data import AudioDataset, BucketBatchSampler, collate, read_manifest
from asr.metrics import error_report
from asr.module import ASRModule
from asr.text import normalize_text

log = logging.getLogger(__name__)


def run_dir_of(checkpoint: str | os.PathLike) -> Path:
    """``exp/<recipe>/<run>/checkpoints/x.ckpt`` -> ``exp/<recipe>/<run>``."""
    return Path(checkpoint).resolve().parent.parent


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.inference_mode()
def transcribe_manifest(
    module: ASRModule, manifest: str, device: torch.device, batch_seconds: float = 200.0, progress: bool = True
) -> tuple[list[str], list[str], list[str], float]:
    """Greedy-decode every utterance of a manifest.

    Returns:
        (ids, refs, hyps, seconds of audio), in manifest order; refs are normalised manifest texts.
    """
    utts = read_manifest(manifest)
    ds = AudioDataset(utts, tokenizer=None, sample_rate=module.features.config["sample_rate"])
    sampler = BucketBatchSampler([u.duration for u in utts], batch_seconds, num_buckets=1, shuffle=False,
                                 drop_last=False, num_replicas=1, rank=0)
    hyps: dict[str, str] = {}
    for batch in tqdm(DataLoader(ds, batch_sampler=sampler, collate_fn=collate), desc=Path(manifest).name,
                      unit="batch", disable=not progress, leave=False):
        log_probs, lengths = module(batch.audio.to(device), batch.audio_lengths.to(device))
        hyps.update(zip(batch.ids, module.decoder.decode(log_probs, lengths), strict=True))
    ids = [u.id for u in utts]
    return ids, [normalize_text(u.text) for u in utts], [hyps[i] for i in ids], sum(u.duration for u in utts)


def evaluate(
    checkpoint: str,
    manifests: dict[str, str] | None = None,
    out_dir: str | None = None,
    device: str = "auto",
    batch_seconds: float = 200.0,
    progress: bool = True,
) -> dict[str, dict]:
    """Decode each manifest with ``checkpoint`` and write ``<out_dir>/<name>/{hyps.txt,refs.txt,report.json}``.

    Args:
        checkpoint: a ``.ckpt`` written by ``asr.train``.
        manifests: ``{name: path}``; empty/None = the eval manifests stored in the checkpoint.
        out_dir: default ``<run dir>/decode`` (the checkpoint's ``checkpoints/`` folder's parent).
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_seconds: padded audio seconds per batch.

    Returns:
        ``{name: report}`` (see :func:`asr.metrics.error_report`, plus ``rtf`` and paths).
    """
    dev = resolve_device(device)
    module = ASRModule.load_for_inference(checkpoint, map_location=dev).to(dev)
    manifests = dict(manifests or module.eval_manifests)
    if not manifests:
        raise ValueError(
            f"no manifests to evaluate: {checkpoint} stores none; pass manifests='{{test: path/to/test.jsonl}}'"
        )
    out = Path(out_dir) if out_dir else run_dir_of(checkpoint) / "decode"
    reports = {}
    for name, manifest in manifests.items():
        start = time.perf_counter()
        ids, refs, hyps, seconds = transcribe_manifest(module, manifest, dev, batch_seconds, progress)
        elapsed = time.perf_counter() - start
        report = error_report(refs, hyps)
        report.update(
            split=name, manifest=str(manifest), checkpoint=str(checkpoint), audio_seconds=round(seconds, 2),
            decode_seconds=round(elapsed, 2), rtf=round(elapsed / max(seconds, 1e-9), 5), device=str(dev),
        )
        split_dir = out / name
        split_dir.mkdir(parents=True, exist_ok=True)
        # sclite "trn" style: text (id)
        (split_dir / "hyps.txt").write_text("".join(f"{h} ({i})\n" for i, h in zip(ids, hyps, strict=True)))
        (split_dir / "refs.txt").write_text("".join(f"{r} ({i})\n" for i, r in zip(ids, refs, strict=True)))
        (split_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
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


OmegaConf.register_new_resolver("run_dir_of", lambda ckpt: str(run_dir_of(ckpt)), replace=True)


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        manifests = OmegaConf.to_container(cfg.manifests) if cfg.manifests else {}
        if cfg.get("data"):
            manifests.update(subset_manifests(cfg.data.manifest_dir, list(cfg.data.subsets)))
        reports = evaluate(
            checkpoint=cfg.checkpoint,
            manifests=manifests or None,
            out_dir=cfg.out_dir,
            device=cfg.device,
            batch_seconds=cfg.batch_seconds,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(format_table(reports))
    print(f"per-split hyps.txt, refs.txt, report.json under {cfg.out_dir or run_dir_of(cfg.checkpoint) / 'decode'}")


if __name__ == "__main__":
    main()
