"""Fine-tuning (``init_from=<.ckpt or model folder>``, ``finetune.*``): real tiny training runs on
the committed AN4 fixture (``recipe=tiny``) with a real Lightning Trainer on CPU. The source is a
word model with global CMVN and self-conditioned intermediate CTC over characters."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import pytorch_lightning as L
import torch
from hydra.utils import instantiate

from asr.model_files import read_checkpoint, recognizer_state
from asr.recognizer import Recognizer
from asr.train import train
from asr.training.init_from import FreezeEncoder, init_from
from tests.conftest import tiny_train_cfg

LSTM = "model.lstm."
SOURCE = ["tokenizer=word", "features.normalize=global", "global_stats_utterances=10",
          "inter_ctc=self_conditioned", "model.hidden_size=32"]
# the source's architecture and features, for the runs that start from it
LIKE_SOURCE = ["features.normalize=global", "inter_ctc=self_conditioned", "model.hidden_size=32"]


class Snapshots(L.Callback):
    """The recognizer's tensors when training starts (``at[global_step]``), after each optimiser
    step (``at[steps done]``: weight noise is off again by then) and at the end."""

    def __init__(self) -> None:
        self.at: dict[int | str, dict[str, torch.Tensor]] = {}
        self.trainable_at_end: bool | None = None

    @staticmethod
    def _state(pl_module) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in pl_module.recognizer.state_dict().items()}

    def on_train_start(self, trainer, pl_module):
        self.at[trainer.global_step] = self._state(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.at[trainer.global_step] = self._state(pl_module)

    def on_train_end(self, trainer, pl_module):
        self.at["end"] = self._state(pl_module)
        self.trainable_at_end = all(p.requires_grad for p in pl_module.parameters())


def _same(a: dict, b: dict, prefix: str) -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys, prefix
    return all(torch.equal(a[k], b[k]) for k in keys)


def _run_info(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


@pytest.fixture(scope="module")
def source(tiny_dir, tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor], dict]:
    """A word model trained 3 steps: its best.ckpt, its recognizer tensors, its description."""
    out = tmp_path_factory.mktemp("source")
    result = train(tiny_train_cfg(tiny_dir, out, [*SOURCE, "eval_manifests=null"]))
    ckpt = read_checkpoint(result["best_checkpoint"])
    return Path(result["best_checkpoint"]), recognizer_state(ckpt), ckpt["asr"]


def test_word_model_fine_tuned_with_characters(source, tiny_dir, tmp_path, caplog):
    """tokenizer=char from a word model: the output layer is new (char classes), the encoder and
    the character-level intermediate layers are the source's at step 0, and stay bit-identical
    through the 2 frozen steps (AdamW's weight decay included) while the output layer learns;
    the third step moves them (weight noise, which skips frozen weights, on). Global statistics
    kept; the run decodes."""
    ckpt, src, meta = source
    snaps = Snapshots()
    with caplog.at_level(logging.INFO, logger="asr.training.init_from"):
        result = train(tiny_train_cfg(tiny_dir, tmp_path, [
            *LIKE_SOURCE, "tokenizer=char", f"init_from={ckpt}", "finetune.freeze_encoder_steps=2",
            "callbacks=[default,weight_noise]"]), extra_callbacks=[snaps])
    start, frozen, end = snaps.at[0], snaps.at[2], snaps.at["end"]
    assert start["model.classifier.weight"].shape == (29, 64)
    assert src["model.classifier.weight"].shape == (meta["model"]["num_classes"], 64) != (29, 64)
    for prefix in (LSTM, "model.inter_classifier.", "model.condition_proj.", "features.global_"):
        assert _same(start, src, prefix), prefix
    assert _same(frozen, src, LSTM)
    assert not torch.equal(frozen["model.classifier.weight"], start["model.classifier.weight"])
    assert not _same(end, src, LSTM) and snaps.trainable_at_end
    # one message names the tensors made anew and why
    anew = [r.getMessage() for r in caplog.records if "made anew" in r.getMessage()]
    assert len(anew) == 1 and "model.classifier.weight" in anew[0] and (
        f"tokenizer differs: word ({meta['model']['num_classes']} classes) -> char (29 classes)"
        in anew[0])
    info = _run_info(tmp_path)["init_from"]
    assert info == {"source": str(ckpt), "copied": len(src) - 2 - 2, "applied": True,
                    "renewed": ["model.classifier.weight", "model.classifier.bias"],
                    "dropped": [], "cmvn": "kept"}  # less the output layer and features.mel.*
    kept = json.loads((tmp_path / "global_stats.json").read_text())
    assert kept["kept_from"] == str(ckpt) and torch.equal(torch.tensor(kept["mean"]),
                                                          src["features.global_mean"])
    hyps = (tmp_path / "decode" / "test" / "hyps.txt").read_text().splitlines()
    assert result["reports"]["test"]["utterances"] == len(hyps) == 4
    assert Recognizer.load(result["best_checkpoint"]).tokenizer.state_dict()["type"] == "char"


def test_fine_tune_from_a_model_folder_refits_the_statistics(source, tiny_dir, tmp_path):
    """A float model folder, the same tokenizer: every tensor is the source's at step 0 but the
    global statistics, fitted on this run's training data (keep_cmvn=false: 25 utterances, the
    source used 10)."""
    ckpt, src, _ = source
    folder = Recognizer.load(ckpt).save_pretrained(tmp_path / "folder")
    snaps = Snapshots()
    run = tmp_path / "run"
    train(tiny_train_cfg(tiny_dir, run, [
        *LIKE_SOURCE, "tokenizer=word", f"init_from={folder}", "finetune.keep_cmvn=false",
        "eval_manifests=null"]), extra_callbacks=[snaps])
    start = snaps.at[0]
    assert _same(start, src, "model.")
    fitted = json.loads((run / "global_stats.json").read_text())
    assert fitted["utterances"] == 25
    for key in ("mean", "std"):
        assert torch.equal(start[f"features.global_{key}"], torch.tensor(fitted[key]))
        assert not torch.equal(start[f"features.global_{key}"], src[f"features.global_{key}"])
    info = _run_info(run)["init_from"]
    assert info["renewed"] == [] and info["cmvn"] == "refitted" and info["source"] == str(folder)


def test_a_model_of_another_shape_is_refused_naming_the_setting(source, tiny_dir, tmp_path):
    """hidden_size 32 there, 48 here: the tensor, both shapes, the source and the setting; also
    other layer counts, other features and int8 folders. Nothing is trained."""
    ckpt, _, _ = source
    with pytest.raises(ValueError) as err:
        train(tiny_train_cfg(tiny_dir, tmp_path / "wide", [
            "features.normalize=global", "inter_ctc=self_conditioned", "model.hidden_size=48",
            f"init_from={ckpt}"]))
    assert str(err.value) == (
        f"init_from={ckpt}: model.lstm.layers.0.fwd.weight_ih_l0 has shape (128, 240) there "
        "and (192, 240) here: set model.hidden_size=32 (the source's; this run has 48)")
    assert not (tmp_path / "wide" / "checkpoints").exists()

    def module(extra: list[str]):
        cfg = tiny_train_cfg(tiny_dir, tmp_path / "x", [*LIKE_SOURCE, "tokenizer=char", *extra])
        return instantiate(cfg.module)(tokenizer=instantiate(cfg.tokenizer))

    with pytest.raises(ValueError, match=r"missing there: \['model.lstm.layers.2.bwd.bias_hh_l0'"
                                         r".*set model.num_layers=2 \(the source's; this run "
                                         r"has 3\)"):
        init_from(module(["model.num_layers=3"]), ckpt)
    with pytest.raises(ValueError, match=r"features.n_mels=80, this run has 40: set "
                                         r"features.n_mels=80"):
        init_from(module(["features.n_mels=40"]), ckpt)
    int8 = Recognizer.load(ckpt).save_pretrained(tmp_path / "int8", quantize="int8")
    with pytest.raises(ValueError, match=rf"init_from={int8}: the model folder holds int8 weights"
                                         r".*use the float folder .* or the .ckpt"):
        init_from(module([]), int8)
    with pytest.raises(FileNotFoundError, match=f"init_from={tmp_path / 'nope.ckpt'}: "):
        init_from(module([]), tmp_path / "nope.ckpt")
    run_dir = ckpt.parent.parent
    with pytest.raises(FileNotFoundError, match=f"training run's folder.*init_from={ckpt}"):
        init_from(module([]), run_dir)
    with pytest.raises(ValueError, match="finetune.freeze_encoder_steps=5 freezes a trained "
                                         "encoder, but init_from is not set"):
        train(tiny_train_cfg(tiny_dir, tmp_path / "free", ["finetune.freeze_encoder_steps=5"]))
    # a fine-tuning recipe (finetune.required, as an4-robust-ft) without init_from stops at once
    with pytest.raises(ValueError, match="fine-tunes a trained model.*add init_from="):
        train(tiny_train_cfg(tiny_dir, tmp_path / "req", ["finetune.required=true"]))
    assert not (tmp_path / "req").exists()


def test_freezing_under_ddp_needs_find_unused_parameters():
    """Two DDP processes: the frozen weights get no gradient, which DDP must be told of (the
    Trainers are only built: nothing is launched)."""
    freeze = FreezeEncoder(2)
    ddp = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    with pytest.raises(ValueError, match="trainer.strategy=ddp_find_unused_parameters_true"):
        freeze.setup(ddp, None, "fit")
    freeze.setup(L.Trainer(accelerator="cpu", devices=2, logger=False,
                           strategy="ddp_find_unused_parameters_true"), None, "fit")
    freeze.setup(L.Trainer(accelerator="cpu", devices=1, logger=False), None, "fit")


def test_resuming_a_fine_tuning_run_does_not_apply_init_from_again(source, tiny_dir, tmp_path):
    """resume=auto on a fresh dir starts from init_from; its resumption continues last.ckpt and
    does not read the source again (here deleted in between). The encoder, frozen for 4 steps,
    stays frozen for the resumed run's first step (global_step 3) and moves after."""
    ckpt, src, _ = source
    copy = tmp_path / "source.ckpt"
    shutil.copy(ckpt, copy)
    common = [*LIKE_SOURCE, "tokenizer=char", f"init_from={copy}", "resume=auto",
              "finetune.freeze_encoder_steps=4", "eval_manifests=null",
              "+trainer.limit_val_batches=1"]
    run = tmp_path / "run"
    first = Snapshots()
    train(tiny_train_cfg(tiny_dir, run, [*common, "trainer.max_epochs=1"]), extra_callbacks=[first])
    assert _same(first.at[0], src, LSTM) and _run_info(run)["init_from"]["applied"] is True
    copy.unlink()
    last = recognizer_state(read_checkpoint(run / "checkpoints" / "last.ckpt"))
    assert _same(last, src, LSTM) and not _same(last, first.at[0], "model.classifier.")
    again = Snapshots()
    train(tiny_train_cfg(tiny_dir, run, [*common, "trainer.max_epochs=2"]), extra_callbacks=[again])
    assert list(again.at) == [3, 4, 5, 6, "end"]  # steps 3..5: the second epoch only
    assert _same(again.at[3], last, "") and _same(again.at[4], src, LSTM)
    assert not _same(again.at[5], src, LSTM) and again.trainable_at_end
    assert _run_info(run)["init_from"] == {"source": str(copy), "applied": False,
                                           "resumed_from": str(run / "checkpoints" / "last.ckpt")}
