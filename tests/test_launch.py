"""Work global rank 0 does first (preparing the data) while the others wait: real processes with the ranks
torchrun gives them (``RANK``/``WORLD_SIZE``). No rank waits forever: rank 0's error, or its death, reaches the
others as a message."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from tests.conftest import ROOT

SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    from asr.training.launch import rank_zero_first, RankZeroFailed

    def work():
        if {mode!r} == "fail":
            raise ValueError("manifest train.jsonl is missing")
        time.sleep(1.5 if {mode!r} == "ok" else 60)
        return time.time()

    try:
        done = rank_zero_first(work, {dir!r}, "prepare", "prepare the data", heartbeat_s=0.2, stale_s=2.0)
        print("done", done)
    except RankZeroFailed as err:
        print("error:", err)
        sys.exit(3)
    """
)


def _start(tmp_path, rank: int, mode: str) -> subprocess.Popen:
    script = tmp_path / f"rank{rank}.py"
    script.write_text(SCRIPT.format(root=str(ROOT), mode=mode, dir=str(tmp_path / "run")))
    env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2"}
    return subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_other_ranks_run_after_rank_zero_finished(tmp_path):
    r1 = _start(tmp_path, 1, "ok")  # starts first, as a faster node would
    time.sleep(0.5)
    r0 = _start(tmp_path, 0, "ok")
    out0, _ = r0.communicate(timeout=60)
    out1, _ = r1.communicate(timeout=60)
    assert r0.returncode == r1.returncode == 0
    t0, t1 = float(out0.split()[1]), float(out1.split()[1])
    assert t1 >= t0 + 1.4  # rank 1 did its (idempotent) part after rank 0 had finished, not at the same time
    assert (tmp_path / "run" / ".prepare.done").read_text() == "ok\n"


def test_rank_zero_error_reaches_the_others(tmp_path):
    r1 = _start(tmp_path, 1, "ok")
    r0 = _start(tmp_path, 0, "fail")
    r0.communicate(timeout=60)
    out1, _ = r1.communicate(timeout=60)
    assert r0.returncode != 0 and r1.returncode == 3
    assert "global rank 0 could not prepare the data: ValueError: manifest train.jsonl is missing" in out1


def test_rank_zero_killed_mid_work_stops_the_others_with_a_message(tmp_path):
    r0 = _start(tmp_path, 0, "hang")
    r1 = _start(tmp_path, 1, "ok")
    deadline = time.monotonic() + 120
    while not (tmp_path / "run" / ".prepare.running").exists():  # rank 0 is at work
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    r0.send_signal(signal.SIGKILL)
    r0.wait()
    start = time.monotonic()
    out1, _ = r1.communicate(timeout=60)
    assert r1.returncode == 3 and time.monotonic() - start < 30
    assert "global rank 0 stopped before it could prepare the data: its heartbeat" in out1


def test_processes_launched_together_need_one_run_dir(tmp_path):
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2"}
    proc = subprocess.run([sys.executable, "-m", "asr.train", "recipe=tiny", f"paths.exp_dir={tmp_path}"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "2 processes were launched together (torchrun or srun) but hydra.run.dir is not set" in proc.stderr
    assert "Traceback" not in proc.stderr
