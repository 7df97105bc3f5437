"""Multi-node rehearsal on one machine: two ``torchrun --nnodes=2 --nproc-per-node=1`` "nodes" on 127.0.0.1 (gloo),
started together on an empty data dir, as two nodes of a cluster would be.

    python scripts/multinode_rehearsal.py --out /tmp/mn -- recipe=an4 paths.download_dir=../shared/data

Phase 1 trains one epoch and checks: both nodes exit 0, one run dir, the data prepared once (node 1 waited for
node 0's marker), disjoint utterances per rank, equal step counts. Phase 2 continues to two epochs with
``checkpoint.every_n_steps``, SIGKILLs both nodes mid-epoch after a step checkpoint and restarts them with
``resume=auto``: the resumed ranks train the batches an uninterrupted 2-process run (Lightning's own DDP launcher,
same ranks, same two phases) trains, and end with equal weights. Prints one JSON line with the checks and the
seconds per phase.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.trace import read_trace  # noqa: E402


def _train_args(run: Path, overrides: list[str]) -> list[str]:
    return ["recipe=an4", *overrides, f"hydra.run.dir={run}", "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false", "eval_manifests=null",
            "+callbacks.trace._target_=tests.trace.BatchTrace", f"+callbacks.trace.path={run}/trace"]


def _nodes(run: Path, overrides: list[str], port: int, logs: Path, delay: float = 0.0) -> list[subprocess.Popen]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    extra = [f"+callbacks.trace.delay={delay}"] if delay else []
    procs = []
    for node in (0, 1):
        cmd = [str(Path(sys.executable).with_name("torchrun")), "--nnodes=2", "--nproc-per-node=1",
               f"--node-rank={node}", "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "asr.train",
               *_train_args(run, overrides), "trainer.devices=1", "trainer.num_nodes=2", *extra]
        log = open(logs.with_name(f"{logs.name}.node{node}.log"), "w")  # noqa: SIM115 (closed with the process)
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _descendants(pid: int) -> list[int]:
    """``pid``'s children, grandchildren, ... (from /proc: torchrun starts its workers in sessions of their own, so
    killing its process group would leave them training)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            children = [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            children = []
        out += children
        todo += children
    return out


def _kill_node(proc: subprocess.Popen) -> list[int]:
    """SIGKILL a "node": the torchrun agent and every process under it, as a machine that loses power; returns the
    pids."""
    pids = [proc.pid, *_descendants(proc.pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    return pids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _restarts(run: Path, rank: int) -> int:
    """How often the raw trace of ``rank`` goes back in steps (a resume redoing steps after the last checkpoint)."""
    steps = [json.loads(line)["step"] for line in Path(f"{run}/trace.rank{rank}.jsonl").read_text().splitlines()]
    return sum(b <= a for a, b in zip(steps, steps[1:], strict=False))


def _wait(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            _kill_node(p)
            codes.append(-9)
    return codes


def _disjoint_equal(run: Path) -> dict:
    traces = [read_trace(f"{run}/trace", r) for r in (0, 1)]
    epochs = {e for t in traces for _, e, _ in t}
    disjoint = all(
        not ({u for _, e, ids in traces[0] if e == ep for u in ids} & {u for _, e, ids in traces[1] if e == ep
                                                                        for u in ids})
        for ep in epochs)
    return {"steps": [len(t) for t in traces], "equal_steps": len(traces[0]) == len(traces[1]), "disjoint": disjoint}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="an empty folder for the data, run dirs and logs")
    ap.add_argument("--port", type=int, default=29533)
    ap.add_argument("--every-n-steps", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per phase before the nodes are killed")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides (paths.download_dir=<folder with the AN4 archive>)")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = [f"paths.data_dir={out / 'data'}", *args.overrides]
    run, result = out / "run", {}

    start = time.monotonic()  # phase 1: one epoch from an empty data dir
    codes = _wait(_nodes(run, [*base, "trainer.max_epochs=1"], args.port, out / "phase1"), args.timeout)
    logs = [(out / f"phase1.node{n}.log").read_text() for n in (0, 1)]
    result["phase1"] = {"seconds": round(time.monotonic() - start, 1), "exit_codes": codes,
                        "run_dirs": sorted(p.name for p in out.iterdir() if p.is_dir() and p.name != "data"),
                        "extracted_by": [n for n in (0, 1) if "extracting" in logs[n]],
                        "node1_waited_for_node0": "waits for global rank 0" in logs[1], **_disjoint_equal(run)}

    # phase 2: two epochs with step checkpoints, both nodes killed mid-epoch 2 and restarted with resume=auto
    two = [*base, "trainer.max_epochs=2", f"checkpoint.every_n_steps={args.every_n_steps}"]
    steps_epoch1 = result["phase1"]["steps"][0]
    start = time.monotonic()
    procs = _nodes(run, [*two, "resume=auto"], args.port, out / "phase2-killed", delay=0.2)
    last = run / "checkpoints" / "last.ckpt"
    while all(p.poll() is None for p in procs):
        if last.exists() and torch.load(last, weights_only=True, map_location="cpu")["global_step"] > steps_epoch1:
            break
        time.sleep(0.5)
    killed = [pid for p in procs for pid in _kill_node(p)]
    time.sleep(1.0)
    assert len(killed) >= 4 and not any(_alive(pid) for pid in killed), "a killed node's process survived"
    killed_at = torch.load(last, weights_only=True, map_location="cpu")
    codes = _wait(_nodes(run, [*two, "resume=auto"], args.port, out / "phase2-resumed"), args.timeout)
    result["phase2"] = {"seconds": round(time.monotonic() - start, 1), "killed_at_step": killed_at["global_step"],
                        "killed_at": killed_at.get("ASRDataModule"), "processes_killed": len(killed),
                        "exit_codes": codes, "trace_went_back": [_restarts(run, r) for r in (0, 1)],
                        **_disjoint_equal(run)}

    # reference: the same two phases uninterrupted, 2 processes started by Lightning on this machine
    ref = out / "reference"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = ["trainer.devices=2", "trainer.strategy=ddp"]
    for phase in ([*base, "trainer.max_epochs=1"], [*two, "resume=auto"]):
        proc = subprocess.run([sys.executable, "-m", "asr.train", *_train_args(ref, phase), *ddp], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"reference run failed:\n{proc.stderr[-3000:]}")
    a = torch.load(ref / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    b = torch.load(last, weights_only=True, map_location="cpu")
    result["reference"] = {
        "same_batches": all(read_trace(f"{ref}/trace", r) == read_trace(f"{run}/trace", r) for r in (0, 1)),
        "weights_equal": a["state_dict"].keys() == b["state_dict"].keys()
        and all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
