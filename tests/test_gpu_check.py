"""The GPU check's dry run (``DRY=1 bash benchmarks/gpu_check.sh``): every phase runs, on tiny
shapes on the CPU, and says what the GPU run will say. On the GPU machine the same script runs at
full size (README, Speed)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_dry_run_runs_every_phase(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "DRY": "1", "PY": sys.executable, "OUT": str(out),
           "OMP_NUM_THREADS": "1"}
    # A dry run has no time budget and only hang guards (600 s a phase): a busy CPU makes it
    # slower, not different. The whole script (its own process group) is stopped only if it hangs.
    proc = subprocess.Popen(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=2700)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    said = stdout + stderr
    # no phase failed or timed out
    assert proc.returncode == 0 and "exited" not in stdout, said[-4000:]
    assert sorted(p.name for p in out.iterdir()) == ["an4.log", "an4_metrics.csv", "an4_run.json",
                                                      "env.txt", "loader.log", "model.json",
                                                      "model.log"]
    assert "torch 2." in (out / "env.txt").read_text()

    results = json.loads((out / "model.json").read_text())
    assert set(results["lstm_dispatch"]) == {"packed", "dense"}
    parity = results["parity_fp32"]
    assert parity["log_probs_max_abs_diff"] < 1e-4 and parity["grad_max_rel_diff"] < 1e-3
    assert all(r["rel_err"] < 0.2 for rows in results["grad_fidelity_bf16_vs_fp32"].values()
               for r in rows.values())
    steps = {k: v for k, v in results.items() if k.startswith(("packed", "dense"))}
    # (packed, dense) x (bf16, fp32), each one a measured row, never skipped
    assert len(steps) == 4, steps
    assert all(isinstance(v, dict) for v in steps.values()), steps
    assert all(v["audio_s_per_s"] > 0 and v["ms_per_step"] > 0 for v in steps.values()), steps

    loader = (out / "loader.log").read_text()
    assert "decode" in loader and "resample" in loader and "loader  1 workers" in loader, loader

    rows = list(csv.DictReader((out / "an4_metrics.csv").open()))
    # the first run's epoch, the resumed one's
    assert {int(r["epoch"]) for r in rows if r.get("val/wer")} == {0, 1}
    assert (out / "an4.log").read_text().count("best.ckpt (") == 2
