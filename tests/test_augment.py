"""Waveform augmentation: the signal functions measured on their outputs, draws repeatable from a
read's seed, non-speech reads with empty labels, errors that name the setting, and a real fit."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.data.augment import AudioAugment, draw_generator
from asr.data.dataset import AudioDataset
from asr.data.manifest import read_manifest
from asr.distortions import babble, colored_noise, melody, mix, reverberate, rms, simulate_rooms
from asr.text import CharTokenizer
from tests.conftest import tiny_train_cfg

SR = 16000


def _band_power(x: torch.Tensor, low: float, high: float) -> float:
    spectrum = np.abs(np.fft.rfft(x.numpy())) ** 2
    freqs = np.fft.rfftfreq(x.numel(), 1 / SR)
    return float(spectrum[(freqs >= low) & (freqs < high)].mean())


@pytest.mark.parametrize(("color", "db_per_decade"), [("white", 0), ("pink", -10),
                                                      ("brown", -20)])
def test_coloured_noise_has_its_spectral_slope(color, db_per_decade):
    x = colored_noise(SR * 4, color, np.random.default_rng(0))
    assert rms(x) == pytest.approx(1.0, rel=1e-4)
    slope = 10 * np.log10(_band_power(x, 2000, 2200) / _band_power(x, 200, 220))
    assert slope == pytest.approx(db_per_decade, abs=1.5)


@pytest.mark.parametrize("snr", [0.0, 5.0, 10.0, 20.0])
def test_mix_puts_the_noise_at_the_asked_snr(snr):
    rng = np.random.default_rng(1)
    speech = torch.from_numpy(rng.standard_normal(SR)).float() * 0.1
    noise = colored_noise(SR, "pink", rng)
    added = mix(speech, noise, snr) - speech
    assert 20 * np.log10(rms(speech) / rms(added)) == pytest.approx(snr, abs=0.01)
    assert torch.equal(mix(torch.zeros(SR), noise, snr), torch.zeros(SR))  # silence stays silent


def test_reverberation_keeps_times_and_level_and_rooms_repeat_from_their_seed():
    rooms = simulate_rooms(2, [0.3, 0.6], SR, seed=5)
    again = simulate_rooms(2, [0.3, 0.6], SR, seed=5)
    other = simulate_rooms(2, [0.3, 0.6], SR, seed=6)
    assert all(torch.equal(a, b) for a, b in zip(rooms, again, strict=True))
    assert not torch.equal(rooms[0][:2000], other[0][:2000])
    click = torch.zeros(SR)
    click[4000] = 1.0
    wet = reverberate(click, rooms[0])
    assert wet.numel() == SR
    assert int(wet.abs().argmax()) == 4000  # the direct path stays where the sound was
    assert rms(wet) == pytest.approx(rms(click), rel=1e-4)
    assert float(wet[4100:].abs().sum()) > 0  # and the room's tail follows it


def test_babble_is_each_voice_at_one_level():
    rng = np.random.default_rng(2)
    loud, quiet = torch.ones(SR) * 3.0, torch.ones(SR // 2) * 0.01
    out = babble([loud, quiet], SR, rng)
    assert torch.allclose(out, torch.full((SR,), 2.0))


def test_melody_is_a_unit_rms_tone_sequence():
    x = melody(SR * 3, SR, np.random.default_rng(3))
    assert x.numel() == SR * 3 and rms(x) == pytest.approx(1.0, rel=1e-4)


def _augment(**changes) -> AudioAugment:
    settings = {
        "noise": {"prob": 1.0, "snr": [5, 5], "sources": {"pink": 1, "babble": 1}},
        "reverb": {"prob": 0.5, "rooms": 2, "rt60": [0.2, 0.3]},
        "nonspeech": {"prob": 0.0},
    }
    for key, value in changes.items():
        settings[key] = {**settings[key], **value}
    return AudioAugment(SR, **settings)


def test_reads_repeat_from_their_seed_and_babble_draws_other_utterances(tiny_dir):
    utts = read_manifest(tiny_dir / "train.jsonl")
    tok = CharTokenizer()
    ds = AudioDataset(utts, tok, SR, augment=_augment(), cache=True)
    clean = AudioDataset(utts, tok, SR)
    a, b, c = ds[(0, 11)], ds[(0, 11)], ds[(0, 12)]
    assert torch.equal(a.wav, b.wav)  # same seed, same audio
    assert not torch.equal(a.wav, c.wav)
    dry = clean[0].wav
    assert a.wav.numel() == dry.numel() and not torch.equal(a.wav, dry)
    assert a.text == clean[0].text and torch.equal(a.labels[0], clean[0].labels[0])
    babble_only = AudioDataset(utts, tok, SR, augment=_augment(
        noise={"sources": {"babble": 1}}, reverb={"prob": 0.0}))
    added = babble_only[(0, 3)].wav - dry
    assert 20 * np.log10(rms(dry) / rms(added)) == pytest.approx(5.0, abs=0.01)


def test_nonspeech_reads_have_empty_labels(tiny_dir):
    utts = read_manifest(tiny_dir / "train.jsonl")
    aug = _augment(nonspeech={"prob": 1.0, "sources": {"silence": 1, "white": 1},
                              "level_db": [-30, -30]})
    ds = AudioDataset(utts, [CharTokenizer(), CharTokenizer()], SR, augment=aug)
    levels = set()
    for seed in range(8):
        item = ds[(1, seed)]
        assert item.text == "" and all(t.numel() == 0 for t in item.labels)
        assert item.wav.numel() == AudioDataset(utts, None, SR)[1].wav.numel()
        levels.add(round(20 * np.log10(rms(item.wav)), 3) if rms(item.wav) else None)
    assert levels == {None, -30.0}  # digital silence and white noise at -30 dBFS


def test_files_sources_read_a_folder_and_leave_speech_out_of_nonspeech(tmp_path):
    for sub, value in (("noise/free", 0.5), ("speech/talk", -0.5)):
        (tmp_path / sub).mkdir(parents=True)
        sf.write(tmp_path / sub / "a.wav", np.full(SR // 4, value, np.float32), SR)
    aug = AudioAugment(SR, noise={"prob": 1.0, "sources": {"files": 1}, "folder": str(tmp_path)},
                       nonspeech={"prob": 1.0, "sources": {"files": 1}, "level_db": [-20, -20]})
    for seed in range(6):
        wav, speech = aug(torch.ones(SR), draw_generator(seed))
        assert not speech and bool((wav > 0).all())  # only the noise/ recording


@pytest.mark.parametrize(("settings", "named"), [
    ({"noise": {"prob": 0.5}}, "audio_augment.noise.sources"),
    ({"noise": {"prob": 1.5, "sources": {"pink": 1}}}, "audio_augment.noise.prob"),
    ({"noise": {"prob": 1, "sources": {"pinkish": 1}}}, "audio_augment.noise.sources.pinkish"),
    ({"noise": {"prob": 1, "sources": {"files": 1}}}, "audio_augment.noise.folder"),
    ({"noise": {"prob": 1, "sources": {"files": 1}, "folder": "/nonexistent/musan"}},
     "audio_augment.noise.folder=/nonexistent/musan"),
    ({"reverb": {"prob": 0.3}}, "audio_augment.reverb.rooms"),
    ({"noise": {"prob": 1, "sources": {"pink": 1}, "snr": [20, 0]}}, "audio_augment.noise.snr"),
])
def test_bad_settings_name_the_setting(settings, named):
    with pytest.raises((ValueError, FileNotFoundError), match=named.replace(".", r"\.")):
        AudioAugment(SR, **settings)


def test_robust_recipe_trains_with_augmentation(tiny_dir, tmp_path):
    """The config group composes, the DataModule gets the augmentation and a real fit runs."""
    from hydra.utils import instantiate

    from asr.train import train

    cfg = tiny_train_cfg(tiny_dir, tmp_path, ["audio_augment=robust",
                                              "audio_augment.reverb.rooms=2",
                                              "audio_augment.reverb.rt60=[0.2,0.3]",
                                              "logger=[csv]", "eval_manifests=null"])
    data = instantiate(cfg.data, tokenizer=CharTokenizer())
    data.setup("fit")
    assert isinstance(data.datasets["train"].augment, AudioAugment)
    assert data.datasets["val"].augment is None  # validation stays clean
    result = train(cfg)
    assert result["epochs"] == 1 and result["skipped_steps"] == 0
