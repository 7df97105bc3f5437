"""The same corpus through every format of ``python -m asr.import_data`` (Kaldi files, segments and
pipes; Lhotse cuts and recordings + supervisions; Hugging Face save_to_disk, Parquet and
audiofolder): one checkpoint gives the same log-probs and the same ``hyps.txt`` as through our
manifest, and a short training run reads each format with the data check counting the same
utterances and hours."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from asr import Recognizer
from asr.data.manifest import read_manifest
from asr.import_data import import_data
from asr.inference import compute_log_probs
from asr.report.scoring import evaluate_checkpoint
from asr.train import train
from tests import format_sources as fs
from tests.conftest import compose_config, tiny_train_cfg

SPLITS = ("train", "dev", "test")
pipes = pytest.mark.skipif(not (shutil.which("sox") and shutil.which("flac")),
                           reason="sox and flac (apt install sox flac) run the wav.scp pipes")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def imported(source: str, out: Path, *extra: str) -> Path:
    """``python -m asr.import_data <source=...> out=... [extra]`` in this process; nothing
    rejected."""
    cfg = compose_config("import_data", [source, f"out={out}", *extra])
    summary = import_data(cfg)
    assert summary["rejected"] == 0, (out.parent / f"{out.stem}.rejected.jsonl").read_text()
    return out


def sources(split: str, utts, work: Path) -> dict[str, tuple[str, ...]]:
    """``{name: import_data arguments}`` of ``utts`` in every format (built under ``work``)."""
    w = work / split
    fs.lhotse_manifests(utts, cuts=w / "cuts.jsonl.gz", recordings=w / "recs.jsonl.gz",
                        supervisions=w / "sups.jsonl.gz")
    got = {
        "kaldi_files": (f"source=kaldi:{fs.kaldi_dir(utts, w / 'kaldi_files')}",),
        "kaldi_segments": (f"source=kaldi:{fs.kaldi_dir(utts, w / 'kaldi_seg', 'segments')}",),
        "lhotse_cuts": (f"source=lhotse:{w / 'cuts.jsonl.gz'}",),
        "lhotse_recordings": (f"source=lhotse:{w / 'recs.jsonl.gz'}",
                              f"lhotse.supervisions={w / 'sups.jsonl.gz'}"),
        "hf_saved": (f"source=hf:{fs.hf_saved({split: utts}, w / 'hf', w / 'scratch')}",
                     f"hf.split={split}"),
        "hf_parquet": (f"source=hf:{fs.hf_parquet(utts, w / 'pq' / 'x.parquet', w / 'pqs')}",),
        "hf_audiofolder": (f"source=hf:{fs.hf_audiofolder(utts, w / 'audiofolder')}",),
    }
    if shutil.which("sox") and shutil.which("flac"):
        got["kaldi_pipes"] = (f"source=kaldi:{fs.kaldi_dir(utts, w / 'kaldi_pipes', 'pipes')}",
                              "allow_pipes=true")
    return got


@pytest.fixture(scope="module")
def reference_run(tiny_dir, tmp_path_factory) -> Path:
    """A short real training run on our manifests: its best.ckpt and data_check.json."""
    out = tmp_path_factory.mktemp("ref_run")
    train(tiny_train_cfg(tiny_dir, out))
    return out


def test_one_checkpoint_scores_the_same_through_every_format(tiny_dir, reference_run,
                                                             tmp_path):
    test = read_manifest(tiny_dir / "test.jsonl")
    manifests = {"ours": str(tiny_dir / "test.jsonl")}
    for name, args in sources("test", test, tmp_path / "src").items():
        manifests[name] = str(imported(args[0], tmp_path / "in" / f"{name}.jsonl", *args[1:]))
    assert len(manifests) >= 8
    ckpt = str(reference_run / "checkpoints" / "best.ckpt")
    evaluate_checkpoint(ckpt, manifests, out_dir=str(tmp_path / "decode"), device="cpu",
                        progress=False)
    hyps = {n: (tmp_path / "decode" / n / "hyps.txt").read_text() for n in manifests}
    refs = {n: (tmp_path / "decode" / n / "refs.txt").read_text() for n in manifests}
    for name in manifests:
        assert hyps[name] == hyps["ours"], name  # diff of hyps.txt: empty
        assert refs[name] == refs["ours"], name
    # and below the text: the same log-probs, bit for bit (the audio read is the same samples)
    recognizer = Recognizer.load(ckpt, "cpu")
    ours = compute_log_probs(recognizer, manifests["ours"], progress=False)
    for name, manifest in manifests.items():
        got = compute_log_probs(recognizer, manifest, progress=False)
        assert got["ids"] == ours["ids"], name
        assert all(torch.equal(a, b) for a, b in zip(got["log_probs"], ours["log_probs"],
                                                        strict=True)), name


def _split_counts(run: Path) -> dict[str, tuple[int, float]]:
    check = json.loads((run / "data_check.json").read_text())
    return {k: (v["utterances"], v["hours"]) for k, v in check.items()}


@pytest.mark.parametrize("fmt", ["kaldi_segments", "lhotse_cuts", "hf_saved"])
def test_a_training_run_reads_each_format(fmt, tiny_dir, reference_run, tmp_path):
    paths = {}
    for split in SPLITS:
        args = sources(split, read_manifest(tiny_dir / f"{split}.jsonl"), tmp_path / "src")[fmt]
        paths[split] = imported(args[0], tmp_path / "in" / f"{split}.jsonl", *args[1:])
    out = tmp_path / "run"
    metrics = train(tiny_train_cfg(tiny_dir, out, [
        f"data.train_manifest={paths['train']}", f"data.val_manifest={paths['dev']}",
        f"data.test_manifest={paths['test']}"]))
    assert metrics, "the run returned no metrics"
    assert _split_counts(out) == _split_counts(reference_run)


def test_the_core_imports_none_of_the_optional_libraries():
    """lhotse, datasets (pyarrow), mlflow and wandb are extras: training, evaluation, serving and
    the importers' own modules load without them."""
    import subprocess
    import sys

    code = ("import sys, asr.train, asr.evaluate, asr.import_data, asr.serve.app, "
            "asr.data.formats.kaldi, asr.data.formats.lhotse_cuts, asr.data.formats.huggingface; "
            "print(sorted(m for m in ('lhotse', 'datasets', 'pyarrow', 'mlflow', 'wandb') "
            "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_import_benchmark_runs(tiny_dir, tmp_path):
    """benchmarks/import_formats.py on the fixture's test split: every format's row printed."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    proc = subprocess.run([sys.executable, "benchmarks/import_formats.py", "--manifest",
                           str(tiny_dir / "test.jsonl"), "--out", str(tmp_path / "bench")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_DATASETS_OFFLINE": "1",
                               "HF_HOME": str(tmp_path / "hf_home")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) >= 2 + 7, proc.stdout  # header, our manifest, 6 formats (+ pipes)
