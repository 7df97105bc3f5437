"""transcribe on real AN4 files of the fixture (and broken ones), long files, export parity,
averaging."""

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.audio import load_audio
from asr.data.manifest import read_manifest
from asr.model_files import CHECKPOINT_KEY
from asr.recognizer import Recognizer, split_points
from asr.training.averaging import average_checkpoints
from asr.transcribe import format_results, transcribe


def test_transcribe_text_output_reports_bad_files_and_keeps_going(tiny_checkpoint, tiny_dir,
                                                                   tmp_path):
    """transcribe() and format=text: ``file<TAB>text`` lines for the files that decode, in order;
    the others carry their error (the command prints them to stderr and exits 1:
    test_end_to_end.py). An untrained model: the texts need not be right, only there."""
    sph = [u.audio_filepath for u in read_manifest(tiny_dir / "test.jsonl")[:2]]
    wav, sr = sf.read(sph[0], dtype="float32")
    flac = tmp_path / "real.flac"
    sf.write(flac, wav, sr)
    empty, corrupt, nan = tmp_path / "empty.wav", tmp_path / "corrupt.flac", tmp_path / "nan.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)  # a valid header, no samples
    corrupt.write_bytes(flac.read_bytes()[:1000])
    sf.write(nan, np.full(8000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    files = [*sph, str(empty), str(flac), str(corrupt), str(nan)]
    results = transcribe(str(tiny_checkpoint), files, device="cpu")
    assert [r["audio_filepath"] for r in results] == files
    assert [("text" in r) for r in results] == [True, True, False, True, False, False]
    assert ("holds no audio samples" in results[2]["error"]
            and "NaN or infinite" in results[5]["error"])
    lines = [line.split("\t") for line in format_results(results, "text").splitlines()]
    assert ([name for name, _ in lines] == [sph[0], sph[1], str(flac)]
            and all(len(x) == 2 for x in lines))
    assert lines[2][1] == lines[0][1]  # the same samples in another container: the same text
    assert results[3]["duration"] == pytest.approx(len(wav) / sr, abs=1e-3)
    with pytest.raises(ValueError, match="chunk_seconds > 0"):
        transcribe(str(tiny_checkpoint), files, chunk_seconds=0)


def test_long_audio_is_split_at_quiet_frames_and_stitched(tiny_checkpoint, tiny_dir):
    module = Recognizer.load(tiny_checkpoint)
    # ~20 s of real speech: the fixture's training utterances back to back
    wav = torch.cat([load_audio(u.audio_filepath) for u in read_manifest(tiny_dir / "train.jsonl")])
    assert wav.numel() > 18 * 16000
    stride = module.samples_per_frame
    assert stride == 480  # 10 ms hop x3 frame stacking
    cuts = split_points(wav, 16000, stride, chunk_seconds=4.0, search_seconds=1.0)
    pieces = list(zip(cuts[:-1], cuts[1:], strict=True))
    assert cuts[0] == 0 and cuts[-1] == wav.numel() and len(pieces) >= 5
    assert all(b - a <= 4 * 16000 and a % stride == 0 for a, b in pieces)
    level = wav.reshape(-1)[: wav.numel() // stride * stride].reshape(-1, stride).pow(2).mean(1)
    cut_levels = torch.stack([level[c // stride] for c in cuts[1:-1]])
    assert cut_levels.max() < level.median()  # cuts land in pauses, not in speech
    whole = module.long_log_probs(wav, chunk_seconds=60.0)
    pieced = module.long_log_probs(wav, chunk_seconds=4.0, overlap_seconds=1.0, search_seconds=1.0)
    assert pieced.shape == whole.shape  # every output frame once, no gap, no double
    fixed = module.long_log_probs(wav, chunk_seconds=3.0, overlap_seconds=0.0, search_seconds=0.0)
    assert fixed.shape == whole.shape


def test_onnx_export_matches_pytorch_on_an4(tiny_checkpoint, tiny_dir, tmp_path):
    # `make install` installs it (the export extra): its absence is a broken install, not a skip
    try:
        import onnxruntime as ort
    except ImportError as err:
        pytest.fail(f"onnxruntime is not installed ({err}): run `make install`", pytrace=False)
    from asr.export import export

    path = export(str(tiny_checkpoint), "onnx", str(tmp_path / "model.onnx"))
    assert (tmp_path / "model.onnx.tokens.txt").read_text().splitlines()[:2] == ["<blank>", "|"]
    module = Recognizer.load(tiny_checkpoint)
    wavs = [load_audio(u.audio_filepath) for u in read_manifest(tiny_dir / "test.jsonl")[:4]]
    lengths = torch.tensor([w.numel() for w in wavs])
    # (B, S), zero-padded: a batch of different lengths
    audio = torch.zeros(len(wavs), int(lengths.max()))
    for i, w in enumerate(wavs):
        audio[i, : w.numel()] = w
    with torch.no_grad():
        ref, ref_lengths = module(audio, lengths)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    log_probs, out_lengths = session.run(None, {"audio": audio.numpy(),
                                                "audio_lengths": lengths.numpy()})
    assert out_lengths.tolist() == ref_lengths.tolist()
    for i, n in enumerate(ref_lengths.tolist()):
        np.testing.assert_allclose(log_probs[i, :n], ref[i, :n].numpy(), atol=1e-3, rtol=0)


def test_torchscript_export_matches_pytorch(tiny_checkpoint, tiny_dir, tmp_path):
    from asr.export import export

    path = export(str(tiny_checkpoint), "torchscript", str(tmp_path / "model.pt"))
    module = Recognizer.load(tiny_checkpoint)
    wav = load_audio(read_manifest(tiny_dir / "test.jsonl")[0].audio_filepath)[None]
    lengths = torch.tensor([wav.shape[1]])
    with torch.no_grad():
        ref, _ = module(wav, lengths)
        got, _ = torch.jit.load(str(path))(wav, lengths)
    assert torch.allclose(got, ref, atol=1e-3)


def test_average_checkpoints(tiny_checkpoint, tmp_path):
    a = torch.load(tiny_checkpoint, weights_only=True)
    b = {**a, "state_dict": {k: v + 1 if v.is_floating_point() else v
                             for k, v in a["state_dict"].items()}}
    torch.save(b, tmp_path / "b.ckpt")
    out = average_checkpoints([str(tiny_checkpoint), str(tmp_path / "b.ckpt")],
                              str(tmp_path / "avg.ckpt"))
    avg = Recognizer.load(out).state_dict()
    for k, v in a["state_dict"].items():
        assert torch.allclose(avg[k.removeprefix("recognizer.")], v + 0.5)
    # weighted: a model and its "fine-tuned copy" interpolated, 3:1
    out = average_checkpoints([str(tiny_checkpoint), str(tmp_path / "b.ckpt")],
                              str(tmp_path / "wise.ckpt"), weights=[3, 1])
    wise = Recognizer.load(out).state_dict()
    for k, v in a["state_dict"].items():
        assert torch.allclose(wise[k.removeprefix("recognizer.")], v + 0.25)
    assert torch.load(out, weights_only=True)["averaged_weights"] == [0.75, 0.25]
    # per module: the LSTM 3:1 but its first layer 1:3 (the longer name wins), the rest 1:1
    out = average_checkpoints([str(tiny_checkpoint), str(tmp_path / "b.ckpt")],
                              str(tmp_path / "modules.ckpt"), weights=[1, 1],
                              module_weights={"lstm.layers.0": [1, 3], "lstm": [3, 1]})
    mixed = Recognizer.load(out).state_dict()
    for k, v in a["state_dict"].items():
        name = k.removeprefix("recognizer.")
        shift = (0.75 if name.startswith("model.lstm.layers.0.") else
                 0.25 if name.startswith("model.lstm.") else 0.5)
        assert torch.allclose(mixed[name], v + shift), name
    assert torch.load(out, weights_only=True)["averaged_module_weights"] == {
        "lstm.layers.0": [0.25, 0.75], "lstm": [0.75, 0.25]}
    with pytest.raises(ValueError, match="no module 'encoder'.*classifier, lstm"):
        average_checkpoints([str(tiny_checkpoint), str(tmp_path / "b.ckpt")],
                            str(tmp_path / "x.ckpt"), module_weights={"encoder": [1, 1]})
    with pytest.raises(ValueError, match="module_weights.lstm: .*one non-negative weight"):
        average_checkpoints([str(tiny_checkpoint), str(tmp_path / "b.ckpt")],
                            str(tmp_path / "x.ckpt"), module_weights={"lstm": [1]})
    for bad in ([1.0], [1.0, -1.0], [0.0, 0.0]):
        with pytest.raises(ValueError, match="one non-negative weight per checkpoint"):
            average_checkpoints([str(tiny_checkpoint), str(tmp_path / "b.ckpt")],
                                str(tmp_path / "x.ckpt"), weights=bad)
    other = {**a, CHECKPOINT_KEY: {**a[CHECKPOINT_KEY],
                                   "model": {**a[CHECKPOINT_KEY]["model"], "hidden_size": 8}}}
    torch.save(other, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="another model"):
        average_checkpoints([str(tiny_checkpoint), str(tmp_path / "other.ckpt")],
                            str(tmp_path / "x.ckpt"))


def test_subtitles_of_files_sharing_a_name_are_not_overwritten(tmp_path):
    from asr.transcript_formats import write_results

    results = [{"audio_filepath": f"/data/{d}/utt.wav", "text": f"hello {d}", "duration": 1.0,
                "words": [{"word": "hello", "start": 0.1, "end": 0.5, "confidence": 0.9},
                          {"word": d, "start": 0.6, "end": 0.9, "confidence": 0.8}]}
               for d in ("a", "b")] + [{"audio_filepath": "/data/c/other.wav", "text": "",
                                        "duration": 1.0, "words": []}]
    written = write_results(results, "srt", str(tmp_path / "subs"))
    assert [p.name for p in written] == ["utt.1.srt", "utt.2.srt", "other.srt"]
    assert written[0].read_text().splitlines()[2] == "hello a"
    assert written[1].read_text().splitlines()[2] == "hello b"
