"""The whole loop on a bare clone, by its command lines: ``python -m asr.train recipe=tiny``
prepares the committed AN4 fixture and trains, ``python -m asr.evaluate`` scores the checkpoint,
``python -m asr.transcribe`` transcribes real audio and reports a file it cannot read. Needs
nothing outside the repository."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.data.manifest import read_manifest
from tests.conftest import ROOT, TINY_FIXTURE

ROW = re.compile(r"^(dev|test)\s+\d+\s+\d+\s+[\d.]+\s+[\d.]+\s+\d+\s+\d+\s+\d+$", re.M)


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """``python -m asr.train recipe=tiny`` as the recipe stands (40 epochs), from an empty data
    folder."""
    tmp = tmp_path_factory.mktemp("e2e")
    proc = _run("asr.train", "recipe=tiny", f"paths.data_dir={tmp / 'data'}",
                f"prepare.download_dir={TINY_FIXTURE}", f"paths.exp_dir={tmp / 'exp'}",
                "trainer.enable_progress_bar=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp / "exp" / "tiny").iterdir())
    assert len(runs) == 1
    return tmp / "data" / "an4_tiny", runs[0], proc


def test_train_prepares_the_fixture_trains_and_prints_the_wer_table(tiny_run):
    data, run, proc = tiny_run
    assert [len(read_manifest(data / f"{s}.jsonl")) for s in ("train", "dev", "test")] == [25, 5, 4]
    assert {m[1] for m in ROW.finditer(proc.stdout)} == {"dev", "test"} and "WER %" in proc.stdout
    assert "after 40 epochs" in proc.stdout and f"report: {run / 'report.md'}" in proc.stdout
    for path in ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "config.yaml", "run.json",
                 "data_check.json", "report.md", "plots/loss.png", "decode/dev/hyps.txt",
                 "decode/test/report.json"):
        assert (run / path).is_file(), path
    with (run / "logs" / "metrics.csv").open() as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r["train/loss"]]
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.5 * first, (first, last)  # the training loss falls
    dev = json.loads((run / "decode" / "dev" / "report.json").read_text())
    assert dev["utterances"] == 5 and dev["wer"] < 1.0  # some words right: it learned something


def test_evaluate_command_reproduces_the_training_table(tiny_run, tmp_path):
    _, run, train_proc = tiny_run
    proc = _run("asr.evaluate", f"checkpoint={run / 'checkpoints' / 'best.ckpt'}",
                f"out_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ROW.findall(proc.stdout) and [m[0] for m in ROW.finditer(proc.stdout)] == [
        m[0] for m in ROW.finditer(train_proc.stdout)]
    for split in ("dev", "test"):
        for name in ("hyps.txt", "refs.txt", "report.json", "errors.md", "alignment.png"):
            assert (tmp_path / split / name).is_file(), (split, name)
        assert ((tmp_path / split / "hyps.txt").read_text()
                == (run / "decode" / split / "hyps.txt").read_text())


def test_transcribe_command_on_real_audio_and_a_broken_file(tiny_run, tmp_path):
    data, run, _ = tiny_run
    test = read_manifest(data / "test.jsonl")
    wav, sr = sf.read(test[0].audio_filepath, dtype="float32")
    stereo_8k = tmp_path / "stereo_8k.flac"  # another rate, another container and two channels
    sf.write(stereo_8k, np.stack([wav[::2], wav[::2]], axis=1), sr // 2)
    corrupt, missing = tmp_path / "corrupt.wav", tmp_path / "missing.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    files = [*(u.audio_filepath for u in test), str(stereo_8k), str(corrupt), str(missing)]
    out = tmp_path / "out" / "hyps.jsonl"
    proc = _run("asr.transcribe", f"checkpoint={run / 'checkpoints' / 'best.ckpt'}", "format=json",
                "device=cpu", f"output={out}", f"audio=[{','.join(files)}]")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stdout == ""  # everything went to the output file
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["audio_filepath"] for r in lines] == files
    assert [("text" in r) for r in lines] == [True] * 5 + [False, False]
    assert lines[4]["duration"] == pytest.approx(len(wav[::2]) / (sr // 2), abs=1e-3)
    # the same model and greedy decoding as the evaluation: the same words for the test utterances
    hyps = {uid: hyp for hyp, uid in re.findall(
        r"^(.*) \((\S+)\)$", (run / "decode" / "test" / "hyps.txt").read_text(), re.M)}
    assert [r["text"] for r in lines[:4]] == [hyps[u.id] for u in test] and any(hyps.values())
    assert f"error: {corrupt}:" in proc.stderr and f"error: {missing}:" in proc.stderr
    assert "2 of 7 files failed" in proc.stderr and "Traceback" not in proc.stderr
