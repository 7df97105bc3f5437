"""Every recipe composes and builds its parts (module, callbacks, loggers, Trainer, DataModule)
without touching any data; the AN4 recipe composes to the settings its README states. No corpus
needed."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue
from pytorch_lightning.callbacks import ModelCheckpoint

from asr.data.corpora.librispeech import LibriSpeechDataModule
from asr.data.datamodule import ASRDataModule
from asr.text import CharTokenizer
from asr.train import build_trainer, instantiate_all
from asr.training.averaging import AverageBest
from asr.training.callbacks import ValidateFrom
from asr.training.module import ASRModule
from tests.conftest import ROOT, compose_train

RECIPES = sorted(p.stem for p in (ROOT / "conf" / "recipe").glob("*.yaml"))
LIBRISPEECH_SUBSETS = {"dev-clean", "dev-other", "test-clean", "test-other"}
# per recipe: (layers, units, tokenizer class, intermediate CTC layer or None, eval manifest names,
# DataModule class)
EXPECTED = {
    "an4": (3, 256, "asr.text.WordTokenizer", 2, {"dev", "test"}, ASRDataModule),
    "an4-robust": (3, 256, "asr.text.WordTokenizer", 2, {"dev", "test"}, ASRDataModule),
    "an4-robust-ft": (3, 256, "asr.text.WordTokenizer", 2, {"dev", "test"}, ASRDataModule),
    "tiny": (2, 64, "asr.text.CharTokenizer", None, {"dev", "test"}, ASRDataModule),
    "librispeech-100h": (4, 512, "asr.text.CharTokenizer", None, LIBRISPEECH_SUBSETS,
                         LibriSpeechDataModule),
    "librispeech-960h": (5, 1024, "asr.text.CharTokenizer", None, LIBRISPEECH_SUBSETS,
                         LibriSpeechDataModule),
    "none": (3, 256, "asr.text.CharTokenizer", None, {"dev", "test"}, ASRDataModule),
}
DEFAULT_CALLBACKS = {"best_checkpoint", "last_checkpoint", "throughput", "non_finite",
                     "dropped_utterances", "progress_bar"}


def recipe_overrides(recipe: str, tmp: Path) -> list[str]:
    """Every path the recipe could write to or read from, under ``tmp`` (none of them created)."""
    overrides = [f"recipe={recipe}", f"paths.data_dir={tmp / 'data'}",
                 f"paths.download_dir={tmp / 'downloads'}", f"paths.exp_dir={tmp / 'exp'}",
                 f"paths.output_dir={tmp / 'run'}"]
    if recipe.startswith("an4-robust"):  # 2 simulated rooms, not the recipe's 60 (20 s here)
        overrides.append("audio_augment.reverb.rooms=2")
    if recipe == "none":
        overrides += [f"data.{key}_manifest={tmp / 'my' / name}.jsonl"
                      for key, name in (("train", "train"), ("val", "dev"), ("test", "test"))]
    return overrides


def test_the_recipes_are_the_ones_checked_here():
    assert set(RECIPES) == set(EXPECTED), (
        "a recipe was added or removed: say what it composes to in EXPECTED")


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes_and_builds_without_data(recipe, tmp_path):
    cfg = compose_train(recipe_overrides(recipe, tmp_path))
    # every interpolation resolves, nothing ???
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    layers, units, tokenizer, inter_layer, eval_names, datamodule_class = EXPECTED[recipe]
    assert cfg.tokenizer._target_ == tokenizer
    # the tokenizer is the one part left out: a word vocabulary or a SentencePiece model is read
    # from data
    module = instantiate(cfg.module)(tokenizer=CharTokenizer())
    model = module.recognizer.model
    assert isinstance(module, ASRModule) and model.config["num_classes"] == 29
    assert (model.config["num_layers"], model.config["hidden_size"]) == (layers, units)
    assert (module.inter_ctc.layer if module.inter_ctc is not None else None) == inter_layer
    # a null path (the default dev/test pair) is left out
    assert set(module.eval_manifests) == eval_names
    callbacks = instantiate_all(cfg.callbacks)
    assert DEFAULT_CALLBACKS <= set(callbacks)
    best = callbacks["best_checkpoint"]
    assert (isinstance(best, ModelCheckpoint) and best.monitor == "val/wer"
            and best.dirpath == str(tmp_path / "run" / "checkpoints"))
    assert ([type(x).__name__ for x in instantiate_all(cfg.logger).values()]
            == ["CSVLogger", "TensorBoardLogger"])
    trainer = build_trainer(cfg, callbacks, instantiate_all(cfg.logger))
    assert trainer.max_epochs == cfg.trainer.max_epochs
    datamodule = instantiate(cfg.data, tokenizer=module.recognizer.tokenizer,
                             output_frames=module.recognizer.output_frames,
                             extra_tokenizers=module.label_tokenizers[1:])
    assert type(datamodule) is datamodule_class and datamodule.val_manifest.endswith(".jsonl")
    assert not [p for p in tmp_path.iterdir()], "building the parts touched the disk"
    assert (datamodule.augment is not None) == recipe.startswith("an4-robust")
    if recipe.startswith("an4-robust"):  # the AN4 recipe plus online noise, rooms, non-speech
        assert (datamodule.augment.noise_prob, datamodule.augment.reverb_prob) == (0.4, 0.25)
        assert len(datamodule.augment.rirs[1]) == 2 and cfg.name == recipe
    # the fine-tuning step: SpecAugment off, and no run without the model it starts from
    assert (cfg.augment is None and cfg.finetune.required) == (recipe == "an4-robust-ft")
    if recipe.startswith("librispeech"):
        assert cfg.trainer.precision == "bf16-mixed" and cfg.prepare.root is None
        assert cfg.model.subsampling == "conv" and cfg.model.subsampling_factor == 4
    if recipe == "librispeech-960h":
        assert list(cfg.prepare.train_subsets) == ["train-clean-100", "train-clean-360",
                                                   "train-other-500"]
        assert len(cfg.prepare.subsets) == 7
    if recipe == "none":
        assert cfg.prepare is None and cfg.name == "custom"
        assert module.eval_manifests["test"] == str(tmp_path / "my" / "test.jsonl")


def test_recipe_none_without_manifests_names_the_missing_setting():
    cfg = compose_train(["recipe=none", "paths.output_dir=unused"])
    with pytest.raises(MissingMandatoryValue, match="data.train_manifest"):
        _ = cfg.data.train_manifest
    # the test manifest is optional: without it, only dev is scored after training
    cfg = compose_train(["recipe=none", "paths.output_dir=unused", "data.train_manifest=t.jsonl",
                         "data.val_manifest=d.jsonl"])
    module = instantiate(cfg.module)(tokenizer=CharTokenizer())
    assert set(module.eval_manifests) == {"dev"}


def test_an4_recipe_composes_to_what_its_readme_says(tmp_path):
    """recipes/an4/README.md's "Settings" paragraph, setting by setting."""
    readme = " ".join((ROOT / "recipes" / "an4" / "README.md").read_text().split())
    for claim in ("global CMVN from the training set", "speed perturbation 0.9/1.0/1.1",
                  "SpecAugment 2x27 freq", "a 4x convolutional front end",
                  "3x256 BiLSTM, dropout 0.2", "(`tokenizer=word`",
                  "on layer 2 with weight 0.3 (`inter_ctc=self_conditioned`)",
                  "AdamW 2e-3 with 10 % warmup", "120 epochs, validated from epoch 61 on",
                  "the mean of the weights of the 5 best epochs", "`select: always`"):
        assert claim in readme, (
            f"recipes/an4/README.md no longer says {claim!r}: update this test with it")
    cfg = compose_train(recipe_overrides("an4", tmp_path))
    assert cfg.name == "an4" and cfg.prepare._target_ == "asr.data.corpora.an4.prepare"
    # None here: the known copies'
    assert cfg.prepare.dev_size == 100 and cfg.prepare.get("checksums") is None
    assert cfg.features.normalize == "global" and list(cfg.data.speed_perturb) == [0.9, 1.0, 1.1]
    assert cfg.data.cache_audio and (cfg.augment.freq_masks, cfg.augment.freq_width) == (2, 27)
    assert (cfg.model.subsampling, cfg.model.subsampling_factor) == ("conv", 4)
    assert (cfg.model.num_layers, cfg.model.hidden_size, cfg.model.dropout) == (3, 256, 0.2)
    assert cfg.tokenizer._target_ == "asr.text.WordTokenizer"
    assert (cfg.inter_ctc.tokenizer, cfg.inter_ctc.self_condition,
            cfg.inter_ctc.weight) == ("char", True, 0.3)
    assert (cfg.optim.lr, cfg.optim.scheduler.warmup_ratio,
            cfg.optim.scheduler.shape) == (2e-3, 0.1, "cosine")
    assert cfg.trainer.max_epochs == 120 and cfg.callbacks.non_finite.max_grad_norm == 5.0
    callbacks = instantiate_all(cfg.callbacks)
    average, late = callbacks["average_best"], callbacks["validate_from"]
    assert (isinstance(average, AverageBest)
            and (average.save_top_k, average.select) == (5, "always"))
    assert average.best_path == str(tmp_path / "run" / "checkpoints" / "best.ckpt")
    assert isinstance(late, ValidateFrom) and late.fraction == 0.5
    # "validated from epoch 61 on" (1-based)
    assert int(late.fraction * cfg.trainer.max_epochs) + 1 == 61


@pytest.mark.parametrize("layers,middle", [(2, 1), (3, 2), (5, 3)])
def test_an4_recipe_puts_self_conditioned_intermediate_ctc_on_the_middle_layer(layers, middle):
    cfg = compose_train(["recipe=an4", f"model.num_layers={layers}", "paths.output_dir=unused"])
    module = instantiate(cfg.module)(tokenizer=CharTokenizer())
    assert module.inter_ctc.layer == module.recognizer.model.config["condition_layer"] == middle
    assert module.inter_ctc.weight == 0.3 and module.recognizer.features.normalize == "global"
    assert (isinstance(module.inter_ctc.tokenizer, CharTokenizer)
            and len(module.label_tokenizers) == 2)
    assert module.recognizer.model.config["inter_classes"] == 29
