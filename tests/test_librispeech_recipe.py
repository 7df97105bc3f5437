"""The LibriSpeech recipes run for a few CPU steps on the 7 genuine sample utterances (shared
data: skipped without them), the evaluation table over LibriSpeech subsets
(testsets=librispeech), and run.sh's stages. That every recipe composes and builds without data:
test_recipes.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jiwer
import pytest

from asr.train import train
from tests.conftest import LIBRI, ROOT, compose_train, needs_libri

pytestmark = needs_libri


def sample_overrides(tmp: Path) -> list[str]:
    """A LibriSpeech recipe pointed at the samples (an existing copy: nothing is downloaded)."""
    return [
        f"data.root={LIBRI}", "prepare.subsets=[dev-clean,test-clean]",
        "prepare.train_subsets=[dev-clean,test-clean]",
        "prepare.workers=1", f"paths.data_dir={tmp / 'data'}", f"paths.exp_dir={tmp / 'exp'}",
        "~eval_manifests.dev-other", "~eval_manifests.test-other",
    ]


def cpu_overrides(out: Path) -> list[str]:
    return [
        f"paths.output_dir={out}", "trainer.accelerator=cpu", "trainer.devices=1",
        "trainer.precision=32-true", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1", "++trainer.val_check_interval=1.0",
        "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false", "data.num_workers=0", "data.max_batch_seconds=8",
    ]


def _train_on_samples(recipe: str, tmp_path: Path, extra: list[str] = ()) -> dict:
    overrides = [*sample_overrides(tmp_path), *cpu_overrides(tmp_path / "run"),
                 "+prepare.progress=false", *extra]
    return train(compose_train([f"recipe={recipe}", *overrides]))


@pytest.mark.slow  # keeps the default suite under 5 minutes on 2 cores; CI runs it (make test-slow)
def test_100h_bpe_trains_on_samples_and_evaluate_prints_librispeech_table(tmp_path):
    result = _train_on_samples("librispeech-100h", tmp_path,
                               ["tokenizer=bpe", "tokenizer.vocab_size=60"])
    ckpt = Path(result["best_checkpoint"])
    assert ckpt.is_file() and set(result["reports"]) == {"dev-clean", "test-clean"}
    check = json.loads((tmp_path / "run" / "data_check.json").read_text())
    assert check["train"]["utterances"] == 7 and check["val"]["utterances"] == 2
    assert json.loads((tmp_path / "run" / "tokenizer.json").read_text())["type"] == "sentencepiece"

    out = tmp_path / "ev"
    proc = subprocess.run(
        [sys.executable, "-m", "asr.evaluate", f"checkpoint={ckpt}", "testsets=librispeech",
         "~manifests.dev-other", "~manifests.test-other", f"out_dir={out}", "device=cpu"],
        # testsets=librispeech names the manifests the recipe's prepare stage writes,
        # data/librispeech/<subset>.jsonl relative to where the command runs: here
        # paths.data_dir=<tmp_path>/data
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = re.compile(r"^(test-clean|dev-clean)\s+(\d+)\s+(\d+)\s+([\d.]+)", re.M)
    rows = {m[1]: m for m in row.finditer(proc.stdout)}
    assert set(rows) == {"test-clean", "dev-clean"}
    for subset, n_utts in (("test-clean", 5), ("dev-clean", 2)):
        hyps = [line.rsplit(" (", 1)[0]
                for line in (out / subset / "hyps.txt").read_text().splitlines()]
        refs = [line.rsplit(" (", 1)[0]
                for line in (out / subset / "refs.txt").read_text().splitlines()]
        assert len(refs) == n_utts and int(rows[subset][2]) == n_utts
        assert f"{100 * jiwer.wer(refs, hyps):.2f}" == rows[subset][4]
        report = json.loads((out / subset / "report.json").read_text())
        assert report["wer"] == pytest.approx(jiwer.wer(refs, hyps))


@pytest.mark.slow
def test_960h_model_trains_a_few_steps_on_samples(tmp_path):
    result = _train_on_samples("librispeech-960h", tmp_path)
    assert Path(result["best_checkpoint"]).is_file()


@pytest.mark.slow  # three CLI starts; the stages themselves run in-process in test_an4_download.py
def test_run_sh_prepares_and_checks_an_existing_copy(tmp_path):
    proc = subprocess.run(
        ["bash", str(ROOT / "recipes" / "librispeech" / "run.sh"), "--stage", "0",
         "--stop-stage", "2", "--", *sample_overrides(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for n, name in enumerate(["download", "manifests", "check"]):
        stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
        assert re.search(rf"^{stamp} \[librispeech-100h\] stage {n}: {name}", proc.stdout, re.M)
    lib = tmp_path / "data" / "librispeech"
    assert sorted(p.name for p in lib.glob("*.jsonl") if "rejected" not in p.name) == [
        "dev-clean.jsonl", "test-clean.jsonl", "train-100h.jsonl"]
    assert json.loads((lib / "data_check.json").read_text())["test-clean"]["utterances"] == 5
