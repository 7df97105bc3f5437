"""Two CPU processes under Lightning DDP (gloo) on the committed AN4 fixture: distinct batches
per rank, equal step counts."""

import json
import os
import subprocess
import sys
import textwrap

from tests.conftest import ROOT


def test_ddp_two_cpu_ranks_see_disjoint_data_and_same_steps(tiny_dir, tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, sys
            from pathlib import Path
            import pytorch_lightning as L
            sys.path.insert(0, {str(ROOT)!r})
            from asr.train import train
            from tests.conftest import tiny_train_cfg

            class Recorder(L.Callback):
                def __init__(self):
                    self.ids = []
                def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                    self.ids.append(list(batch.ids))
                def on_train_end(self, trainer, pl_module):
                    out = Path({str(tmp_path)!r}) / f"rank{{trainer.global_rank}}.json"
                    out.write_text(json.dumps({{"ids": self.ids, "global_step": trainer.global_step,
                                               "world_size": trainer.world_size}}))

            cfg = tiny_train_cfg(Path({str(tiny_dir)!r}), Path({str(tmp_path / "run")!r}), [
                "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
                "trainer.max_epochs=2", "trainer.limit_train_batches=4", "eval_manifests=null",
            ])
            train(cfg, extra_callbacks=[Recorder()])
            """
        )
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    # 4 batches x 2 epochs on each rank
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 8
    assert len(ranks[0]["ids"]) == len(ranks[1]["ids"]) == 8
    for epoch in range(2):
        seen = [{u for b in r["ids"][epoch * 4 : (epoch + 1) * 4] for u in b} for r in ranks]
        # no utterance on both ranks in an epoch
        assert seen[0] and seen[1] and not seen[0] & seen[1]
