"""The noisy-AN4 benchmark's builders (benchmarks/noisy_an4.py) on the committed AN4 cut: the
files and manifests it says it wrote, babble at the SNR asked for, the same audio from the same
seed, and a non-speech silence clip of digital zeros."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import numpy as np
import pytest
import soundfile as sf

from asr.audio import load_audio
from asr.data.manifest import read_manifest
from tests.conftest import ROOT


def _load_bench():
    path = ROOT / "benchmarks" / "noisy_an4.py"
    spec = importlib.util.spec_from_file_location("noisy_an4", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("noisy_an4", module)
    spec.loader.exec_module(module)
    return module


bench = _load_bench()
# reverb costs a room simulation per utterance (about a second): left to the real run
CONDITIONS = ("clean", "babble10", "babble0", "white10")


@pytest.fixture(scope="module")
def built(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("noisy")
    return out, bench.build_conditions(tiny_dir, out, seed=5, conditions=CONDITIONS,
                                       progress=False)


def _samples(path) -> np.ndarray:
    data, rate = sf.read(str(path), dtype="float64")
    assert rate == 16000
    return data


def test_manifests_have_the_test_ids_texts_and_files(built, tiny_dir):
    _, manifests = built
    test = read_manifest(tiny_dir / "test.jsonl")
    assert manifests["clean"] == (tiny_dir / "test.jsonl").resolve()
    keys = set(json.loads((tiny_dir / "test.jsonl").read_text().splitlines()[0]))
    for condition in CONDITIONS[1:]:
        first = json.loads(manifests[condition].read_text().splitlines()[0])
        assert set(first) == keys
        utts = read_manifest(manifests[condition])
        assert [(u.id, u.text) for u in utts] == [(u.id, u.text) for u in test]
        for u, clean in zip(utts, test, strict=True):
            assert u.audio_filepath.endswith(".flac")
            assert len(_samples(u.audio_filepath)) == len(load_audio(clean.audio_filepath))


def test_babble10_is_at_10_db(built, tiny_dir):
    _, manifests = built
    for u, clean in zip(read_manifest(manifests["babble10"]),
                        read_manifest(tiny_dir / "test.jsonl"), strict=True):
        speech = load_audio(clean.audio_filepath).double().numpy()
        noise = _samples(u.audio_filepath) - speech
        snr = 10 * math.log10(np.sum(speech ** 2) / np.sum(noise ** 2))
        assert snr == pytest.approx(10.0, abs=0.1), u.id
    params = [json.loads(x) for x in
              (manifests["babble10"].parent / "babble10" / "params.jsonl").read_text()
              .splitlines()]
    test_speakers = {bench.speaker_of(u) for u in read_manifest(tiny_dir / "test.jsonl")}
    for p in params:
        assert 1 <= len(p["voices"]) <= 7 and "gain" not in p
        assert not {v.split("-")[1] for v in p["voices"]} & test_speakers  # train voices only


def test_same_seed_same_audio_and_marker_skips(built, tiny_dir, tmp_path):
    out, manifests = built
    again = bench.build_conditions(tiny_dir, tmp_path, seed=5, conditions=("babble10",),
                                   progress=False)
    for a, b in zip(read_manifest(manifests["babble10"]), read_manifest(again["babble10"]),
                    strict=True):
        assert np.array_equal(_samples(a.audio_filepath), _samples(b.audio_filepath))
        assert open(a.audio_filepath, "rb").read() == open(b.audio_filepath, "rb").read()
    other = bench.build_conditions(tiny_dir, tmp_path / "other", seed=6,
                                   conditions=("babble10",), progress=False)
    first = read_manifest(other["babble10"])[0].audio_filepath
    assert not np.array_equal(_samples(first),
                              _samples(read_manifest(again["babble10"])[0].audio_filepath))
    # a second call with the same settings finds the marker and rewrites nothing
    stamp = (out / "data" / "babble10.jsonl").stat().st_mtime_ns
    bench.build_conditions(tiny_dir, out, seed=5, conditions=CONDITIONS, progress=False)
    assert (out / "data" / "babble10.jsonl").stat().st_mtime_ns == stamp


def test_nonspeech_clips(tmp_path):
    manifests = bench.build_nonspeech(tmp_path, seed=0, clips=3, progress=False)
    assert set(manifests) == {"silence", "noise", "music"}
    for category, manifest in manifests.items():
        utts = read_manifest(manifest)
        assert len(utts) == 3 and all(u.text == "" and u.duration == 3.0 for u in utts)
        for u in utts:
            audio = _samples(u.audio_filepath)
            assert audio.shape == (48000,)
            if category == "silence":
                assert not audio.any()
            else:
                assert -46 < 20 * math.log10(np.sqrt(np.mean(audio ** 2))) < -14


def test_dev_split_distorts_the_dev_set_with_voices_from_outside_it(tiny_dir, tmp_path):
    manifests = bench.build_conditions(tiny_dir, tmp_path, seed=5, conditions=("clean", "babble5"),
                                       progress=False, split="dev")
    dev = read_manifest(tiny_dir / "dev.jsonl")
    assert manifests["clean"] == (tiny_dir / "dev.jsonl").resolve()
    assert [u.id for u in read_manifest(manifests["babble5"])] == [u.id for u in dev]
    dev_speakers = {bench.speaker_of(u) for u in dev}
    params = [json.loads(x) for x in (tmp_path / "data" / "babble5" / "params.jsonl").read_text()
              .splitlines()]
    assert all(not {v.split("-")[1] for v in p["voices"]} & dev_speakers for p in params)
    assert json.loads((tmp_path / "data" / "build.json").read_text())["split"] == "dev"
    # the test copies are another build: the marker of the dev one does not satisfy it
    test = bench.build_conditions(tiny_dir, tmp_path, seed=5, conditions=("clean", "babble5"),
                                  progress=False)
    assert [u.id for u in read_manifest(test["babble5"])] == [
        u.id for u in read_manifest(tiny_dir / "test.jsonl")]
    with pytest.raises(ValueError, match="choose test or dev"):
        bench.build_conditions(tiny_dir, tmp_path, split="train", progress=False)
