"""Tar shards (``python -m asr.shard``) and training from them (:mod:`asr.data.shard_loader`):
the fixture's real SPHERE files, real tar files read back with the standard library, real
DataLoader worker processes."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from asr.audio import load_audio
from asr.data.dataset import collate
from asr.data.filter import UtteranceFilter
from asr.data.manifest import read_manifest, write_manifest
from asr.data.shard_dataset import ShardDataset
from asr.data.shard_loader import ShardBatchSampler, ShardIndex
from asr.data.shards import write_shards
from asr.text import CharTokenizer
from tests.conftest import ROOT


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asr.shard", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def _epoch(index: ShardIndex, workers: int, epoch: int = 0, resume: int | None = None,
           **kw) -> list:
    """The batches one rank trains in ``epoch`` through a real DataLoader (``workers``
    processes)."""
    tok = CharTokenizer()
    sampler = ShardBatchSampler(index, kw.pop("max_batch_seconds", 4.0), workers, seed=3, **kw)
    sampler.set_epoch(epoch)
    if resume is not None:
        sampler.resume(epoch, resume)
    loader = DataLoader(ShardDataset(index, UtteranceFilter([tok])), batch_sampler=sampler,
                        collate_fn=collate, num_workers=workers)
    return list(loader)


def test_cli_writes_each_utterance_once_with_its_file_bytes(tiny_dir, tmp_path):
    out = tmp_path / "shards"
    proc = _cli(f"manifest={tiny_dir / 'train.jsonl'}", f"out={out}", "shard_seconds=4")
    assert proc.returncode == 0, proc.stderr
    utts = {u.id: u for u in read_manifest(tiny_dir / "train.jsonl")}
    index = json.loads((out / "index.json").read_text())
    assert index["utterances"] == len(utts) and len(index["shards"]) > 3
    seen, durations = [], []
    # read back with the standard library, not the code that wrote them
    for shard in index["shards"]:
        side = json.loads((out / shard["name"]).with_suffix(".json").read_text())
        with tarfile.open(out / shard["name"]) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        assert len(members) == 2 * shard["utterances"]
        for name, data in sorted(members.items()):
            if name.endswith(".json"):
                record = json.loads(data)
                audio = members[name[: -len("json")] + "sph"]
                assert audio == Path(utts[record["id"]].audio_filepath).read_bytes()
                assert record["text"] == utts[record["id"]].text
                seen.append(record["id"])
        assert side["ids"] == seen[-shard["utterances"]:]
        durations += side["durations"]
    assert sorted(seen) == sorted(utts)
    assert np.allclose(np.load(out / "durations.npy"), durations)

    assert _cli(f"verify={out}").returncode == 0
    victim = out / index["shards"][1]["name"]
    data = bytearray(victim.read_bytes())
    data[700] ^= 0xFF
    victim.write_bytes(bytes(data))
    proc = _cli(f"verify={out}")
    assert proc.returncode == 2 and victim.name in proc.stdout and "SHA-256" in proc.stdout


def test_a_cut_run_continues_with_the_first_incomplete_shard(tiny_dir, tmp_path):
    out = tmp_path / "shards"
    first = write_shards(tiny_dir / "train.jsonl", out, shard_seconds=4)
    # as if killed while writing shard 2: its tar half written, no index for it, no index.json
    cut = out / first["shards"][2]["name"]
    cut.write_bytes(cut.read_bytes()[:1000])
    cut.with_suffix(".json").unlink()
    (out / "index.json").unlink()
    before = {s["name"]: (out / s["name"]).stat().st_mtime_ns for s in first["shards"]}
    again = write_shards(tiny_dir / "train.jsonl", out, shard_seconds=4)
    assert again["shards"] == first["shards"]  # the same bytes (checksums) as the uncut run
    rewritten = [n for n, t in before.items() if (out / n).stat().st_mtime_ns != t]
    assert rewritten == [cut.name]
    with pytest.raises(ValueError, match="other settings"):
        write_shards(tiny_dir / "train.jsonl", out, shard_seconds=5)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_epoch_reads_every_utterance_once_with_its_audio(tiny_dir, tmp_path, workers):
    write_shards(tiny_dir / "train.jsonl", tmp_path / "s", shard_seconds=4)
    index = ShardIndex(tmp_path / "s")
    utts = {u.id: u for u in read_manifest(tiny_dir / "train.jsonl")}
    # two streams of uneven shards would leave batches out: one stream per worker needs even ones,
    # so 1 worker here
    batches = (_epoch(index, workers, shuffle_buffer=6) if workers == 0
               else _epoch(index, 2, max_batch_seconds=30))
    ids = [i for b in batches for i in b.ids]
    if workers == 0:
        assert sorted(ids) == sorted(utts)
    assert len(ids) == len(set(ids)) > 0
    for b in batches:
        assert not b.dropped
        for k, uid in enumerate(b.ids):
            assert torch.equal(b.audio[k, : b.audio_lengths[k]],
                               load_audio(utts[uid].audio_filepath))
    if workers == 0:
        tok = CharTokenizer()
        dataset, sampler = (ShardDataset(index, UtteranceFilter([tok])),
                            ShardBatchSampler(index, 4.0, 0))
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)
        # one dataset read twice in one process
        assert [b.ids for b in loader] == [b.ids for b in loader]
        later = [i for b in _epoch(index, 0, epoch=1, shuffle_buffer=6) for i in b.ids]
        # every epoch: all of them, in another order
        assert sorted(later) == sorted(ids) and later != ids


def _even_corpus(tiny_dir: Path, tmp_path: Path) -> ShardIndex:
    """24 utterances of 1.0 s (as the index says) in 8 shards of 3, one utterance a batch: 4
    streams of 6 batches."""
    utts = [replace(u, duration=1.0) for u in read_manifest(tiny_dir / "train.jsonl")[:24]]
    write_manifest(tmp_path / "even.jsonl", utts)
    write_shards(tmp_path / "even.jsonl", tmp_path / "even", shard_seconds=3)
    return ShardIndex(tmp_path / "even")


def test_two_ranks_of_two_workers_read_disjoint_and_complete(tiny_dir, tmp_path):
    index = _even_corpus(tiny_dir, tmp_path)
    ranks = [_epoch(index, 2, num_replicas=2, rank=r, max_batch_seconds=1.0) for r in range(2)]
    ids = [[i for b in batches for i in b.ids] for batches in ranks]
    assert len(ranks[0]) == len(ranks[1]) == 12
    assert not set(ids[0]) & set(ids[1])
    assert (sorted(ids[0] + ids[1])
            == sorted(u.id for u in read_manifest(tmp_path / "even.jsonl")))


def test_uneven_shards_give_every_rank_the_same_number_of_steps(tiny_dir, tmp_path, caplog):
    write_shards(tiny_dir / "train.jsonl", tmp_path / "s", shard_seconds=8)  # 8 + 8 + 5 seconds
    index = ShardIndex(tmp_path / "s")
    assert len(set(index.counts.tolist())) > 1
    samplers = [ShardBatchSampler(index, 2.0, 1, num_replicas=3, rank=r) for r in range(3)]
    with caplog.at_level(logging.INFO, logger="asr.data.shard_loader"):
        batches = [list(s) for s in samplers]
    assert (len({len(s) for s in samplers}) == 1
            and [len(b) for b in batches] == [len(samplers[0])] * 3)
    ids = [[m[:2] for b in rank for m in b.members] for rank in batches]
    assert not (set(ids[0]) & set(ids[1])) and not (set(ids[1]) & set(ids[2]))
    assert "left out" in caplog.text


def test_resume_mid_epoch_yields_the_batches_not_yet_trained(tiny_dir, tmp_path):
    write_shards(tiny_dir / "train.jsonl", tmp_path / "s", shard_seconds=4)
    index = ShardIndex(tmp_path / "s")
    whole = _epoch(index, 2, epoch=1, shuffle_buffer=5, max_batch_seconds=2)
    for k in (1, 4, 7):  # mid-buffer and past a buffer's end, on either worker
        rest = _epoch(index, 2, epoch=1, resume=k, shuffle_buffer=5, max_batch_seconds=2)
        assert [b.ids for b in rest] == [b.ids for b in whole[k:]]
        assert all(torch.equal(a.audio, b.audio) for a, b in zip(rest, whole[k:], strict=True))


def test_shards_read_through_a_pipe_command(tiny_dir, tmp_path):
    write_shards(tiny_dir / "train.jsonl", tmp_path / "s", shard_seconds=4)
    local = _epoch(ShardIndex(tmp_path / "s"), 0)
    piped = _epoch(ShardIndex(tmp_path / "s", url=f"pipe:cat {tmp_path / 's'}/{{name}}"), 0)
    assert [b.ids for b in piped] == [b.ids for b in local] and all(not b.dropped for b in piped)
    broken = _epoch(ShardIndex(tmp_path / "s", url="pipe:cat /nonexistent/{name}"), 0)
    # every utterance dropped with the reason, no crash
    assert all(not b.ids and b.dropped for b in broken)
    assert "/nonexistent/" in broken[0].dropped[0][1]


def test_errors_name_the_setting_and_the_fix(tiny_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m asr.shard"):
        ShardIndex(tmp_path / "nowhere")
    write_shards(tiny_dir / "train.jsonl", tmp_path / "s", shard_seconds=8)
    with pytest.raises(ValueError, match=r"\{name\}"):
        ShardIndex(tmp_path / "s", url="pipe:cat /bucket/shard.tar")
    with pytest.raises(ValueError, match="3 shards for 2 ranks x 2 loader workers"):
        len(ShardBatchSampler(ShardIndex(tmp_path / "s"), 2.0, 2, num_replicas=2, rank=0))
    proc = _cli(f"manifest={tmp_path / 'missing.jsonl'}", f"out={tmp_path / 'x'}")
    assert proc.returncode == 2 and "missing.jsonl does not exist" in proc.stderr


def test_readme_pipe_override_composes(tiny_dir, tmp_path):
    """The README's ``data.shard_url`` override, as written, reaches the DataModule with its
    ``{name}``."""
    import shlex

    from tests.conftest import compose_train

    readme = (ROOT / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if "data.shard_url=" in ln)
    override = next(tok for tok in shlex.split(line) if tok.startswith("data.shard_url="))
    cfg = compose_train([f"data.train_shards={tmp_path}", override])
    assert cfg.data.shard_url == "pipe:aws s3 cp s3://bucket/train-960h/{name} -"
