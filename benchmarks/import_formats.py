"""Benchmark (not a test): ``python -m asr.import_data`` on one corpus in every format, and reading
all of its audio back through the imported manifest against our own manifest.

    python benchmarks/import_formats.py [--manifest data/an4/train.jsonl] [--out exp/import_formats]

The corpus is rebuilt in each format under ``--out`` (tests/format_sources.py: Kaldi whole files,
segments of one long WAV per speaker, sox/flac pipes; Lhotse cuts; Hugging Face save_to_disk,
Parquet with embedded bytes, audiofolder), then for each: the import's seconds, and the seconds to
load every utterance (``asr.data.reading.load_utterance``, in manifest order and shuffled), as
audio seconds per second. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asr.data.manifest import read_manifest  # noqa: E402
from asr.data.reading import load_utterance  # noqa: E402
from asr.import_data import import_data  # noqa: E402
from tests import format_sources as fs  # noqa: E402
from tests.conftest import compose_config  # noqa: E402


def build(utts, work: Path) -> dict[str, list[str]]:
    """``{format: import_data overrides}`` of ``utts`` built under ``work``."""
    fs.lhotse_manifests(utts, cuts=work / "cuts.jsonl.gz")
    formats = {
        "kaldi files": [f"source=kaldi:{fs.kaldi_dir(utts, work / 'kaldi_files')}"],
        "kaldi segments": [f"source=kaldi:{fs.kaldi_dir(utts, work / 'kaldi_seg', 'segments')}"],
        "lhotse cuts": [f"source=lhotse:{work / 'cuts.jsonl.gz'}"],
        "hf save_to_disk": [f"source=hf:{fs.hf_saved({'train': utts}, work / 'hf', work / 's')}",
                            "hf.split=train"],
        "hf parquet": [f"source=hf:{fs.hf_parquet(utts, work / 'pq' / 'x.parquet', work / 'p')}"],
        "hf audiofolder": [f"source=hf:{fs.hf_audiofolder(utts, work / 'audiofolder')}"],
    }
    if shutil.which("sox") and shutil.which("flac"):
        formats["kaldi pipes"] = [
            f"source=kaldi:{fs.kaldi_dir(utts, work / 'kaldi_pipes', 'pipes')}",
            "allow_pipes=true"]
    return formats


def read_all(utts, shuffled: bool) -> float:
    """Audio seconds loaded per second of wall time."""
    order = list(utts)
    if shuffled:
        random.Random(0).shuffle(order)
    start = time.perf_counter()
    seconds = sum(load_utterance(u, 16000).numel() for u in order) / 16000
    return seconds / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", default="data/an4/train.jsonl")
    parser.add_argument("--out", default="exp/import_formats")
    args = parser.parse_args()
    utts = read_manifest(args.manifest)
    work = Path(args.out)
    shutil.rmtree(work, ignore_errors=True)
    formats = build(utts, work / "src")
    hours = sum(u.duration for u in utts) / 3600
    print(f"{args.manifest}: {len(utts)} utterances, {hours:.2f} h\n")
    print("| format | import s | utterances/s | read audio-s/s, in order | shuffled |")
    print("|---|---:|---:|---:|---:|")
    print(f"| our manifest | | | {read_all(utts, False):.0f} | {read_all(utts, True):.0f} |")
    for name, overrides in formats.items():
        out = work / "imported" / f"{name.replace(' ', '_')}.jsonl"
        start = time.perf_counter()
        summary = import_data(compose_config("import_data", [*overrides, f"out={out}"]))
        took = time.perf_counter() - start
        assert summary["utterances"] == len(utts), summary
        got = read_manifest(out)
        print(f"| {name} | {took:.1f} | {len(utts) / took:.0f} | {read_all(got, False):.0f} | "
              f"{read_all(got, True):.0f} |", flush=True)


if __name__ == "__main__":
    main()
