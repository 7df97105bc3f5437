"""The long fault tests: kill-and-resume AN4 training (reduced) and a 220-file fuzz through prepare + training."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pytest

from asr.corpora.an4 import prepare
from asr.data import read_manifest
from asr.train import train
from tests.conftest import ROOT, SHARED, tiny_train_cfg
from tests.faults_util import an4_tree, write_etc

ODD = ["", "   ", "x" * 3000, "héllo wörld", "42 ☃ \t tab", "ALL\u200bZERO\u00a0WIDTH", "(PAREN) [B] {C}", "Ω≈ç√",
       "NORMAL WORDS HERE", "a'postrophe"]


def _damage(rng: random.Random, path: Path) -> str:
    kind = rng.choice(["ok", "ok", "half", "header-only", "zero", "random", "bad-magic", "missing", "bitflip",
                       "tiny"])
    data = path.read_bytes()
    if kind == "half":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "header-only":
        path.write_bytes(data[: rng.randint(10, 1100)])
    elif kind == "zero":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(os.urandom(rng.randint(1, 40000)))
    elif kind == "bad-magic":
        path.write_bytes(b"RIFX" + data[4:])
    elif kind == "missing":
        path.unlink()
    elif kind == "bitflip":
        b = bytearray(data)
        for _ in range(50):
            b[rng.randrange(1024, len(b))] ^= 0xFF
        path.write_bytes(bytes(b))
    elif kind == "tiny":
        path.write_bytes(data[:1024 + 64])  # header + 32 samples
    return kind


@pytest.mark.slow
def test_fuzz_220_damaged_files_and_transcripts_through_prepare_and_one_epoch(an4_dir, tmp_path):
    rng = random.Random(0)
    tree = tmp_path / "an4"
    utts = an4_tree(an4_dir, tree, n_train=200, n_test=20)
    for u in utts.values():
        _damage(rng, u["path"])
        if rng.random() < 0.3:
            u["text"] = rng.choice(ODD + [None])  # None: no transcript line at all
    write_etc(tree, utts)
    manifests = prepare(str(tree), str(tmp_path / "cache"), dev_size=20, progress=False)
    rejected = [json.loads(x) for x in (tree / "rejected.jsonl").read_text().splitlines()]
    assert all(r["reason"] for r in rejected)
    kept = {u.id for m in manifests.values() for u in read_manifest(m)}
    assert kept | {r["id"] for r in rejected} == set(utts) and not kept & {r["id"] for r in rejected}
    # a few files break after prepare: they must be dropped at load time, with a reason
    train_utts = read_manifest(manifests["train"])
    for u in rng.sample(train_utts, 8):
        Path(u.audio_filepath).write_bytes(os.urandom(2000))
    cfg = tiny_train_cfg(an4_dir, tmp_path / "run", [
        f"data.train_manifest={manifests['train']}", f"data.val_manifest={manifests['dev']}",
        "data.test_manifest=null", "trainer.limit_train_batches=null", "eval_manifests={}", "model.hidden_size=16",
        "max_consecutive_bad_steps=0",
    ])
    result = train(cfg)
    assert result["epochs"] == 1
    assert all(r["reason"] for r in result["rejected"])
    loads = [r for r in result["rejected"] if r["split"] == "load"]
    assert loads and all("Error" in r["reason"] or "samples" in r["reason"] for r in loads)
    print(f"\nfuzz: {len(utts)} utterances, {len(rejected)} rejected at prepare, "
          f"{len(result['rejected']) - len(loads)} dropped from manifests, {len(loads)} dropped at load, "
          f"{result['skipped_steps']} steps skipped")


@pytest.mark.slow
def test_kill_and_resume_reduced(an4_dir, tmp_path):
    """scripts/kill_test.py with 5 kills on a small model (the full version: 20 kills, recipe settings)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from kill_test import run

    overrides = [f"paths.data_dir={an4_dir.parent}", f"prepare.data_dir={an4_dir}", f"paths.download_dir={SHARED}",
                 "model.hidden_size=32", "model.num_layers=2", "trainer.max_epochs=3",
                 "+trainer.limit_train_batches=6", "+trainer.limit_val_batches=2", "data.num_workers=0"]
    res = run(5, tmp_path, overrides, seed=1, max_wait=20.0)
    print("\nkill test:", json.dumps(res))
    assert res["finished"] and res["kills_sent"] >= 3 and res["kills_survived"] == res["kills_sent"]
    assert res["global_step"] == 18  # 3 epochs x 6 steps: nothing replayed or skipped
    assert abs(res["wer_killed_and_resumed"] - res["wer_uninterrupted"]) < 0.15
