"""asr.Recognizer: loading every file kind (an older checkpoint layout included), transcribing files
and arrays, word times pinned to known positions, and one validation WER for the loop, model
selection and evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_lightning as L
import soundfile as sf
import torch
from torch import nn

from asr import Recognizer, Transcript
from asr.audio import load_audio
from asr.data.datamodule import ASRDataModule
from asr.data.manifest import Utterance, read_manifest, write_manifest
from asr.decoding import GreedyDecoder
from asr.features import LogMelFeatures
from asr.model_files import CHECKPOINT_KEY, STATE_PREFIX, read_checkpoint
from asr.report.scoring import evaluate_checkpoint
from asr.text import WordTokenizer
from asr.training.averaging import AverageBest
from asr.training.module import ASRModule


def _version_1(ckpt: dict) -> dict:
    """``ckpt`` in the layout main wrote until 2026-12-06: the weights at the module's top level,
    no format version, the model settings without the intermediate-CTC keys when unused."""
    old = {k: v for k, v in ckpt.items()}
    old["state_dict"] = {k.removeprefix(STATE_PREFIX): v for k, v in ckpt["state_dict"].items()}
    meta = {k: v for k, v in ckpt[CHECKPOINT_KEY].items() if k != "format_version"}
    meta["model"] = {k: v for k, v in meta["model"].items()
                     if not (k == "inter_classes" and v is None
                             or k == "condition_layer" and v == 0)}
    old[CHECKPOINT_KEY] = meta
    return old


def test_a_version_1_checkpoint_loads_and_resumes_as_the_same_model(tiny_checkpoint, tiny_dir,
                                                                    tmp_path):
    new = torch.load(tiny_checkpoint, weights_only=True)
    assert new[CHECKPOINT_KEY]["format_version"] == 2
    assert all(k.startswith(STATE_PREFIX) for k in new["state_dict"])
    torch.save(_version_1(new), tmp_path / "v1.ckpt")
    old, ref = Recognizer.load(tmp_path / "v1.ckpt"), Recognizer.load(tiny_checkpoint)
    for k, v in ref.state_dict().items():
        assert torch.equal(old.state_dict()[k], v), k
    wav = load_audio(read_manifest(tiny_dir / "test.jsonl")[0].audio_filepath)
    assert torch.equal(old.log_probs([wav])[0], ref.log_probs([wav])[0])
    # the resume path: the module migrates the checkpoint before Lightning loads its weights
    module = ASRModule(ref.tokenizer, LogMelFeatures(), Recognizer.load(tiny_checkpoint).model)
    ckpt = read_checkpoint(tmp_path / "v1.ckpt")  # migrated here too
    assert ckpt["state_dict"].keys() == new["state_dict"].keys()
    v1 = _version_1(new)
    module.on_load_checkpoint(v1)
    module.load_state_dict(v1["state_dict"])  # strict
    newer = {**new, CHECKPOINT_KEY: {**new[CHECKPOINT_KEY], "format_version": 3}}
    torch.save(newer, tmp_path / "v3.ckpt")
    with pytest.raises(ValueError, match="v3.ckpt: checkpoint format_version 3 is newer"):
        Recognizer.load(tmp_path / "v3.ckpt")


def test_transcribe_takes_paths_and_arrays_one_or_many(tiny_checkpoint, tiny_dir, tmp_path):
    recognizer = Recognizer.load(tiny_checkpoint)
    path = read_manifest(tiny_dir / "test.jsonl")[0].audio_filepath
    one = recognizer.transcribe(path)
    assert isinstance(one, Transcript) and one.duration == pytest.approx(sf.info(path).duration)
    wav, rate = sf.read(path, dtype="float32")
    as_array = recognizer.transcribe([wav, torch.from_numpy(wav)], decoder=GreedyDecoder)
    assert [t.text for t in as_array] == [one.text, one.text]
    at_8k = wav[::2].copy()  # another rate is resampled: the same duration
    assert recognizer.transcribe(at_8k, sample_rate=rate // 2).duration == pytest.approx(
        one.duration, abs=1e-3)
    with pytest.raises(FileNotFoundError, match="gone.wav: no such file"):
        recognizer.transcribe([path, str(tmp_path / "gone.wav")])
    with pytest.raises(ValueError, match="1-D, non-empty and finite"):
        recognizer.transcribe(np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(ValueError, match="word_times must be"):
        recognizer.transcribe(path, word_times="frames")


# --------------------------------------------------------------------- word times at known places
class ToneSpotter(nn.Module):
    """An acoustic model whose spikes we place: word 1 on the first frame of a low tone, word 2 on
    the first frame of a high one, blank elsewhere; 4x subsampling by taking every 4th frame (the
    rate of the AN4 recipe's front end). It stands in for a trained network so that every frame of
    the truth is known; features, chunking, stitching, decoding and timing are the real ones."""

    def __init__(self, num_classes: int, factor: int = 4) -> None:
        super().__init__()
        self.config, self.factor = {"num_classes": num_classes}, factor

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(lengths + self.factor - 1, self.factor, rounding_mode="floor")

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = feats[:, :: self.factor]  # (B, T, F) -> (B, T', F)
        loud = x.max(-1).values > -4.0  # log-Mel energy: silence is log(1e-6)
        onset = loud & ~torch.cat([torch.zeros_like(loud[:, :1]), loud[:, :-1]], dim=1)
        word = 1 + (x.argmax(-1) >= x.shape[-1] // 2).long()  # (B, T'): 1 low, 2 high
        logits = torch.full((*x.shape[:2], self.config["num_classes"]), -30.0)
        logits[..., 0] = 0.0
        rows, frames = onset.nonzero(as_tuple=True)
        logits[rows, frames, 0] = -30.0
        logits[rows, frames, word[rows, frames]] = 0.0
        return logits.log_softmax(-1), self.output_lengths(lengths)


def _tones(spans: list[tuple[float, float, float]], seconds: float,
           rate: int = 16000) -> np.ndarray:
    wav = np.zeros(int(seconds * rate), dtype=np.float32)
    for start, end, freq in spans:
        t = np.arange(int(start * rate), int(end * rate))
        wav[t] = 0.5 * np.sin(2 * math.pi * freq * t / rate)
    return wav


def test_word_times_land_on_the_known_positions_through_chunking():
    """Two "words" at known places in 7 s of audio (0.96-1.40 s low, 5.04-5.60 s high): each word
    starts on its onset and, with word_times=audio, ends with its sound, also when the file is cut
    into 2 s pieces and stitched. A wrong frame duration (1/26 s for 1/25 s) moves the second word
    by 0.2 s; a wrong chunk offset moves it by a piece."""
    tokenizer = WordTokenizer(words=["one", "two"])
    recognizer = Recognizer(LogMelFeatures(normalize="none"), ToneSpotter(tokenizer.num_classes),
                            tokenizer).eval()
    assert recognizer.frame_seconds == 0.04
    wav = _tones([(0.96, 1.40, 300.0), (5.04, 5.60, 3000.0)], 7.0)
    for chunking in ({}, {"chunk_seconds": 2.0, "overlap_seconds": 0.5, "search_seconds": 0.5}):
        spike = recognizer.transcribe(wav, word_times="spike", **chunking)
        assert spike.text == "one two"
        times = [t for w in spike.words for t in (w.start, w.end)]
        assert times == pytest.approx([0.96, 1.00, 5.04, 5.08], abs=1e-6), chunking
        sound = recognizer.transcribe(wav, **chunking)
        times = [t for w in sound.words for t in (w.start, w.end)]
        assert times == pytest.approx([0.96, 1.40, 5.04, 5.60], abs=0.041), chunking
        assert [w.confidence for w in sound.words] == pytest.approx([1.0, 1.0])


# ------------------------------------------------------------------ one validation WER, three users
def test_the_loops_val_wer_is_the_evaluations_dev_wer(tiny_checkpoint, tiny_dir, tmp_path):
    """For the same weights, the val/wer the loop logs (and ModelCheckpoint ranks by), the one model
    averaging computes and asr.evaluate's dev WER are one number. The dev manifest holds what tells
    the rules apart: an utterance whose text the tokenizer cannot encode, one with empty text, one
    whose audio is gone. The untrained model's garbage hypotheses make every edit kind count."""
    utts = read_manifest(tiny_dir / "dev.jsonl")
    gone = Utterance(str(tmp_path / "gone.sph"), 1.0, "stop", "gone")
    odd = Utterance(utts[0].audio_filepath, utts[0].duration, "caf\u00e9 yes", "odd")
    empty = Utterance(utts[1].audio_filepath, utts[1].duration, "", "empty")
    dev = tmp_path / "dev.jsonl"
    write_manifest(dev, [*utts, gone, odd, empty])
    recognizer = Recognizer.load(tiny_checkpoint)
    module = ASRModule(recognizer.tokenizer, recognizer.features, recognizer.model)
    data = ASRDataModule(recognizer.tokenizer, str(tiny_dir / "train.jsonl"), str(dev),
                         num_workers=0)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    looped = trainer.validate(module, datamodule=data, verbose=False)[0]["val/wer"]
    report = evaluate_checkpoint(str(tiny_checkpoint), {"dev": str(dev)}, str(tmp_path / "eval"),
                                 "cpu", progress=False)["dev"]
    assert report["utterances"] == len(utts) + 3 and report["insertions"] > 0
    assert looped == pytest.approx(report["wer"], abs=1e-6) and 0 < report["wer"] != 1
    averaged = AverageBest._val_wer(str(tiny_checkpoint), trainer, module)
    assert averaged == pytest.approx(report["wer"], abs=1e-12)
