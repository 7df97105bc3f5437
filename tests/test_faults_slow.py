"""The long fault test: kill-and-resume AN4 training (reduced), on the full corpus (skipped
without the shared data). Its fast counterparts: test_faults.py (SIGKILL during checkpoint
writes) and test_train.py (resume=auto)."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import ROOT, SHARED


@pytest.mark.slow
def test_kill_and_resume_reduced(an4_dir, tmp_path):
    """scripts/kill_test.py with 5 kills on the AN4 recipe with a small model, on the full
    corpus (the full version: 20 kills, recipe settings)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from kill_test import run

    overrides = ["recipe=an4", f"paths.data_dir={an4_dir.parent}", f"paths.download_dir={SHARED}",
                 "model.hidden_size=32", "model.num_layers=2", "trainer.max_epochs=3",
                 "data.cache_audio=false", "global_stats_utterances=100",
                 "+trainer.limit_train_batches=6", "+trainer.limit_val_batches=2",
                 "checkpoint.every_n_steps=2"]
    res = run(5, tmp_path, overrides, seed=1, max_wait=20.0)
    print("\nkill test:", json.dumps(res))
    assert res["finished"] and res["kills_sent"] >= 3 and res["kills_survived"] == res["kills_sent"]
    assert res["global_step"] == 18  # 3 epochs x 6 steps: nothing replayed or skipped
    assert res["weights_equal"]  # bit for bit the uninterrupted run's, mid-epoch resumes included
    assert res["wer_killed_and_resumed"] == res["wer_uninterrupted"]
