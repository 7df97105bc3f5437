"""Work global rank 0 does first (preparing the data) while the others wait: real processes with
the ranks torchrun gives them (``RANK``/``WORLD_SIZE``). No rank waits forever: rank 0's error, or
its death, reaches the others as a message.

The processes and the test meet on events, not on time: each process appends what it does to a
shared log (``start`` and ``end`` of its work; ``poll`` each time a waiting rank has looked at rank
0's markers), and rank 0's work lasts until the test releases it (or kills it). A busy machine makes
these tests slower, never different."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from asr.training.launch import rank_zero_first, RankZeroFailed

    rank, mode, events, release, go = {rank}, {mode!r}, Path({events!r}), Path({release!r}), {go!r}

    def note(what):
        with events.open("a") as f:
            f.write(f"{{rank}} {{what}}\\n")

    sleep = time.sleep
    def polled(seconds):  # the wait loop sleeps between two looks at the markers: one `poll` each
        note("poll")
        sleep(seconds)
    time.sleep = polled

    def hold(path):  # until the test creates `path`; an orphan (its test died) goes on by itself
        deadline = time.monotonic() + 300
        while not path.exists() and time.monotonic() < deadline:
            sleep(0.01)

    def work():
        note("start")
        if mode == "fail":
            raise ValueError("manifest train.jsonl is missing")
        if rank == 0:
            hold(release)
        note("end")
        return "ok"

    if go:
        hold(Path(go))  # imported, not yet in rank_zero_first
    try:
        done = rank_zero_first(work, {dir!r}, "prepare", "prepare the data", heartbeat_s={beat},
                               stale_s={stale})
        print("done", done)
    except RankZeroFailed as err:
        print("error:", err)
        sys.exit(3)
    """
)
NEVER = 3600.0  # a stale_s no busy machine reaches: a live rank 0 is never taken for a dead one


class Ranks:
    """The rank processes of one test, their shared event log, and the file that releases rank 0."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp, self.events, self.release = tmp_path, tmp_path / "events", tmp_path / "release"
        self.run, self.procs = tmp_path / "run", []
        self.events.touch()

    def start(self, rank: int, mode: str = "ok", beat: float = 0.2, stale: float = NEVER,
              go: Path | None = None) -> subprocess.Popen:
        """Start global rank ``rank``; with ``go``, it enters rank_zero_first once ``go`` exists."""
        script = self.tmp / f"rank{rank}.py"
        script.write_text(SCRIPT.format(
            root=str(ROOT), rank=rank, mode=mode, events=str(self.events),
            release=str(self.release), go=str(go) if go else None, dir=str(self.run), beat=beat,
            stale=stale))
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2"}
        proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc

    def log(self) -> list[str]:
        return self.events.read_text().splitlines()

    def wait_for(self, what: str, cond, running: tuple[subprocess.Popen, ...]) -> list[str]:
        """Poll the event log until ``cond(lines)``; fail at once if a process of ``running`` ends
        first. The deadline is a hang guard, not a timing."""
        deadline = time.monotonic() + 300
        while not cond(lines := self.log()):
            for proc in running:
                if proc.poll() is not None:
                    out, err = proc.communicate()
                    pytest.fail(f"waiting for {what}, a rank exited {proc.returncode}: "
                                f"{out}{err[-3000:]}")
            assert time.monotonic() < deadline, f"no {what} within 300 s: {lines}"
            time.sleep(0.02)
        return lines

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


@pytest.fixture
def ranks(tmp_path):
    r = Ranks(tmp_path)
    yield r
    r.close()


def _polls_since(lines: list[str], event: str) -> int:
    """How often rank 1 looked at rank 0's markers after ``event`` (0 before it)."""
    return lines[lines.index(event):].count("1 poll") if event in lines else 0


def _saw_rank_zero_at_work(lines: list[str]) -> bool:
    # the second look after rank 0's `start` was surely taken while rank 0 worked
    return _polls_since(lines, "0 start") >= 2


def test_other_ranks_run_after_rank_zero_finished(ranks):
    go = ranks.tmp / "go"
    r0 = ranks.start(0, go=go)  # both import at once; rank 0 is held back,
    r1 = ranks.start(1)  # so rank 1 waits first, as on a faster node
    ranks.wait_for("rank 1 waiting", lambda ev: "1 poll" in ev, (r0, r1))
    assert set(ranks.log()) == {"1 poll"}  # rank 0 has not begun
    go.touch()
    lines = ranks.wait_for("rank 1 waiting on rank 0 at work", _saw_rank_zero_at_work, (r0, r1))
    assert "1 start" not in lines, lines  # rank 1 went on waiting
    ranks.release.touch()
    out0, err0 = r0.communicate(timeout=120)
    out1, err1 = r1.communicate(timeout=120)
    assert r0.returncode == r1.returncode == 0, err0[-3000:] + err1[-3000:]
    assert out0.split() == out1.split() == ["done", "ok"]
    # rank 1 did its (idempotent) part after rank 0 had finished, not at the same time
    work = [line for line in ranks.log() if not line.endswith("poll")]
    assert work == ["0 start", "0 end", "1 start", "1 end"], work
    assert (ranks.run / ".prepare.done").read_text() == "ok\n"


def test_rank_zero_error_reaches_the_others(ranks):
    r1 = ranks.start(1)
    r0 = ranks.start(0, "fail")
    r0.communicate(timeout=120)
    out1, _ = r1.communicate(timeout=120)
    assert r0.returncode != 0 and r1.returncode == 3
    assert ("global rank 0 could not prepare the data: "
            "ValueError: manifest train.jsonl is missing") in out1
    assert "1 start" not in ranks.log()  # rank 1 never did the work rank 0 failed at


def test_rank_zero_killed_mid_work_stops_the_others_with_a_message(ranks):
    # stale_s=5: far more than a live rank 0's 0.1 s heartbeat lags on a busy machine, and short
    r0 = ranks.start(0, beat=0.1, stale=5.0)
    r1 = ranks.start(1, beat=0.1, stale=5.0)
    ranks.wait_for("rank 1 waiting on rank 0 at work", _saw_rank_zero_at_work, (r0, r1))
    assert (ranks.run / ".prepare.running").exists()  # rank 0 at work, beating
    r0.send_signal(signal.SIGKILL)
    r0.wait()
    start = time.monotonic()
    out1, _ = r1.communicate(timeout=120)
    assert r1.returncode == 3 and time.monotonic() - start < 60  # stale_s after the kill
    assert "global rank 0 stopped before it could prepare the data: its heartbeat" in out1
    assert "0 end" not in ranks.log() and "1 start" not in ranks.log()


def test_processes_launched_together_need_one_run_dir(tmp_path):
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2"}
    proc = subprocess.run([sys.executable, "-m", "asr.train", "recipe=tiny",
                           f"paths.exp_dir={tmp_path}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert ("2 processes were launched together (torchrun or srun) "
            "but hydra.run.dir is not set") in proc.stderr
    assert "Traceback" not in proc.stderr
