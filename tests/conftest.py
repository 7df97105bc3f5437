"""Shared fixtures: the real AN4 corpus and LibriSpeech samples from ../shared/data, composed configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ASR_SHARED_DATA", ROOT.parent / "shared" / "data"))
AN4_ARCHIVE = SHARED / "an4_sphere.tar.gz"
LIBRI = SHARED / "librispeech-samples" / "LibriSpeech"

needs_an4 = pytest.mark.skipif(
    not AN4_ARCHIVE.is_file(), reason=f"AN4 archive not found at {AN4_ARCHIVE} (set ASR_SHARED_DATA)"
)


@pytest.fixture(scope="session")
def an4_dir(tmp_path_factory) -> Path:
    """AN4 extracted and prepared once per session (train/dev/test.jsonl) from the shared archive."""
    if not AN4_ARCHIVE.is_file():
        pytest.skip(f"AN4 archive not found at {AN4_ARCHIVE} (set ASR_SHARED_DATA)")
    from asr.corpora.an4 import prepare

    data = tmp_path_factory.mktemp("an4")
    # The archive is already "in the cache": the URL below is never fetched.
    prepare(str(data), str(SHARED), url="http://127.0.0.1:9/never-fetched", progress=False)
    return data


def compose_train(overrides: list[str]) -> DictConfig:
    """The real conf/train.yaml composed with ``overrides`` (as the command line would)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def tiny_train_cfg(an4_dir: Path, out_dir: Path, extra: list[str] = ()) -> DictConfig:
    """AN4 recipe config shrunk to run a few CPU steps: small model, few batches, no progress bars."""
    cfg = compose_train(
        [
            "recipe=an4",
            f"paths.data_dir={an4_dir.parent}",
            f"prepare.data_dir={an4_dir}",
            f"paths.download_dir={SHARED}",
            f"paths.output_dir={out_dir}",
            "model.hidden_size=32",
            "model.num_layers=2",  # the recipe's intermediate CTC sits on layer 1 of 2
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=3",
            "+trainer.limit_val_batches=2",
            "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false",
            "+trainer.enable_model_summary=false",
            "data.num_workers=0",
            "validate_from=0",  # every epoch, as the tests of model selection assume (the recipe: 0.5)
            *extra,
        ]
    )
    with open_dict(cfg):
        cfg.prepare.progress = False
    return cfg


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A small untrained BiLSTM-CTC saved as an asr checkpoint (what ``load_for_inference`` reads).

    Decoding, export and transcription tests need the real network and checkpoint format, not a good model.
    """
    import torch

    from asr.features import LogMelFeatures
    from asr.model import BiLSTMCTC
    from asr.module import CHECKPOINT_KEY, ASRModule
    from asr.text import CharTokenizer

    torch.manual_seed(0)
    module = ASRModule(CharTokenizer(), LogMelFeatures(), BiLSTMCTC(80, 29, hidden_size=32, num_layers=2))
    path = tmp_path_factory.mktemp("tiny") / "checkpoints" / "best.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": module.state_dict(), CHECKPOINT_KEY: module.describe(), "global_step": 0}, path)
    return path
