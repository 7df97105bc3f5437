"""transcribe on real LibriSpeech/AN4 files (and broken ones), long files, export parity, averaging."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.average import average_checkpoints
from asr.data import load_audio, read_manifest
from asr.module import CHECKPOINT_KEY, ASRModule
from asr.transcribe import frame_stride, long_log_probs, split_points
from tests.conftest import LIBRI, ROOT


def test_transcribe_cli_reports_bad_files_and_keeps_going(tiny_checkpoint, an4_dir, tmp_path):
    flacs = sorted(LIBRI.glob("*/*/*/*.flac"))[:2]
    if not flacs:
        pytest.skip(f"LibriSpeech samples not found under {LIBRI} (set ASR_SHARED_DATA)")
    an4 = read_manifest(an4_dir / "test.jsonl")[0].audio_filepath
    wav, sr = sf.read(flacs[0], dtype="float32")
    stereo_8k = tmp_path / "stereo_8k.wav"  # another rate and two channels: resampled and downmixed
    sf.write(stereo_8k, np.stack([wav[::2], wav[::2]], axis=1), sr // 2)
    empty, corrupt = tmp_path / "empty.wav", tmp_path / "corrupt.flac"
    empty.write_bytes(b"")
    corrupt.write_bytes(flacs[0].read_bytes()[:1000])
    files = [*flacs, an4, empty, stereo_8k, corrupt]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "asr.transcribe",
            f"checkpoint={tiny_checkpoint}",
            "device=cpu",
            "format=json",
            f"audio=[{','.join(str(f) for f in files)}]",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["audio_filepath"] for r in lines] == [str(f) for f in files]
    assert [("text" in r) for r in lines] == [True, True, True, False, True, False]
    assert lines[4]["duration"] == pytest.approx(len(wav[::2]) / (sr // 2), abs=1e-3)
    assert f"error: {empty}:" in proc.stderr and f"error: {corrupt}:" in proc.stderr
    assert "2 of 6 files failed" in proc.stderr and "Traceback" not in proc.stderr


def test_long_audio_is_split_at_quiet_frames_and_stitched(tiny_checkpoint, an4_dir):
    module = ASRModule.load_for_inference(tiny_checkpoint)
    # ~20 s of real speech: AN4 test utterances back to back
    wav = torch.cat([load_audio(u.audio_filepath) for u in read_manifest(an4_dir / "test.jsonl")[:8]])
    stride = frame_stride(module)
    assert stride == 480  # 10 ms hop x3 frame stacking
    cuts = split_points(wav, 16000, stride, chunk_seconds=4.0, search_seconds=1.0)
    pieces = list(zip(cuts[:-1], cuts[1:], strict=True))
    assert cuts[0] == 0 and cuts[-1] == wav.numel() and len(pieces) >= 5
    assert all(b - a <= 4 * 16000 and a % stride == 0 for a, b in pieces)
    level = wav.reshape(-1)[: wav.numel() // stride * stride].reshape(-1, stride).pow(2).mean(1)
    cut_levels = torch.stack([level[c // stride] for c in cuts[1:-1]])
    assert cut_levels.max() < level.median()  # cuts land in pauses, not in speech
    whole = long_log_probs(module, wav, torch.device("cpu"), chunk_seconds=60.0)
    pieced = long_log_probs(
        module, wav, torch.device("cpu"), chunk_seconds=4.0, overlap_seconds=1.0, search_seconds=1.0
    )
    assert pieced.shape == whole.shape  # every output frame once, no gap, no double
    fixed = long_log_probs(
        module, wav, torch.device("cpu"), chunk_seconds=3.0, overlap_seconds=0.0, search_seconds=0.0
    )
    assert fixed.shape == whole.shape


def test_onnx_export_matches_pytorch_on_an4(tiny_checkpoint, an4_dir, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install asr[export])")
    from asr.export import export

    path = export(str(tiny_checkpoint), "onnx", str(tmp_path / "model.onnx"))
    assert (tmp_path / "model.onnx.tokens.txt").read_text().splitlines()[:2] == ["<blank>", "|"]
    module = ASRModule.load_for_inference(tiny_checkpoint)
    wavs = [load_audio(u.audio_filepath) for u in read_manifest(an4_dir / "test.jsonl")[:4]]
    lengths = torch.tensor([w.numel() for w in wavs])
    audio = torch.zeros(len(wavs), int(lengths.max()))  # (B, S), zero-padded: a batch of different lengths
    for i, w in enumerate(wavs):
        audio[i, : w.numel()] = w
    with torch.no_grad():
        ref, ref_lengths = module(audio, lengths)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    log_probs, out_lengths = session.run(None, {"audio": audio.numpy(), "audio_lengths": lengths.numpy()})
    assert out_lengths.tolist() == ref_lengths.tolist()
    for i, n in enumerate(ref_lengths.tolist()):
        np.testing.assert_allclose(log_probs[i, :n], ref[i, :n].numpy(), atol=1e-3, rtol=0)


def test_torchscript_export_matches_pytorch(tiny_checkpoint, an4_dir, tmp_path):
    from asr.export import export

    path = export(str(tiny_checkpoint), "torchscript", str(tmp_path / "model.pt"))
    module = ASRModule.load_for_inference(tiny_checkpoint)
    wav = load_audio(read_manifest(an4_dir / "test.jsonl")[0].audio_filepath)[None]
    lengths = torch.tensor([wav.shape[1]])
    with torch.no_grad():
        ref, _ = module(wav, lengths)
        got, _ = torch.jit.load(str(path))(wav, lengths)
    assert torch.allclose(got, ref, atol=1e-3)


def test_average_checkpoints(tiny_checkpoint, tmp_path):
    a = torch.load(tiny_checkpoint, weights_only=True)
    b = {**a, "state_dict": {k: v + 1 if v.is_floating_point() else v for k, v in a["state_dict"].items()}}
    torch.save(b, tmp_path / "b.ckpt")
    out = average_checkpoints([str(tiny_checkpoint), str(tmp_path / "b.ckpt")], str(tmp_path / "avg.ckpt"))
    avg = ASRModule.load_for_inference(out).state_dict()
    for k, v in a["state_dict"].items():
        assert torch.allclose(avg[k], v + 0.5)
    other = {
        **a,
        CHECKPOINT_KEY: {**a[CHECKPOINT_KEY], "model": {**a[CHECKPOINT_KEY]["model"], "hidden_size": 8}},
    }
    torch.save(other, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="another model"):
        average_checkpoints([str(tiny_checkpoint), str(tmp_path / "other.ckpt")], str(tmp_path / "x.ckpt"))
