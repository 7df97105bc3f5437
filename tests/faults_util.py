"""Helpers of the fault-injection tests: a small AN4-layout corpus built from real AN4 audio (the
committed fixture's, or the full corpus's), and :class:`ParkAfterCheckpoint`, which holds a
training run where a test kills it."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import time
from pathlib import Path

import pytorch_lightning as L

from asr.data.manifest import Utterance, read_manifest


class ParkAfterCheckpoint(L.Callback):
    """A test helper callback, added on the command line: ``+callbacks.park.marker=<file>
    +callbacks.park._target_=tests.faults_util.ParkAfterCheckpoint``.

    Once the run's first checkpoint is on disk and ``after_steps`` more optimizer steps are
    done, each rank writes ``<marker>.rank<R>`` (the global step) at the start of its next
    batch and waits there to be killed: the kill lands on that event, not on a time. (The
    first save's ``on_save_checkpoint`` comes before the write, but rank 0 writes the file
    and every rank passes the save's barrier before a next batch starts.) A rank left
    waiting, its test gone, exits after ``max_wait_s``.
    """

    def __init__(self, marker: str, after_steps: int = 1, max_wait_s: float = 600.0) -> None:
        self.marker, self.after_steps, self.max_wait_s = marker, after_steps, max_wait_s
        self.saved_at: int | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict) -> None:
        if self.saved_at is None:
            self.saved_at = trainer.global_step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch,
                             batch_idx: int) -> None:
        if self.saved_at is None or trainer.global_step < self.saved_at + self.after_steps:
            return
        Path(f"{self.marker}.rank{trainer.global_rank}").write_text(f"{trainer.global_step}\n")
        deadline = time.monotonic() + self.max_wait_s
        while time.monotonic() < deadline:
            time.sleep(0.1)
        os._exit(17)  # never killed: stop, saving nothing


def _cycle(utts: list[Utterance], n: int) -> list[tuple[Utterance, int]]:
    """``n`` of ``utts`` with the pass each comes from: all of them once, then again (pass 1, 2,
    ...) as needed."""
    return list(itertools.islice(((u, k) for k in itertools.count() for u in utts), n))


def an4_tree(prepared: Path, dest: Path, n_train: int, n_test: int) -> dict[str, dict]:
    """Copy ``n_train``/``n_test`` real AN4 utterances of a prepared corpus (``train``+``dev`` /
    ``test``) into an AN4-layout tree ``dest`` (ready to prepare). When more are asked for than the
    corpus has, its files are copied again as other speakers (``<spk>c<k>/<id>-c<k>``): the same
    real audio under new ids.

    Returns:
        ``{id: {"path": audio Path, "text": TEXT, "split": "train"|"test", "fid": fileid}}``, the
        caller may damage the files or edit ``text`` and then call :func:`write_etc`.
    """
    utts = {}
    train = read_manifest(prepared / "train.jsonl") + read_manifest(prepared / "dev.jsonl")
    test = read_manifest(prepared / "test.jsonl")
    for split, chosen in (("train", _cycle(train, n_train)), ("test", _cycle(test, n_test))):
        for u, k in chosen:
            src = Path(u.audio_filepath)
            suffix = f"c{k}" if k else ""
            uid = f"{u.id}-{suffix}" if k else u.id
            fid = f"{src.parent.parent.name}/{src.parent.name}{suffix}/{uid}"
            dst = dest / "an4" / "wav" / (fid + ".sph")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            utts[uid] = {"path": dst, "text": u.text.upper(), "split": split, "fid": fid}
    (dest / ".extracted").touch()  # prepare() then neither downloads nor extracts
    return utts


def write_etc(dest: Path, utts: dict[str, dict]) -> None:
    """Write ``an4/etc/an4_{train,test}.{transcription,fileids}`` for the utterances of
    :func:`an4_tree`."""
    etc = dest / "an4" / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        mine = [(uid, u) for uid, u in utts.items() if u["split"] == split]
        (etc / f"an4_{split}.fileids").write_text("".join(u["fid"] + "\n" for _, u in mine))
        lines = [f"<s> {u['text']} </s> ({uid})\n" for uid, u in mine if u["text"] is not None]
        (etc / f"an4_{split}.transcription").write_text("".join(lines), encoding="utf-8")


class KillAt(L.Callback):
    """A test helper callback, added on the command line: ``+callbacks.kill._target_=
    tests.faults_util.KillAt +callbacks.kill.event=validation +callbacks.kill.epoch=1``.

    SIGKILLs its own process when ``event`` happens in epoch ``epoch``: ``validation`` (its first
    validation batch) or ``epoch_start`` (after the previous epoch's checkpoints are all written).
    """

    EVENTS = ("validation", "epoch_start")

    def __init__(self, event: str, epoch: int) -> None:
        if event not in self.EVENTS:
            raise ValueError(f"event={event!r}: one of {self.EVENTS}")
        self.event, self.epoch = event, epoch

    def _kill(self, trainer: L.Trainer, event: str) -> None:
        if event == self.event and trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_validation_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if not trainer.sanity_checking:
            self._kill(trainer, "validation")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._kill(trainer, "epoch_start")
