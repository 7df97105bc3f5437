"""Fault injection, one test (or more) per row of the reliability table (issue 5).

Real files (the committed AN4 fixture's audio, damaged), real SIGKILLs of real processes, a real
(tmpfs) full disk where the test runs as root, and a real Lightning Trainer on CPU. The slow one
(kill-and-resume AN4 training) is in test_faults_slow.py.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as L
import soundfile as sf
import torch

from asr.audio import load_audio, probe_audio
from asr.data.corpora.an4 import prepare
from asr.data.datamodule import ASRDataModule
from asr.data.dataset import AudioDataset, collate
from asr.data.download import extract_tar
from asr.data.manifest import Utterance, read_manifest
from asr.model_files import CHECKPOINT_KEY
from asr.recognizer import Recognizer
from asr.text import CharTokenizer, WordTokenizer, normalize_text
from asr.train import train
from asr.training.checkpointing import (
    CheckpointWriteError,
    atomic_torch_save,
    load_checkpoint,
    remove_partials,
)
from asr.training.guards import TrainingDiverged
from asr.training.module import ASRModule, ctc_loss
from tests.conftest import ROOT, tiny_recipe_overrides, tiny_train_cfg
from tests.faults_util import an4_tree, write_etc

FAST = ["eval_manifests={}", "data_check=false"]


def _metrics(out: Path) -> list[dict]:
    with (out / "logs" / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _last(rows: list[dict], key: str) -> float:
    return [float(r[key]) for r in rows if r.get(key)][-1]


# ------------------------------------------------------ audio corrupt / empty / truncated / missing
def test_prepare_rejects_corrupt_empty_truncated_missing_with_reasons(tiny_dir, tmp_path):
    utts = an4_tree(tiny_dir, tmp_path, n_train=12, n_test=4)
    ids = list(utts)
    damage = {ids[0]: "garbage", ids[1]: "empty", ids[2]: "truncated", ids[3]: "missing",
              ids[4]: "no-text"}
    utts[ids[0]]["path"].write_bytes(b"\x00garbage" * 100)
    utts[ids[1]]["path"].write_bytes(b"")
    data = utts[ids[2]]["path"].read_bytes()
    utts[ids[2]]["path"].write_bytes(data[: len(data) // 2])
    utts[ids[3]]["path"].unlink()
    utts[ids[4]]["text"] = ""
    write_etc(tmp_path, utts)
    manifests = prepare(str(tmp_path), str(tmp_path / "cache"), dev_size=2, progress=False)
    rejected = {r["id"]: r["reason"]
                for r in map(json.loads, (tmp_path / "rejected.jsonl").read_text().splitlines())}
    assert set(rejected) == set(damage)
    assert "unreadable" in rejected[ids[0]] and "unreadable" in rejected[ids[1]]
    assert "truncated audio: header says" in rejected[ids[2]] and "unreadable" in rejected[ids[3]]
    assert rejected[ids[4]] == "empty transcript"
    kept = {u.id for m in manifests.values() for u in read_manifest(m)}
    assert kept == set(ids) - set(damage)


def test_probe_audio_catches_truncated_wav_and_flac(tiny_dir, tmp_path):
    ref = load_audio(read_manifest(tiny_dir / "test.jsonl")[0].audio_filepath).numpy()
    for ext in ("wav", "flac"):
        sf.write(tmp_path / f"ok.{ext}", ref, 16000)
        assert probe_audio(tmp_path / f"ok.{ext}")[1] is None
        data = (tmp_path / f"ok.{ext}").read_bytes()
        (tmp_path / f"cut.{ext}").write_bytes(data[: len(data) // 2])
        info, reason = probe_audio(tmp_path / f"cut.{ext}")
        assert info is None and ("truncated" in reason or "unreadable" in reason)


def test_load_time_failures_are_dropped_counted_logged_once(tiny_dir, tmp_path, caplog):
    """Files that break after prepare: the batch drops them, the run goes on, each is logged
    once."""
    data = tmp_path / "data"
    data.mkdir()
    train_utts = read_manifest(tiny_dir / "train.jsonl")
    victims = {}
    for i, u in enumerate(train_utts[:6]):
        dst = data / f"{u.id}.sph"
        dst.write_bytes(Path(u.audio_filepath).read_bytes())
        train_utts[i] = Utterance(str(dst), u.duration, u.text, u.id, u.speaker)
        victims[u.id] = dst
    from asr.data.manifest import write_manifest

    write_manifest(data / "train.jsonl", train_utts)
    write_manifest(data / "dev.jsonl", read_manifest(tiny_dir / "dev.jsonl"))
    # damage after the manifest was written: missing, zero bytes, random bytes, NaN samples
    kinds = ["missing", "empty", "random", "nan", "missing", "random"]
    for path, kind in zip(victims.values(), kinds, strict=True):
        if kind == "missing":
            path.unlink()
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "random":
            path.write_bytes(os.urandom(3000))
        else:
            path.unlink()
            sf.write(path.with_suffix(".sph"), np.full(8000, np.nan, dtype=np.float32), 16000,
                     format="WAV", subtype="FLOAT")
    cfg = tiny_train_cfg(tiny_dir, tmp_path / "run", [
        f"data.train_manifest={data / 'train.jsonl'}", f"data.val_manifest={data / 'dev.jsonl'}",
        "data.test_manifest=null", "trainer.max_epochs=2", "trainer.limit_train_batches=null",
        "data.max_batch_seconds=30", *FAST,
    ])
    with caplog.at_level("WARNING", logger="asr.training.guards"):
        result = train(cfg)
    assert result["epochs"] == 2  # the run went on, two full epochs
    load_drops = {r["id"]: r["reason"] for r in result["rejected"] if r["split"] == "load"}
    assert set(load_drops) == set(victims)
    assert all(load_drops.values())
    assert "NaN or inf samples" in load_drops[list(victims)[3]]
    for uid in victims:  # logged once, though seen in both epochs
        assert sum(uid in r.message and "failed to load" in r.message for r in caplog.records) == 1
    assert _last(_metrics(tmp_path / "run"), "faults/dropped_utts") == len(victims)


def test_batch_of_only_failed_loads_is_skipped(tmp_path):
    ds = AudioDataset([Utterance(str(tmp_path / "gone.wav"), 1.0, "a", "gone")], CharTokenizer())
    batch = collate([ds[0]])
    assert batch.ids == [] and batch.audio.shape[0] == 0 and batch.dropped[0].id == "gone"
    assert "gone.wav" in batch.dropped[0].reason and batch.dropped[0].text == "a"


# ------------------------------------------------------------------- sample rate, channels, formats
@pytest.mark.parametrize("rate,channels,subtype,fmt", [
    (8000, 2, "PCM_16", "WAV"), (44100, 1, "FLOAT", "WAV"), (16000, 1, "PCM_U8", "WAV"),
    (22050, 2, "PCM_24", "FLAC"), (16000, 1, "DOUBLE", "WAV"), (48000, 6, "PCM_32", "WAV"),
])
def test_formats_are_converted_never_misread(tiny_dir, tmp_path, rate, channels, subtype, fmt):
    ref = load_audio(read_manifest(tiny_dir / "test.jsonl")[0].audio_filepath).numpy()
    import torchaudio.functional as AF

    x = AF.resample(torch.from_numpy(ref), 16000, rate).numpy() if rate != 16000 else ref
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(path, np.repeat(x[:, None], channels, axis=1), rate, subtype=subtype, format=fmt)
    info, reason = probe_audio(path)
    assert reason is None and info.samplerate == rate
    wav = load_audio(path, 16000).numpy()
    assert wav.ndim == 1 and abs(wav.size - ref.size) <= 3 and np.abs(wav).max() <= 1.0
    n = min(wav.size, ref.size) - 400
    assert np.corrcoef(wav[:n], ref[:n])[0, 1] > 0.9


# ------------------------------------------------------------- transcripts; CTC too short for label
def test_bad_transcripts_and_ctc_too_short_are_dropped_counted_listed(tiny_dir, tmp_path, caplog):
    src = read_manifest(tiny_dir / "test.jsonl") + read_manifest(tiny_dir / "dev.jsonl")
    short = min(src, key=lambda u: u.duration)
    rows = [
        Utterance(src[0].audio_filepath, src[0].duration, "", "empty"),
        Utterance(src[1].audio_filepath, src[1].duration, "héllo wörld 42 ☃", "oddchars"),
        Utterance(src[2].audio_filepath, src[2].duration, "  Hello   WORLD  ", "normalised"),
        Utterance(short.audio_filepath, short.duration, "a" * 400, "tooshort"),
        *src[3:8],
    ]
    from asr.data.manifest import write_manifest

    write_manifest(tmp_path / "m.jsonl", rows)
    module = ASRModule(
        CharTokenizer(), __import__("asr.features").features.LogMelFeatures(),
        __import__("asr.model").model.BiLSTMCTC(80, 29, hidden_size=16, num_layers=1))
    dm = ASRDataModule(CharTokenizer(), str(tmp_path / "m.jsonl"), str(tmp_path / "m.jsonl"),
                       output_frames=module.recognizer.output_frames, num_workers=0)
    with caplog.at_level("WARNING", logger="asr.data"):
        dm.setup("fit")
    train_ids = [u.id for u in dm.datasets["train"].utterances]
    assert "normalised" in train_ids and not {"empty", "oddchars", "tooshort"} & set(train_ids)
    reasons = {r["id"]: r["reason"] for r in dm.rejected if r["split"] == "train"}
    assert reasons["empty"] == "empty text" and "outside the tokenizer" in reasons["oddchars"]
    assert "too short for its label under CTC" in reasons["tooshort"]
    logged = "\n".join(r.message for r in caplog.records)
    assert "oddchars" in logged and "tooshort" in logged  # listed, not just counted
    # no inf loss: every kept training utterance has enough frames for its label
    batch = collate([dm.datasets["train"][i] for i in range(len(train_ids))])
    log_probs, lengths = module.recognizer(batch.audio, batch.audio_lengths)
    assert torch.isfinite(ctc_loss(log_probs, lengths, batch.targets, batch.target_lengths))


# ------------------------------------------------------------------------- NaN/inf loss or gradient
class _PoisonBatch(L.Callback):
    """Injects a NaN sample into the batch's audio at the given steps (a bit flip in host
    memory)."""

    def __init__(self, steps: set[int] | None) -> None:
        self.steps = steps

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.steps is None or trainer.global_step in self.steps:
            batch.audio[0, 100] = float("nan")


class _PoisonGrad(L.Callback):
    def __init__(self, steps: set[int]) -> None:
        self.steps = steps

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step in self.steps:
            next(pl_module.parameters()).grad.view(-1)[0] = float("inf")


class _Weights(L.Callback):
    def __init__(self) -> None:
        self.snapshots: dict[int, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.snapshots[trainer.global_step] = torch.cat([p.detach().flatten()
                                                         for p in pl_module.parameters()])


@pytest.mark.parametrize("variant", ["fused", "foreach", "unclipped"])
def test_nan_loss_and_inf_grad_steps_are_skipped_counted_logged(tiny_dir, tmp_path, caplog,
                                                                variant):
    """Fused AdamW skips on the device flag (found_inf); another optimiser has the bad step's
    gradients dropped; without clipping the norm still flags the step."""
    weights = _Weights()
    options = {"fused": [], "foreach": ["optim.optimizer.fused=false"],
               "unclipped": ["callbacks.non_finite.max_grad_norm=null"]}[variant]
    cfg = tiny_train_cfg(tiny_dir, tmp_path, ["trainer.limit_train_batches=6", *FAST, *options])
    with caplog.at_level("WARNING", logger="asr.training.guards"):
        result = train(cfg, extra_callbacks=[_PoisonBatch({1}), _PoisonGrad({3}), weights])
    assert result["skipped_steps"] == 2 and result["epochs"] == 1
    snaps = weights.snapshots  # keyed by global_step after the step
    # bad steps changed nothing
    assert torch.equal(snaps[1], snaps[2]) and torch.equal(snaps[3], snaps[4])
    assert not torch.equal(snaps[2], snaps[3]) and torch.isfinite(snaps[6]).all()
    skipped = [r.message for r in caplog.records if "skipped" in r.message]
    assert len(skipped) == 2 and "loss is nan" in skipped[0] and "gradient" in skipped[1]
    assert _last(_metrics(tmp_path), "faults/skipped_steps") == 2
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())


def test_two_clippings_are_refused_by_name(tiny_dir, tmp_path):
    cfg = tiny_train_cfg(tiny_dir, tmp_path, ["trainer.gradient_clip_val=1.0", *FAST])
    with pytest.raises(ValueError, match=r"max_grad_norm=5.0 and by trainer.gradient_clip_val=1.0"):
        train(cfg)


def test_consecutive_bad_steps_stop_the_run_with_a_clear_message(tiny_dir, tmp_path):
    cfg = tiny_train_cfg(tiny_dir, tmp_path, ["callbacks.non_finite.max_consecutive=3", *FAST])
    with pytest.raises(TrainingDiverged,
                       match=r"3 consecutive steps .* callbacks.non_finite.max_consecutive=3"):
        train(cfg, extra_callbacks=[_PoisonBatch(None)])


# --------------------------------------------------------------------- kill -9 mid-write, disk full
# One process pays for the imports once (module-scoped), then forks a child per command read from
# stdin:
#   "loop <path>": the child rewrites a 16 MB checkpoint at <path> in a loop, printing
#                  "<its pid> <version>" after each write, until it is killed;
#   "fsize <path>": the child saves a small checkpoint, limits its file size (RLIMIT_FSIZE) and
#                   saves a larger one, printing the CheckpointWriteError's errno and message.
# After each child is gone the server prints "reaped".
_WRITERS = textwrap.dedent("""
    import os, resource, signal, sys, torch
    from asr.training.checkpointing import CheckpointWriteError, atomic_torch_save
    for line in sys.stdin:
        command, path = line.split()
        pid = os.fork()
        if pid == 0 and command == "loop":
            i = 0
            while True:
                i += 1
                atomic_torch_save({"version": i, "w": torch.full((4_000_000,), float(i))}, path)
                print(os.getpid(), i, flush=True)
        if pid == 0:
            atomic_torch_save({"w": torch.ones(10)}, path)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
            try:
                atomic_torch_save({"w": torch.zeros(1_000_000)}, path)
            except CheckpointWriteError as err:
                print(err.errno, err, flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        print("reaped", flush=True)
""")


@pytest.fixture(scope="module")
def writers():
    """The fork server above: ``send(command, path)`` starts a child and returns the server's
    stdout."""
    server = subprocess.Popen([sys.executable, "-c", _WRITERS], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})

    def send(command: str, path: Path):
        server.stdin.write(f"{command} {path}\n")
        server.stdin.flush()
        return server.stdout

    yield send
    server.stdin.close()
    server.wait(timeout=60)


def _until_reaped(out) -> list[str]:
    """The server's lines up to "reaped" (the child is gone)."""
    lines = []
    while (line := out.readline()) != "reaped\n":
        assert line, "the writer server died"
        lines.append(line.strip())
    return lines


def test_kill9_during_checkpoint_writes_leaves_last_good_checkpoint(writers, tmp_path):
    """SIGKILL a process that rewrites a 16 MB checkpoint in a loop, 4 times: at random moments, and
    (every other time) as soon as its temporary file appears, i.e. during the write."""
    path = tmp_path / "ckpt" / "last.ckpt"
    rng = random.Random(0)
    mid_write = 0
    for k in range(4):
        out = writers("loop", path)
        pid = int(out.readline().split()[0])  # at least one write finished
        if k % 2:
            partial = path.parent / f".last.ckpt.{pid}.partial"
            deadline = time.monotonic() + 10
            while not partial.exists() and time.monotonic() < deadline:
                pass
        else:
            time.sleep(rng.uniform(0.0, 0.3))
        os.kill(pid, signal.SIGKILL)
        _until_reaped(out)  # the writer is gone
        mid_write += any(path.parent.glob(".*.partial"))
        ckpt = load_checkpoint(path)
        assert torch.equal(ckpt["w"], torch.full((4_000_000,), float(ckpt["version"])))
        remove_partials(path.parent)
    assert mid_write >= 1, "no kill landed mid-write; the test proved nothing"


@pytest.fixture
def small_disk(tmp_path):
    """A real 3 MiB tmpfs (needs root); skipped where mounting is not allowed."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs",
                                            str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_disk_full_while_checkpointing_keeps_previous(small_disk):
    path = small_disk / "last.ckpt"
    atomic_torch_save({"w": torch.ones(400_000)}, path)  # 1.6 MB fits
    with pytest.raises(CheckpointWriteError,
                       match=r"last.ckpt: the disk is full .* previous checkpoint"):
        atomic_torch_save({"w": torch.zeros(400_000)}, path)  # a second copy beside it does not
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(400_000))
    assert sorted(p.name for p in small_disk.iterdir()) == ["last.ckpt"]  # no partial file left


def test_write_failure_keeps_previous_without_root(writers, tmp_path):
    """The same guarantee with a real failing write(2) (file size limit, EFBIG), for non-root
    runs."""
    path = tmp_path / "last.ckpt"
    printed = " ".join(_until_reaped(writers("fsize", path)))
    assert printed.startswith(str(errno.EFBIG)) and "previous checkpoint there is intact" in printed
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


# ------------------------------------------------ config key, data dir, checkpoint: one-line errors
def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "asr.train", *args], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=300)


def _tiny_args(tiny_dir: Path, tmp_path: Path) -> list[str]:
    return [*tiny_recipe_overrides(tiny_dir.parent), f"paths.exp_dir={tmp_path}",
            "data_check=false"]


def test_missing_manifest_is_one_line_error(tiny_dir, tmp_path):
    proc = _cli(*_tiny_args(tiny_dir, tmp_path), f"data.train_manifest={tmp_path}/nope/train.jsonl")
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert (proc.returncode == 2 and "Traceback" not in proc.stderr
            and len(err) == 1), proc.stderr[-2000:]
    assert "data.train_manifest=" in err[0] and "nope/train.jsonl does not exist" in err[0]
    assert "python -m asr.prepare recipe=tiny stage=all" in err[0]


def test_missing_manifest_names_the_recipe_stage(tiny_dir, tmp_path):
    cfg = tiny_train_cfg(tiny_dir, tmp_path, [f"data.val_manifest={tmp_path}/dev.jsonl"])
    with pytest.raises(FileNotFoundError,
                       match=r"data.val_manifest=.*python -m asr.prepare recipe=tiny stage=all"):
        train(cfg)
    cfg = tiny_train_cfg(tiny_dir, tmp_path,
                         ["prepare=null", f"data.train_manifest={tmp_path}/train.jsonl"])
    with pytest.raises(FileNotFoundError,
                       match=r"data.train_manifest=.*no recipe prepare step is set"):
        train(cfg)
    cfg = tiny_train_cfg(tiny_dir, tmp_path, [f"resume={tmp_path}/gone.ckpt"])
    with pytest.raises(FileNotFoundError,
                       match="resume=.*gone.ckpt: no such checkpoint; use resume=auto"):
        train(cfg)


# keeps the default suite within 5 minutes on 2 cores; CI runs it (make test-slow)
@pytest.mark.slow
def test_mistyped_model_key_is_one_line_error(tiny_dir, tmp_path):
    proc = _cli("+model.hiden_size=3", *_tiny_args(tiny_dir, tmp_path))
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(err) == 1
    assert "hiden_size" in err[0] and "model.*" in err[0]


# ---------------------------------------------------------------------------- untrusted checkpoints
class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['EVIL_MARK']}",))


def test_untrusted_checkpoint_runs_no_code(tiny_checkpoint, tmp_path, monkeypatch):
    mark = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARK", str(mark))
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt["payload"] = _Evil()
    torch.save(ckpt, tmp_path / "evil.ckpt", pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        Recognizer.load(tmp_path / "evil.ckpt")
    from asr.training.checkpointing import AtomicCheckpointIO

    with pytest.raises(ValueError, match="cannot be loaded safely"):  # the resume path too
        AtomicCheckpointIO().load_checkpoint(tmp_path / "evil.ckpt")
    assert not mark.exists()


@pytest.mark.parametrize("edit,match", [
    (lambda m: m["model"].update(_target_="os.system"),
     r"asr.model has unexpected keys \['_target_'\]"),
    (lambda m: m.update(hydra={"_target_": "os.system"}), r"unexpected keys \['hydra'\]"),
    (lambda m: m["features"].update(n_mels=[80]), r"asr.features.n_mels must be a number"),
    (lambda m: m["tokenizer"].update(vocab=["a"]), r"asr.tokenizer values must be strings"),
    (lambda m: m.update(eval_manifests={"test": 3}),
     r"eval_manifests must map names to path strings"),
])
def test_checkpoint_description_is_validated(tiny_checkpoint, tmp_path, edit, match):
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    edit(ckpt[CHECKPOINT_KEY])
    torch.save(ckpt, tmp_path / "odd.ckpt")
    with pytest.raises(ValueError, match=match):
        Recognizer.load(tmp_path / "odd.ckpt")


def test_truncated_checkpoint_is_a_clear_error(tiny_checkpoint, tmp_path):
    data = tiny_checkpoint.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.ckpt cannot be loaded safely.*truncated"):
        Recognizer.load(tmp_path / "cut.ckpt")


# ---------------------------------------------------------------------------------- archive escapes
def test_archive_hardlink_escape_is_refused(tmp_path):
    """Symlink, ``..`` and absolute-path members are covered in test_an4_download.py; a hard link
    here."""
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("an4/hard")
        info.type = tarfile.LNKTYPE
        info.linkname = "../../etc/passwd"
        tf.addfile(info)
    with pytest.raises(ValueError, match="refusing"):
        extract_tar(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "an4" / "hard").exists()


# -------------------------------------------------------------- fuzz: damaged files and transcripts
ODD = ["", "   ", "x" * 3000, "héllo wörld", "42 ☃ \t tab", "ALL\u200bZERO\u00a0WIDTH",
       "(PAREN) [B] {C}", "Ω≈ç√", "NORMAL WORDS HERE", "a'postrophe"]


def _damage(rng: random.Random, path: Path) -> str:
    kind = rng.choice(["ok", "ok", "half", "header-only", "zero", "random", "bad-magic", "missing",
                       "bitflip", "tiny"])
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


def test_fuzz_220_damaged_files_and_transcripts_through_prepare_and_one_epoch(tiny_dir, tmp_path):
    """220 copies of the fixture's real files, damaged at random, with odd transcripts, through the
    AN4 prepare code and one epoch of the AN4 recipe's model pair (word classes + character
    intermediate CTC): every file and transcript is kept or rejected with a reason; a transcript
    whose words the word model has as classes but whose characters the intermediate CTC cannot
    spell ("héllo") is rejected by the rule the data check shares, and training goes on."""
    rng = random.Random(0)
    tree = tmp_path / "an4"
    utts = an4_tree(tiny_dir, tree, n_train=200, n_test=20)
    for u in utts.values():
        _damage(rng, u["path"])
        if rng.random() < 0.3:
            u["text"] = rng.choice(ODD + [None])  # None: no transcript line at all
    write_etc(tree, utts)
    manifests = prepare(str(tree), str(tmp_path / "cache"), dev_size=20, progress=False)
    rejected = [json.loads(x) for x in (tree / "rejected.jsonl").read_text().splitlines()]
    assert all(r["reason"] for r in rejected)
    kept = {u.id for m in manifests.values() for u in read_manifest(m)}
    assert (kept | {r["id"] for r in rejected} == set(utts)
            and not kept & {r["id"] for r in rejected})
    # a few files break after prepare: they must be dropped at load time, with a reason
    train_utts = read_manifest(manifests["train"])
    for u in rng.sample(train_utts, 8):
        Path(u.audio_filepath).write_bytes(os.urandom(2000))
    out = tmp_path / "run"
    cfg = tiny_train_cfg(tiny_dir, out, [
        f"data.train_manifest={manifests['train']}", f"data.val_manifest={manifests['dev']}",
        "data.test_manifest=null", "trainer.limit_train_batches=null", "eval_manifests={}",
        "model.hidden_size=16", "callbacks.non_finite.max_consecutive=0", "tokenizer=word",
        "inter_ctc=self_conditioned",
    ])
    result = train(cfg)
    assert result["epochs"] == 1
    assert all(r["reason"] for r in result["rejected"])
    loads = [r for r in result["rejected"] if r["split"] == "load"]
    assert loads and all("Error" in r["reason"] or "samples" in r["reason"] for r in loads)

    # the word vocabulary comes from these transcripts, so it has "héllo" as a class; the
    # characters below do not
    words = WordTokenizer(train_manifest=manifests["train"])
    spellable = set(CharTokenizer().vocab)
    odd = [u for u in train_utts if set(normalize_text(u.text)) - spellable]
    assert [u for u in odd if not words.unknown_chars(normalize_text(u.text))], \
        "no word-class-only transcript"
    reasons = {r["id"]: r["reason"] for r in result["rejected"] if r["split"] == "train"}
    for u in odd:
        assert reasons[u.id].startswith("characters outside the tokenizer"), \
            (u.id, u.text, reasons.get(u.id))
    check = json.loads((out / "data_check.json").read_text())["train"]
    text_rejects = [i for i, why in reasons.items()
                    if why == "empty text" or why.startswith("characters outside")]
    # the data check counts what training drops
    assert check["unusable_text"] == len(text_rejects) >= len(odd)
    print(f"\nfuzz: {len(utts)} utterances, {len(rejected)} rejected at prepare, "
          f"{len(result['rejected']) - len(loads)} dropped from manifests ({len(odd)} for the "
          f"intermediate CTC's characters), {len(loads)} dropped at load, "
          f"{result['skipped_steps']} steps skipped")
