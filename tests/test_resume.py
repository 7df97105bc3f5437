"""Exact mid-epoch resume, as a user runs it: ``python -m asr.train ... checkpoint.every_n_steps=N
hydra.run.dir=D``, SIGKILLed after a step checkpoint, then the same command with ``resume=auto``.
The resumed run must train on the same utterances in the same order and end with weights
``torch.equal`` to an uninterrupted run's: one process, and two DDP processes (gloo on CPU), from
the manifest and from tar shards. Speed perturbation, SpecAugment, dropout and a loader worker are
all on. A crash at an epoch's end (during its validation, or just after its checkpoints) keeps
the epoch in best.ckpt's average and every row of metrics.csv."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, TINY_FIXTURE
from tests.trace import read_trace

DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]


def _command(tiny_dir: Path, run: Path, extra: list[str]) -> list[str]:
    # forkserver: Python 3.11.7 can deadlock forking a loader worker from a DDP rank's threads
    # (CPython issue 112275); resuming does not depend on how workers start
    return [sys.executable, "-m", "asr.train", "recipe=tiny", f"paths.data_dir={tiny_dir.parent}",
            f"prepare.download_dir={TINY_FIXTURE}", "+prepare.progress=false",
            "trainer.max_epochs=2", "checkpoint.every_n_steps=3", f"hydra.run.dir={run}",
            "data.num_workers=1", "data.worker_start=forkserver",
            "data.speed_perturb=[0.9,1.0,1.1]", "eval_manifests=null",
            # noise (babble too), simulated rooms and non-speech reads, drawn from each read's seed
            "audio_augment=robust", "audio_augment.reverb.rooms=3",
            "audio_augment.reverb.rt60=[0.2,0.4]",
            "audio_augment.nonspeech.prob=0.2",
            "trainer.enable_progress_bar=false", "+callbacks.trace._target_=tests.trace.BatchTrace",
            f"+callbacks.trace.path={run}.trace", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
            "PYTHONFAULTHANDLER": "1"}


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _kill_after_first_step_checkpoint(cmd: list[str], run: Path, world: int) -> tuple[dict, int]:
    """Start ``cmd``; once its first step checkpoint is written and one more step trained, every
    rank parks at the start of its next batch (:class:`tests.faults_util.ParkAfterCheckpoint`)
    and the process group is SIGKILLed there: mid-epoch, on that event, on a fast or a slow
    machine alike. Returns last.ckpt and the global step the ranks were killed at."""
    marker = run.parent / f"{run.name}.parked"
    park = ["+callbacks.park._target_=tests.faults_util.ParkAfterCheckpoint",
            f"+callbacks.park.marker={marker}"]
    stderr = run.parent / f"{run.name}.stderr"
    with stderr.open("w") as err:  # a file, not a pipe: a full pipe would stall the run
        proc = subprocess.Popen([*cmd, *park], cwd=ROOT, env=_env(), start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=err)
    parked = [Path(f"{marker}.rank{rank}") for rank in range(world)]
    try:
        deadline = time.monotonic() + 300  # a hang guard, not a timing
        while not all(p.exists() for p in parked):
            assert proc.poll() is None, f"exited {proc.returncode}: {stderr.read_text()[-4000:]}"
            if time.monotonic() > deadline:
                # each process's Python stacks (PYTHONFAULTHANDLER), then fail
                os.killpg(proc.pid, signal.SIGABRT)
                proc.wait()
                traces = {t.name: len(t.read_text().splitlines())
                          for t in run.parent.glob("*.jsonl")}
                pytest.fail(f"not all ranks parked after a checkpoint within 300 s: parked "
                            f"{[p.name for p in parked if p.exists()]}, checkpoints "
                            f"{sorted(q.name for q in run.glob('checkpoints/*'))}, "
                            f"trace lines {traces}; stderr: {stderr.read_text()[-12000:]}")
            time.sleep(0.02)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group may be gone already
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    steps = {int(p.read_text()) for p in parked if p.read_text().strip()}
    assert len(steps) == 1, steps  # every rank at the same step
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True), steps.pop()


def _shards(tiny_dir: Path, out: Path) -> list[str]:
    """Train from tar shards of the fixture (7 shards, buffers of 8 utterances, ~2 per batch), not
    its manifest."""
    from asr.data.shards import write_shards

    write_shards(tiny_dir / "train.jsonl", out, shard_seconds=3.0)
    return [f"data.train_shards={out}", "data.shuffle_buffer=8", "data.max_batch_seconds=2"]


@pytest.mark.parametrize(("world", "shards"), [
    pytest.param(1, False, id="one-process"),
    pytest.param(2, False, id="ddp-2-processes"),
    # slow (CI runs them with make test-slow): together 2 minutes on 2 cores
    pytest.param(1, True, id="shards-one-process", marks=pytest.mark.slow),
    pytest.param(2, True, id="shards-ddp-2-processes", marks=pytest.mark.slow),
])
def test_sigkill_mid_epoch_then_resume_auto_is_exact(tiny_dir, tmp_path, world, shards):
    extra = (DDP if world == 2 else []) + (_shards(tiny_dir, tmp_path / "shards") if shards else [])
    clean, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    _run(_command(tiny_dir, clean, extra))

    ckpt, killed_at = _kill_after_first_step_checkpoint(_command(tiny_dir, killed, extra), killed,
                                                        world)
    steps_per_epoch = len(read_trace(f"{clean}.trace")) // 2
    assert killed_at == ckpt["global_step"] + 1  # a step trained after the checkpoint was lost
    assert read_trace(f"{killed}.trace")[-1][0] >= ckpt["global_step"]  # (and is traced)
    assert ckpt["ASRDataModule"] == {"epoch": 0, "batches_done": ckpt["global_step"],
                                     "world_size": world, "num_workers": 1}
    assert 0 < ckpt["global_step"] < killed_at < steps_per_epoch  # in the middle of the first epoch
    assert len(ckpt["rng_states"]["ranks"]) == world  # each rank's random generators
    _run([*_command(tiny_dir, killed, extra), "resume=auto"])

    for rank in range(world):  # the same utterances at every step, nothing replayed or skipped
        assert read_trace(f"{killed}.trace", rank) == read_trace(f"{clean}.trace", rank)
    a = torch.load(clean / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 2 * steps_per_epoch
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_every_n_minutes_saves_mid_epoch_on_rank_zero_clock(tiny_dir, tmp_path):
    """``checkpoint.every_n_minutes``: the clock is read every StepCheckpoint.CLOCK_EVERY_N_STEPS
    steps (a broadcast, not every step); once due, last.ckpt is written there, mid-epoch."""
    import pytorch_lightning as L

    from asr.train import train
    from asr.training.checkpointing import StepCheckpoint
    from tests.conftest import tiny_train_cfg

    class Saves(L.Callback):
        def __init__(self) -> None:
            self.steps: list[tuple[int, int]] = []

        def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
            self.steps.append((trainer.global_step, checkpoint["ASRDataModule"]["batches_done"]))

    saves = Saves()
    every = StepCheckpoint.CLOCK_EVERY_N_STEPS
    train(tiny_train_cfg(tiny_dir, tmp_path,
                         ["checkpoint.every_n_minutes=1e-6", "data.max_batch_seconds=1",
                          f"trainer.limit_train_batches={every + 3}", "eval_manifests=null"]),
          extra_callbacks=[saves])
    assert (every, every) in saves.steps  # mid-epoch: `every` batches of the epoch trained
    # no other step: the clock is read every 20
    assert all(step == every or done == 0 for step, done in saves.steps)


def _metrics(run: Path) -> dict[tuple[str, str], str]:
    """``{(step, column): value}`` of the run's metrics.csv, for the columns a resume must repeat
    (not the timings)."""
    import csv

    with (run / "logs" / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {(r["step"], k): v for r in rows for k, v in r.items()
            if v and k in ("epoch", "train/loss", "train/ctc_last", "val/wer", "val/loss", "lr")}


def test_sigkill_at_epoch_ends_keeps_best_average_and_metrics(tiny_dir, tmp_path):
    """Killed twice: at the start of epoch 1 (epoch 0's checkpoints written), then, resumed, in
    epoch 1's validation (after its last step). Resumed again, the run ends with the uninterrupted
    run's best.ckpt (the mean of its 2 best epochs), the same kept epochs and every metrics row."""
    extra = ["trainer.max_epochs=3", "callbacks=[default,average_best]",
             "callbacks.average_best.k=2"]
    clean, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    _run(_command(tiny_dir, clean, extra))
    for event in ("epoch_start", "validation"):
        kill = ["+callbacks.kill._target_=tests.faults_util.KillAt",
                f"+callbacks.kill.event={event}", "+callbacks.kill.epoch=1"]
        stderr = tmp_path / f"{event}.stderr"
        with stderr.open("w") as err:  # a file: the loader worker would hold a pipe open
            proc = subprocess.Popen([*_command(tiny_dir, killed, extra), *kill, "resume=auto"],
                                    cwd=ROOT, env=_env(), start_new_session=True,
                                    stdout=subprocess.DEVNULL, stderr=err)
        try:
            code = proc.wait(timeout=600)  # a hang guard, not a timing
        finally:
            with contextlib.suppress(ProcessLookupError):  # its loader worker and forkserver
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert code == -signal.SIGKILL, stderr.read_text()[-4000:]
    assert (killed / "logs" / "metrics.before_resume.csv").is_file()  # the rows known so far
    _run([*_command(tiny_dir, killed, extra), "resume=auto"])

    tops = [sorted(p.name for p in (run / "checkpoints" / "top").iterdir())
            for run in (clean, killed)]
    assert tops[0] == tops[1] and len(tops[0]) == 2
    a = torch.load(clean / "checkpoints" / "best.ckpt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "best.ckpt", weights_only=True)
    assert len(a["averaged_from"]) == len(b["averaged_from"]) == 2  # the mean of the 2 best
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert _metrics(killed) == _metrics(clean)
    assert not (killed / "logs" / "metrics.before_resume.csv").exists()
