"""The training step never reads a number back from the device (on a GPU, every such read stalls
the host until the queued kernels finish).

On the CPU nothing tells a device tensor from a host one, so :class:`DeviceReads` keeps the
distinction itself: at each training batch's start it marks what would live on the accelerator
(parameters, buffers, optimiser state, the batch's waveforms and targets) and, through a dispatch
mode, everything computed from them or made by a factory (``torch.arange(..., device=...)``); the
batch's lengths, kept on the host, stay unmarked. Any host read of a marked tensor until the
batch's end (``item``/``float``/``bool``, ``tolist``, ``cpu``, ``numpy``, ``nonzero``, boolean
indexing, ``torch.equal``) is recorded with where it happened. A real Lightning run of the tiny
recipe goes through it: forward, CTC, intermediate CTC over re-encoded targets, backward, the
guard's clipping and skip flag, the fused optimiser, the scheduler and every callback's batch
hooks.
"""

from __future__ import annotations

import traceback

import pytest
import pytorch_lightning as L
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakTensorKeyDictionary

from asr.train import train
from tests.conftest import tiny_train_cfg

aten = torch.ops.aten
READS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default,
         aten.nonzero.default, aten.masked_select.default, aten._unique2.default,
         aten.unique_consecutive.default}
HOST_METHODS = ("tolist", "cpu", "numpy", "item")


class DeviceReads(L.Callback, TorchDispatchMode):
    """Records host reads of would-be device tensors between each training batch's start and end
    (see above)."""

    def __init__(self) -> None:
        L.Callback.__init__(self)
        TorchDispatchMode.__init__(self)
        self.marked: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self.reads: list[str] = []
        self.steps = 0
        self._saved: dict[str, object] = {}

    def _mark(self, tensors) -> None:
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self.marked[t] = True

    def _is_marked(self, t: object) -> bool:
        return isinstance(t, torch.Tensor) and t in self.marked

    def _record(self, what: str) -> None:
        ours = [f for f in traceback.extract_stack()[:-2]
                if "/asr/" in f.filename or "lightning" in f.filename]
        where = (f"{ours[-1].filename.split('/site-packages/')[-1]}:{ours[-1].lineno}" if ours
                 else "?")
        self.reads.append(f"{what} at {where}")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [a for a in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(a, torch.Tensor)]
        marked = any(self._is_marked(a) for a in inputs)
        if marked and (func in READS or (func is aten.index.Tensor and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1]))):
            self._record(str(func))
        out = func(*args, **kwargs)
        factory = not inputs and func not in (aten.lift_fresh.default, aten.lift_fresh_copy.default)
        if func is aten._pack_padded_sequence.default:
            self._mark([out[0]])  # its batch_sizes are a host tensor on every device
        elif marked or factory:
            self._mark(t for t in torch.utils._pytree.tree_leaves(out))
        return out

    def _patch_host_methods(self) -> None:
        for name in HOST_METHODS:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original

            def patched(t, *args, _name=name, _original=original, **kwargs):
                if self._is_marked(t):
                    self._record(f"Tensor.{_name}()")
                return _original(t, *args, **kwargs)

            setattr(torch.Tensor, name, patched)

    def _unpatch(self) -> None:
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        self._saved.clear()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._mark(pl_module.parameters())
        self._mark(pl_module.buffers())
        for optimizer in trainer.optimizers:
            for state in optimizer.state.values():
                self._mark(state.values())
        self._mark(t for t in (batch.audio, batch.targets, batch.inter_targets) if t is not None)
        self._patch_host_methods()
        self.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.__exit__(None, None, None)
        self._unpatch()
        self.steps += 1


# the AN4 recipe's shape: word outputs, self-conditioned intermediate CTC over characters
# (re-encoded targets), SpecAugment, speed perturbation, clipping; logs and flag reads left to
# their periods (here longer than the run)
AN4_LIKE = ["tokenizer=word", "inter_ctc=self_conditioned", "model.num_layers=3",
            "data.speed_perturb=[0.9,1.0,1.1]", "trainer.log_every_n_steps=1000",
            "callbacks.throughput.every_n_steps=1000",
            "callbacks.non_finite.check_every_n_steps=1000", "trainer.limit_train_batches=4",
            "eval_manifests={}", "data_check=false"]


@pytest.mark.parametrize("lstm", ["dense", "packed"])
def test_the_training_step_reads_nothing_back_from_the_device(tiny_dir, tmp_path, lstm):
    reads = DeviceReads()
    cfg = tiny_train_cfg(tiny_dir, tmp_path, [*AN4_LIKE, f"model.lstm={lstm}"])
    train(cfg, extra_callbacks=[reads])
    assert reads.steps == 4
    assert reads.reads == []


def test_the_check_sees_a_read_where_there_is_one(tiny_dir, tmp_path):
    """The guard reading its flags every step (its CPU default) is a host read in the step, and is
    seen."""
    reads = DeviceReads()
    overrides = [o for o in AN4_LIKE if not o.startswith("callbacks.non_finite")]
    train(tiny_train_cfg(tiny_dir, tmp_path,
                         [*overrides, "callbacks.non_finite.check_every_n_steps=1"]),
          extra_callbacks=[reads])
    assert reads.steps == 4
    assert any("guards.py" in r for r in reads.reads), reads.reads
