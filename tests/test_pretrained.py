"""``asr.export format=pretrained``: a model folder that loads, transcribes and evaluates with
nothing of its run dir beside it, its model card; int8 dynamic quantisation (in memory, in the
folder, in TorchScript)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from asr.audio import load_audio
from asr.data.manifest import read_manifest
from asr.export import export
from asr.quantize import is_quantized, quantize_int8
from asr.recognizer import Recognizer
from asr.report.scoring import evaluate_checkpoint
from tests.conftest import ROOT

FILES = {"config.json", "model.safetensors", "tokenizer.json", "README.md"}
INT8_ATOL = 0.05  # largest |log-prob| change int8 may make on the tiny model (measured: ~0.01)


def _batch(tiny_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixture's 4 test utterances as one zero-padded (B, S) batch and its (B,) lengths."""
    wavs = [load_audio(u.audio_filepath) for u in read_manifest(tiny_dir / "test.jsonl")]
    lengths = torch.tensor([w.numel() for w in wavs])
    audio = torch.zeros(len(wavs), int(lengths.max()))
    for i, w in enumerate(wavs):
        audio[i, : w.numel()] = w
    return audio, lengths


@torch.no_grad()
def _log_probs(module: Recognizer, tiny_dir: Path) -> torch.Tensor:
    return module(*_batch(tiny_dir))[0]


@pytest.fixture(scope="module")
def folders(tiny_checkpoint, tiny_dir, tmp_path_factory) -> dict[str, Path]:
    """The tiny checkpoint in a run dir with what ``asr.train`` leaves there (config.yaml,
    run.json, a scored test split), exported as a float and an int8 folder; each folder is then
    moved alone elsewhere and the run dir deleted, so that nothing of it can be read."""
    tmp = tmp_path_factory.mktemp("pretrained")
    run = tmp / "exp" / "tiny" / "run1"
    ckpt = run / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    shutil.copy(tiny_checkpoint, ckpt)
    config = {"name": "tiny", "prepare": {"_target_": "asr.data.corpora.an4.prepare"},
              "data": {"train_manifest": str(tiny_dir / "train.jsonl")}}
    (run / "config.yaml").write_text(OmegaConf.to_yaml(config))
    (run / "run.json").write_text(json.dumps({"command": ["train.py", "recipe=tiny"], "epochs": 3}))
    evaluate_checkpoint(str(ckpt), {"test": str(tiny_dir / "test.jsonl")}, str(run / "decode"),
                        "cpu", progress=False)
    out = {}
    for name, quantize in (("float", None), ("int8", "int8")):
        written = export(str(ckpt), "pretrained", str(tmp / f"export-{name}"), quantize=quantize,
                         license="apache-2.0")
        out[name] = Path(shutil.copytree(written, tmp / "elsewhere" / name))
        shutil.rmtree(written)
    out["report"] = json.loads((run / "decode" / "test" / "report.json").read_text())
    shutil.rmtree(run)
    return out


def test_float_folder_alone_gives_the_checkpoints_log_probs(folders, tiny_checkpoint, tiny_dir):
    folder = folders["float"]
    assert {p.name for p in folder.iterdir() if p.is_file()} == FILES
    module = Recognizer.load(folder)
    ref = Recognizer.load(tiny_checkpoint)
    assert torch.equal(_log_probs(module, tiny_dir), _log_probs(ref, tiny_dir))
    # manifests of the training data: information only
    assert module.eval_manifests == {} and not is_quantized(module)
    config = json.loads((folder / "config.json").read_text())
    assert config["quantize"] is None and config["training"]["checkpoint"] == "best.ckpt"


def test_model_card_front_matter_wer_table_training_and_usage(folders, tiny_checkpoint, tiny_dir,
                                                               tmp_path):
    card = (folders["float"] / "README.md").read_text()
    front = card.split("---\n")[1]
    meta = OmegaConf.to_container(OmegaConf.create(front))
    assert (meta["license"] == "apache-2.0" and meta["metrics"] == ["wer"]
            and meta["datasets"] == ["an4"])
    assert {"automatic-speech-recognition", "ctc"} <= set(meta["tags"]) and meta["library_name"]
    r = folders["report"]
    assert f"| test | 4 | {r['ref_words']} | {100 * r['wer']:.2f} |" in card
    hours = sum(u.duration for u in read_manifest(tiny_dir / "train.jsonl")) / 3600
    assert (f"| training data | {hours:.2f} h |" in card
            and "`python -m asr.train recipe=tiny`" in card)
    assert "python -m asr.transcribe checkpoint=path/to/export-float audio=" in card
    assert "python -m asr.evaluate checkpoint=path/to/export-float manifests=" in card
    assert "| parameters | 0.10 M |" in card and "2 x BiLSTM(32 per direction)" in card
    # a checkpoint copied out of its run: the card says "unknown" where it knows nothing
    bare = tmp_path / "best.ckpt"
    shutil.copy(tiny_checkpoint, bare)
    card = (export(str(bare), "pretrained", str(tmp_path / "bare")) / "README.md").read_text()
    assert ("| training data | unknown |" in card and "| command | unknown |" in card
            and "datasets" not in card)
    assert "unknown: the run dir held no decode/<split>/report.json" in card


def _evaluate_cli(overrides: list[str]) -> dict:
    """``python -m asr.evaluate <overrides>`` in this process: the real config, resolvers and
    ``main``."""
    from asr.evaluate import main, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        return main(cfg)


def test_transcribe_and_evaluate_take_the_folder(folders, tiny_checkpoint, tiny_dir, tmp_path):
    # the entry point's function, as tests/test_transcribe_export.py calls it
    from asr.transcribe import transcribe

    folder, test = folders["float"], str(tiny_dir / "test.jsonl")
    files = [u.audio_filepath for u in read_manifest(test)]
    texts = [r["text"] for r in transcribe(str(folder), files, device="cpu")]
    assert texts == [r["text"] for r in transcribe(str(tiny_checkpoint), files, device="cpu")]
    # outputs and cache default to <folder>/decode: a model folder is its own run dir
    _evaluate_cli([f"checkpoint={folder}", f"manifests={{test: {test}}}", "device=cpu"])
    assert (folder / "decode" / "cache" / "test.pt").is_file()
    ref = evaluate_checkpoint(str(tiny_checkpoint), {"test": test}, str(tmp_path / "ckpt"), "cpu",
                              progress=False)
    hyps = (folder / "decode" / "test" / "hyps.txt").read_text()
    assert hyps == (tmp_path / "ckpt" / "test" / "hyps.txt").read_text()
    assert (json.loads((folder / "decode" / "test" / "report.json").read_text())["wer"]
            == ref["test"]["wer"])
    # the folder keeps no training manifests
    with pytest.raises(ValueError, match="stores none; pass manifests="):
        evaluate_checkpoint(str(folder), None, str(tmp_path / "none"), "cpu", progress=False)


def test_int8_quantisation_replaces_the_layers_forward_uses(tiny_checkpoint, tiny_dir):
    float_module = Recognizer.load(tiny_checkpoint)
    ref = _log_probs(float_module, tiny_dir)
    module = quantize_int8(Recognizer.load(tiny_checkpoint))
    layers = [module.model.lstm.layers[0]["fwd"], module.model.lstm.layers[1]["bwd"],
              module.model.classifier]
    assert all("quantized.dynamic" in type(m).__module__ for m in layers)
    got = _log_probs(module, tiny_dir)
    # changed a little: int8 ran
    assert not torch.equal(got, ref) and (got - ref).abs().max() < INT8_ATOL
    assert quantize_int8(module) is module  # already quantised: as it is
    # the packed LSTM algorithm reads float weights; a quantised model runs the dense one whatever
    # the setting
    meta = {**float_module.describe(), "model": {**float_module.model.config, "lstm": "packed"}}
    packed = Recognizer.from_description(meta)
    packed.load_state_dict(float_module.state_dict())
    assert torch.equal(_log_probs(quantize_int8(packed.eval()), tiny_dir), got)
    with pytest.raises(ValueError, match="CPU only.*device=cpu"):
        quantize_int8(Recognizer.load(tiny_checkpoint).to("meta"))


def test_int8_folder_is_smaller_and_loads_the_quantised_model(folders, tiny_checkpoint, tiny_dir):
    folder = folders["int8"]
    assert {p.name for p in folder.iterdir() if p.is_file()} == FILES
    assert json.loads((folder / "config.json").read_text())["quantize"] == "int8"
    float_size, int8_size = (folders[k] / "model.safetensors" for k in ("float", "int8"))
    assert float_size.stat().st_size >= 3 * int8_size.stat().st_size
    module = Recognizer.load(folder)
    assert is_quantized(module)
    # stored int8 rows and scales give back the very model quantize_int8 makes: no second rounding
    expected = _log_probs(quantize_int8(Recognizer.load(tiny_checkpoint)), tiny_dir)
    assert torch.equal(_log_probs(module, tiny_dir), expected)
    assert "int8" in (folder / "README.md").read_text().split("---")[1]
    with pytest.raises(ValueError, match="CPU only; pass device=cpu"):
        Recognizer.load(folder, device="cuda")


def test_evaluate_quantize_option_keeps_its_own_cache_and_folder(tiny_checkpoint, tiny_dir,
                                                                  tmp_path):
    test, cache = str(tiny_dir / "test.jsonl"), tmp_path / "cache"
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    shutil.copy(tiny_checkpoint, ckpt)
    reports = _evaluate_cli([f"checkpoint={ckpt}", f"manifests={{test: {test}}}", "quantize=int8",
                             f"cache_dir={cache}"])
    # auto: the CPU for int8
    assert reports["test"]["quantize"] == "int8" and reports["test"]["device"] == "cpu"
    assert (cache / "test.int8.pt").is_file() and not (cache / "test.pt").is_file()
    # not the float results' place
    assert (tmp_path / "run" / "decode" / "int8" / "test" / "report.json").is_file()
    again = evaluate_checkpoint(str(ckpt), {"test": test}, str(tmp_path / "f"), "cpu",
                                progress=False, cache_dir=str(cache))
    # not the int8 cache
    assert not again["test"]["cached_log_probs"] and again["test"]["quantize"] is None


def test_torchscript_int8_export_matches_the_quantised_model(tiny_checkpoint, tiny_dir, tmp_path):
    path = export(str(tiny_checkpoint), "torchscript", str(tmp_path / "model.pt"), quantize="int8")
    audio, lengths = _batch(tiny_dir)
    with torch.no_grad():
        got, got_lengths = torch.jit.load(str(path))(audio, lengths)
        ref, ref_lengths = quantize_int8(Recognizer.load(tiny_checkpoint))(audio, lengths)
    assert got_lengths.tolist() == ref_lengths.tolist()
    # the DFT features differ from torch.stft by float rounding
    for i, n in enumerate(ref_lengths.tolist()):
        assert torch.allclose(got[i, :n], ref[i, :n], atol=1e-3)
    with pytest.raises(ValueError,
                       match="quantize=int8 is for format=pretrained or format=torchscript"):
        export(str(tiny_checkpoint), "onnx", str(tmp_path / "m.onnx"), quantize="int8")
    with pytest.raises(ValueError, match="quantize must be null .* or int8, got 'int4'"):
        export(str(tiny_checkpoint), "pretrained", str(tmp_path / "p"), quantize="int4")


def test_a_broken_folder_names_the_file_at_fault(folders, tmp_path):
    def broken(name: str) -> Path:
        folder = Path(shutil.copytree(folders["float"], tmp_path / name,
                                      ignore=shutil.ignore_patterns("decode")))
        return folder

    for missing in ("config.json", "model.safetensors", "tokenizer.json"):
        folder = broken(f"no-{missing}")
        (folder / missing).unlink()
        with pytest.raises(FileNotFoundError,
                           match=f"{folder / missing} does not exist.*format=pretrained"):
            Recognizer.load(folder)
    folder = broken("cut")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors cannot be read"):
        Recognizer.load(folder)
    folder = broken("other")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(
        json.dumps({**config, "model": {**config["model"], "hidden_size": 16}}))
    with pytest.raises(ValueError,
                       match="model.safetensors does not hold the weights .* misshapen"):
        Recognizer.load(folder)
    (folder / "config.json").write_text(
        json.dumps({**config, "model": {**config["model"], "_target_": "os.system"}}))
    with pytest.raises(ValueError, match="unexpected keys"):
        Recognizer.load(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        Recognizer.load(folder)


def test_sentencepiece_and_global_statistics_travel_in_the_folder(tiny_dir, tmp_path):
    """A SentencePiece model (bytes, base64 in tokenizer.json) and CMVN statistics (tensors, in
    model.safetensors) come back as they were."""
    from asr.features import LogMelFeatures
    from asr.model import BiLSTMCTC
    from asr.text import SentencePieceTokenizer
    from asr.training.module import ASRModule

    torch.manual_seed(0)
    tok = SentencePieceTokenizer(tmp_path / "sp.model", tiny_dir / "train.jsonl", vocab_size=40)
    features = LogMelFeatures(normalize="global")
    features.set_global_stats(torch.randn(80), torch.rand(80) + 0.5)
    module = ASRModule(tok, features, BiLSTMCTC(80, tok.num_classes, hidden_size=16, num_layers=2))
    ckpt = tmp_path / "sp.ckpt"
    saved = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(saved)
    torch.save(saved, ckpt)
    folder = export(str(ckpt), "pretrained", str(tmp_path / "sp"))
    loaded = Recognizer.load(folder)
    assert (loaded.tokenizer.state_dict() == tok.state_dict()
            and loaded.tokenizer.encode("yes") == tok.encode("yes"))
    assert torch.equal(loaded.features.global_std, features.global_std)
    assert torch.equal(_log_probs(loaded, tiny_dir), _log_probs(module.recognizer.eval(), tiny_dir))
    assert (f"| tokenizer | sentencepiece: {tok.vocab_size} pieces"
            in (folder / "README.md").read_text())
