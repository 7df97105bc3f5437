"""Kill-and-resume test: SIGKILL AN4 training at random moments (some during checkpoint writes), resume each
time with ``resume=auto``, let it finish, check every checkpoint on disk loads, and compare the final weights
(``torch.equal``) and the test WER with an uninterrupted run of the same settings.

    python scripts/kill_test.py --kills 20 --out exp/kill_test -- recipe=an4 checkpoint.every_n_steps=50  # full
    python scripts/kill_test.py --kills 5 --out /tmp/k -- model.hidden_size=64 trainer.max_epochs=4 \\
        +trainer.limit_train_batches=10                                                  # reduced

Prints one JSON line: kills attempted/survived, how many landed mid-checkpoint-write and how many resumed
mid-epoch (from a step checkpoint), whether the final weights equal the uninterrupted run's, both WERs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from asr.model_files import load_checkpoint
from asr.training.checkpointing import PARTIAL_SUFFIX


def _cmd(out: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "asr.train", *overrides, f"paths.output_dir={out}", f"hydra.run.dir={out}",
            "trainer.enable_progress_bar=false", "resume=auto"]


def _wer(out: Path) -> float:
    return json.loads((out / "decode" / "test" / "report.json").read_text())["wer"]


def _all_checkpoints_load(out: Path) -> bool:
    for ckpt in (out / "checkpoints").glob("*.ckpt"):
        load_checkpoint(ckpt)  # raises on a truncated or corrupt file
    return True


def run(kills: int, out: Path, overrides: list[str], seed: int = 0, max_wait: float = 40.0) -> dict:
    """Uninterrupted run, then a run killed ``kills`` times and resumed; returns the numbers."""
    rng = random.Random(seed)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    clean = out / "uninterrupted"
    start = time.monotonic()
    subprocess.run(_cmd(clean, overrides), check=True, env=env, capture_output=True)
    # kill times are drawn within the length of a whole run, so kills land before it can finish
    max_wait = min(max_wait, 0.8 * (time.monotonic() - start))
    killed = out / "killed"
    ckpt_dir = killed / "checkpoints"
    survived = sent = mid_write = mid_epoch = restarts = 0
    for k in range(kills):
        proc = subprocess.Popen(_cmd(killed, overrides), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        restarts += 1
        deadline = time.monotonic() + rng.uniform(2.0, max_wait)
        aim_at_write = k % 2 == 1  # every other kill waits for a checkpoint write to start
        while proc.poll() is None and time.monotonic() < deadline + (30.0 if aim_at_write else 0.0):
            partial = ckpt_dir.is_dir() and any(ckpt_dir.glob(f".*{PARTIAL_SUFFIX}"))
            if (aim_at_write and partial) or (not aim_at_write and time.monotonic() >= deadline):
                break
            time.sleep(0.001 if aim_at_write else 0.05)
        if proc.poll() is not None:  # finished before this kill: nothing left to interrupt
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        sent += 1
        mid_write += any(ckpt_dir.glob(f".*{PARTIAL_SUFFIX}"))  # a write was cut short by this kill
        survived += _all_checkpoints_load(killed)
        if (ckpt_dir / "last.ckpt").exists():  # the next start resumes in the middle of an epoch
            mid_epoch += load_checkpoint(ckpt_dir / "last.ckpt").get("ASRDataModule", {}).get("batches_done", 0) > 0
    final = subprocess.run(_cmd(killed, overrides), env=env, capture_output=True, text=True)
    ok = final.returncode == 0 and _all_checkpoints_load(killed)
    last = load_checkpoint(ckpt_dir / "last.ckpt")
    reference = load_checkpoint(clean / "checkpoints" / "last.ckpt")["state_dict"]
    equal = reference.keys() == last["state_dict"].keys() and all(
        torch.equal(reference[k], last["state_dict"][k]) for k in reference)
    return {
        "kills_attempted": kills, "kills_sent": sent, "kills_survived": survived if ok else 0,
        "killed_mid_checkpoint_write": mid_write, "resumed_mid_epoch": mid_epoch,
        "restarts": restarts, "finished": ok, "global_step": last["global_step"], "weights_equal": equal,
        "wer_uninterrupted": _wer(clean), "wer_killed_and_resumed": _wer(killed) if ok else None,
        "overrides": overrides,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("exp/kill_test"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-wait", type=float, default=40.0, help="latest random kill time (s after start)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the training run (after --)")
    args = parser.parse_args()
    print(json.dumps(run(args.kills, args.out, args.overrides, args.seed, args.max_wait)))


if __name__ == "__main__":
    main()
