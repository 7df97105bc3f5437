"""Before torch.distributed starts: how many processes were launched (torchrun, srun), and work
that global rank 0 does first while the others wait for its marker in the shared run dir."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pytorch_lightning.utilities import rank_zero_only

log = logging.getLogger(__name__)

T = TypeVar("T")


def launched_world() -> int:
    """Processes the launcher started (``WORLD_SIZE`` of torchrun, the step's tasks under srun);
    1 otherwise, Lightning's own launcher included (it starts the other ranks during the fit)."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    if "SLURM_STEP_NUM_TASKS" in os.environ:  # inside srun (SLURM_NTASKS is the whole allocation's)
        return int(os.environ["SLURM_STEP_NUM_TASKS"])
    return 1


class RankZeroFailed(RuntimeError):
    """Global rank 0 failed or stopped in work the other ranks wait for."""


def rank_zero_first(fn: Callable[[], T], marker_dir: str | os.PathLike, name: str, what: str,
                    heartbeat_s: float = 10.0, stale_s: float = 300.0,
                    start_grace_s: float = 900.0) -> T:
    """Run ``fn`` on global rank 0 first; the other ranks run it after rank 0 has finished (it must
    be idempotent: they find the work done).

    ``marker_dir`` must be shared by all ranks (``hydra.run.dir``); ``what`` names the work in
    messages. A waiting rank raises :class:`RankZeroFailed` rather than wait forever when rank 0
    failed, its heartbeat is older than ``stale_s``, or it has not started after
    ``start_grace_s``. See docs/training.md.
    """
    marker_dir = Path(marker_dir)
    done, running = marker_dir / f".{name}.done", marker_dir / f".{name}.running"
    if rank_zero_only.rank == 0:
        marker_dir.mkdir(parents=True, exist_ok=True)
        done.unlink(missing_ok=True)
        stop = threading.Event()

        def beat() -> None:
            while not stop.is_set():
                running.touch()
                stop.wait(heartbeat_s)

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            result = fn()
        except BaseException as err:
            done.write_text(f"failed: {err.__class__.__name__}: {err}\n")
            raise
        finally:
            stop.set()
            thread.join()
            running.unlink(missing_ok=True)
        done.write_text("ok\n")
        return result
    _wait_for(done, running, what, stale_s, start_grace_s)
    return fn()


def _wait_for(done: Path, running: Path, what: str, stale_s: float, start_grace_s: float) -> None:
    start, since = time.monotonic(), time.time()
    log.info("rank %d waits for global rank 0 to %s (%s)", rank_zero_only.rank, what, done)
    while not done.exists():
        if running.exists():
            try:  # a heartbeat left by an earlier launch counts from when this rank began to wait
                age = time.time() - max(running.stat().st_mtime, since)
            except FileNotFoundError:  # rank 0 finished between the two checks
                continue
            if age > stale_s:
                raise RankZeroFailed(f"global rank 0 stopped before it could {what}: its "
                                     f"heartbeat {running} is {age:.0f} s old (see rank 0's log); "
                                     f"restart all ranks")
        elif time.monotonic() - start > start_grace_s:
            raise RankZeroFailed(f"global rank 0 did not start to {what} within "
                                 f"{start_grace_s:.0f} s (no {running}): are all ranks using the "
                                 "same hydra.run.dir on a shared file system?")
        time.sleep(0.5)
    status = done.read_text().strip()
    if status != "ok":
        raise RankZeroFailed(f"global rank 0 could not {what}: {status.removeprefix('failed: ')}")
