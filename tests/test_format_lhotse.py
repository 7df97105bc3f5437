"""Lhotse manifests (asr/data/formats/lhotse_cuts.py) built with real lhotse from the AN4 fixture:
whole files, supervisions of long recordings (trimmed cuts, windows, RecordingSet +
SupervisionSet), command sources, and every supervision taken or rejected with its reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.data.formats.lhotse_cuts import read_lhotse
from asr.data.manifest import Utterance, read_manifest
from asr.data.reading import load_utterance

pytest.importorskip("lhotse")
from lhotse import (  # noqa: E402 (after the skip)
    AudioSource,
    CutSet,
    Features,
    Recording,
    RecordingSet,
    SupervisionSegment,
    SupervisionSet,
)
from lhotse.audio.backend import audio_backend  # noqa: E402
from lhotse.cut import MonoCut  # noqa: E402

SR = 16000
GAP = 4000  # samples of silence between utterances in a long recording


def _recording(path: str | Path, rid: str) -> Recording:
    # lhotse's default backend reads .sph with the sph2pipe binary; libsndfile reads it too
    with audio_backend("LibsndfileBackend"):
        return Recording.from_file(path, recording_id=rid)


def _sup(sid: str, rid: str, start: float, duration: float, text: str | None,
         speaker: str = "") -> SupervisionSegment:
    return SupervisionSegment(id=sid, recording_id=rid, start=start, duration=duration,
                              text=text, speaker=speaker)


def _same_audio(imported: list[Utterance], reference: list[Utterance]) -> None:
    assert [u.id for u in imported] == [u.id for u in reference]
    for u, ref in zip(imported, reference, strict=True):
        assert (u.text, u.speaker) == (ref.text, ref.speaker)
        assert u.offset is not None
        assert torch.equal(load_utterance(u, SR), load_utterance(ref, SR)), u.id


def _whole_file_cuts(utts: list[Utterance], path: Path) -> Path:
    recs = [_recording(u.audio_filepath, u.id) for u in utts]
    sups = [_sup(u.id, u.id, 0.0, r.duration, u.text, u.speaker)
            for u, r in zip(utts, recs, strict=True)]
    CutSet.from_manifests(RecordingSet.from_recordings(recs),
                          SupervisionSet.from_segments(sups)).to_file(path)
    return path


def test_cuts_of_whole_files_load_bit_exact(tiny_dir, tmp_path, monkeypatch):
    utts = read_manifest(tiny_dir / "test.jsonl")
    got = read_lhotse(_whole_file_cuts(utts, tmp_path / "cuts.jsonl.gz"))
    assert got.rejected == []
    _same_audio(got.utterances, utts)
    for u, ref in zip(got.utterances, utts, strict=True):
        assert u.audio_filepath == ref.audio_filepath and not u.pipe
        assert u.offset == 0.0 and u.duration == pytest.approx(ref.duration, abs=1e-4)

    # relative paths resolve against the current directory, as in lhotse, and come out absolute
    monkeypatch.chdir(tiny_dir)
    rel = [Utterance(str(Path(u.audio_filepath).relative_to(tiny_dir)), u.duration, u.text, u.id,
                     u.speaker) for u in utts]
    got = read_lhotse(_whole_file_cuts(rel, tmp_path / "rel.json"))  # .json: read whole
    assert [u.audio_filepath for u in got.utterances] == [u.audio_filepath for u in utts]


@pytest.fixture(scope="module")
def long_corpus(tiny_dir, tmp_path_factory):
    """The 25 training utterances concatenated (with 0.25 s of silence between them) into 3 long
    16-bit WAVs: (recordings, supervisions at their exact sample offsets, the originals)."""
    utts = read_manifest(tiny_dir / "train.jsonl")
    folder = tmp_path_factory.mktemp("long")
    recs, sups = [], []
    for k, group in enumerate(np.array_split(np.arange(len(utts)), 3)):
        pieces, pos = [], 0
        for i in group:
            samples, rate = sf.read(utts[i].audio_filepath, dtype="int16")
            assert rate == SR
            sups.append(_sup(utts[i].id, f"long{k}", pos / SR, len(samples) / SR, utts[i].text,
                             utts[i].speaker))
            pieces += [samples, np.zeros(GAP, np.int16)]
            pos += len(samples) + GAP
        path = folder / f"long{k}.wav"
        sf.write(path, np.concatenate(pieces), SR, subtype="PCM_16")
        recs.append(_recording(path, f"long{k}"))
    return RecordingSet.from_recordings(recs), SupervisionSet.from_segments(sups), utts


def test_trimmed_cuts_of_long_recordings_read_each_utterance_exactly(long_corpus, tmp_path):
    recs, sups, utts = long_corpus
    path = tmp_path / "cuts.jsonl.gz"
    CutSet.from_manifests(recs, sups).trim_to_supervisions().to_file(path)
    got = read_lhotse(path)
    assert got.rejected == []
    _same_audio(got.utterances, utts)
    starts = {s.id: s.start for s in sups}
    for u in got.utterances:
        assert u.offset == pytest.approx(starts[u.id], abs=1e-6) and u.audio_filepath.endswith(
            ".wav")


def test_windows_keep_whole_supervisions_and_reject_cut_ones(long_corpus, tmp_path):
    recs, sups, utts = long_corpus
    windows = CutSet.from_manifests(recs, sups).cut_into_windows(4.0).to_eager()
    path = tmp_path / "windows.jsonl.gz"
    windows.to_file(path)
    got = read_lhotse(path)
    whole = {s.id for c in windows for s in c.supervisions
             if s.start >= 0 and s.end <= c.duration + 1e-9}
    assert whole and len(whole) < len(utts)  # the windows cut some utterances in two
    assert [u.id for u in got.utterances] == [u.id for u in utts if u.id in whole]
    _same_audio(got.utterances, [u for u in utts if u.id in whole])
    assert len(got.utterances) + len(got.rejected) == sum(len(c.supervisions) for c in windows)
    for r in got.rejected:
        assert r["id"] not in whole
        assert r["reason"].startswith(("outside the cut:", "repeated id:")), r


def test_recording_set_with_supervision_set(long_corpus, tmp_path):
    recs, sups, utts = long_corpus
    recs.to_file(tmp_path / "recordings.jsonl.gz")
    sups.to_file(tmp_path / "supervisions.jsonl")
    got = read_lhotse(tmp_path / "recordings.jsonl.gz",
                      supervisions=tmp_path / "supervisions.jsonl")
    assert got.rejected == []
    _same_audio(got.utterances, utts)

    with pytest.raises(ValueError, match=r"RecordingSet.*lhotse\.supervisions=<path>"):
        read_lhotse(tmp_path / "recordings.jsonl.gz")
    with pytest.raises(ValueError, match=r"SupervisionSet.*as the source.*lhotse\.supervisions"):
        read_lhotse(tmp_path / "supervisions.jsonl")


def _reasons(got) -> dict[str, str]:
    return {r["id"]: r["reason"] for r in got.rejected}


def test_rejections_name_their_reason(tiny_dir, tmp_path):
    utts = read_manifest(tiny_dir / "test.jsonl")  # 4 utterances
    recs = [_recording(u.audio_filepath, u.id) for u in utts]
    a, b, c, d = recs
    (tmp_path / "junk.wav").write_text("not audio")

    def elsewhere(rid: str, kind: str, source: str) -> Recording:
        return Recording(id=rid, sources=[AudioSource(kind, [0], source)], sampling_rate=SR,
                         num_samples=a.num_samples, duration=a.duration)

    odd = [elsewhere("web", "url", "https://example.com/a.wav"),
           elsewhere("gone", "file", str(tmp_path / "gone.wav")),
           elsewhere("junk", "file", str(tmp_path / "junk.wav"))]
    sups = [
        _sup("fine", a.id, 0.0, a.duration, "go"),
        _sup("from-web", "web", 0.0, a.duration, "go"),
        _sup("too-long", b.id, 0.0, b.duration + 2.0, "stop"),  # past the recording's end
        _sup("overhang", b.id, 0.0, b.duration + 0.3, "stop"),  # within 0.5 s: clipped
        _sup("fine", c.id, 0.0, c.duration, "yes"),  # the id again
        _sup("untranscribed", d.id, 0.0, d.duration, None),
        _sup("elsewhere", "missing", 0.0, 1.0, "no"),
        _sup("lost", "gone", 0.0, 0.5, "no"),
        _sup("garbled", "junk", 0.0, 0.5, "no"),
    ]
    RecordingSet.from_recordings([*recs, *odd]).to_file(tmp_path / "recs.jsonl")
    SupervisionSet.from_segments(sups).to_file(tmp_path / "sups.jsonl")
    got = read_lhotse(tmp_path / "recs.jsonl", supervisions=tmp_path / "sups.jsonl")
    assert [u.id for u in got.utterances] == ["fine", "overhang"]
    assert got.utterances[1].duration == pytest.approx(b.duration)
    reasons = _reasons(got)
    assert [r["id"] for r in got.rejected] == ["from-web", "too-long", "fine", "untranscribed",
                                               "elsewhere", "lost", "garbled"]
    assert reasons["from-web"].startswith("url source:") and "https://example.com" in reasons[
        "from-web"]
    assert "past the recording" in reasons["too-long"]
    assert reasons["fine"].startswith("repeated id:")
    assert reasons["untranscribed"].startswith("no transcript")
    assert reasons["elsewhere"].startswith("no recording:")
    assert reasons["lost"].startswith("missing file:") and "gone.wav" in reasons["lost"]
    assert reasons["garbled"].startswith("unreadable audio:") and "junk.wav" in reasons["garbled"]
    assert len(got.utterances) + len(got.rejected) == len(sups)


def test_cuts_that_are_not_one_recording_read_in_place_are_rejected(tiny_dir, tmp_path):
    utts = read_manifest(tiny_dir / "test.jsonl")
    a, b, c, d = (_recording(u.audio_filepath, u.id) for u in utts)
    stereo_path = tmp_path / "stereo.wav"
    mono, _ = sf.read(a.sources[0].source, dtype="int16")
    sf.write(stereo_path, np.stack([mono, mono // 2], axis=1), SR, subtype="PCM_16")
    stereo = _recording(stereo_path, "stereo")
    cuts = CutSet.from_manifests(RecordingSet.from_recordings([a, b, c, d, stereo]),
                                 SupervisionSet.from_segments(
        [_sup(r.id, r.id, 0.0, r.duration, "x") for r in (a, b, c, d, stereo)])).to_eager()
    ca, cb, _, cd, cstereo = cuts
    two_files = Recording(  # a file per channel
        id="two-files", sources=[AudioSource("file", [0], c.sources[0].source),
                                 AudioSource("file", [1], c.sources[0].source)],
        sampling_rate=SR, num_samples=c.num_samples, duration=c.duration)
    feats = Features(type="fbank", num_frames=80, num_features=80, frame_shift=0.01,
                     sampling_rate=SR, start=0, duration=0.8, storage_type="lilcom_files",
                     storage_path="feats", storage_key="f.llc", recording_id="nowhere",
                     channels=0)
    only_feats = MonoCut("feats-only", 0.0, 0.8, 0, features=feats,
                         supervisions=[_sup("f", "nowhere", 0.0, 0.8, "x")])
    mixed = [
        ca.pad(duration=5.0),  # MixedCut
        cb.perturb_speed(1.1),  # a Speed transform
        MonoCut("two-files", 0.0, c.duration, [0, 1], recording=two_files,
                supervisions=[_sup("split", two_files.id, 0.0, c.duration, "x")]),
        MonoCut("stereo-left", 0.0, stereo.duration, 0, recording=stereo,
                supervisions=[_sup("left", "stereo", 0.0, stereo.duration, "x")]),
        only_feats,
        cstereo,  # both channels: taken, averaged as our loader does
        cd.resample(8000),  # plain resampling: taken
    ]
    path = tmp_path / "odd.jsonl.gz"  # (in-memory audio cannot be written to JSON)
    CutSet.from_cuts(mixed).to_file(path)
    got = read_lhotse(path)
    assert [u.id for u in got.utterances] == ["stereo", d.id]
    ref = Utterance(str(stereo_path), stereo.duration, "x")
    assert torch.equal(load_utterance(got.utterances[0], SR), load_utterance(ref, SR))
    # resampled by lhotse to 8 kHz: we read the 16 kHz source (the loader resamples on its own)
    assert torch.equal(load_utterance(got.utterances[1], SR), load_utterance(utts[3], SR))
    reasons = [r["reason"] for r in got.rejected]
    assert [r.split(":")[0] for r in reasons] == [
        "MixedCut", "lhotse transforms", "several sources", "channel selection",
        "feature-only cut"]
    assert "Speed" in reasons[1] and "[0]" in reasons[3]


def test_command_sources_run_only_when_allowed(long_corpus, tmp_path):
    recs, sups, utts = long_corpus
    wav = Path(recs["long0"].sources[0].source).absolute()
    piped = Recording(id="long0", sources=[AudioSource("command", [0], f"cat {wav}")],
                      sampling_rate=SR, num_samples=recs["long0"].num_samples,
                      duration=recs["long0"].duration)
    mine = [s for s in sups if s.recording_id == "long0"]
    path = tmp_path / "piped.jsonl.gz"
    CutSet.from_manifests(RecordingSet.from_recordings([piped]),
                          SupervisionSet.from_segments(mine)).to_file(path)
    with pytest.raises(ValueError, match=r"recording long0 .*allow_pipes=true"):
        read_lhotse(path)
    got = read_lhotse(path, allow_pipes=True)
    assert got.rejected == [] and all(u.pipe for u in got.utterances)
    assert {u.audio_filepath for u in got.utterances} == {f"cat {wav}"}
    files = [Utterance(str(wav), u.duration, u.text, u.id, u.speaker, offset=u.offset)
             for u in got.utterances]
    _same_audio(got.utterances, files)
    _same_audio(got.utterances, [u for u in utts if u.id in {s.id for s in mine}])
