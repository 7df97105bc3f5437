"""Export features + model of a checkpoint: raw 16 kHz waveforms in, CTC log-probs out.

    python -m asr.export checkpoint=exp/an4/<run>/checkpoints/best.ckpt format=onnx
    python -m asr.export checkpoint=... format=torchscript output=model.pt

ONNX inputs ``audio`` (B, S) float32 and ``audio_lengths`` (B,) int64; outputs ``log_probs`` (B, T, C) and
``lengths`` (B,). Class 0 is the blank; the tokenizer's classes follow in order (written beside the model
as ``<output>.tokens.txt``, one a line, ``<blank>`` first; the space is written ``|``, a word model's words ``▁word``).
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from torch import nn

from asr.cli import user_errors
from asr.decoding import decoder_tokens
from asr.features import LogMelFeatures
from asr.training.module import ASRModule

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}


class DFTLogMel(nn.Module):
    """The log-Mel of :class:`LogMelFeatures` with the STFT as a strided convolution by a windowed DFT basis.

    ONNX's STFT has no complex output in the TorchScript exporter, so the power spectrum is computed from real
    and imaginary parts as two banks of real filters; the result matches ``torch.stft`` to float precision.
    """

    def __init__(self, features: LogMelFeatures) -> None:
        super().__init__()
        spec = features.mel.spectrogram
        n_fft, hop = spec.n_fft, spec.hop_length
        window = torch.zeros(n_fft)
        win = spec.window.detach().float().cpu()
        left = (n_fft - win.numel()) // 2  # torch.stft centres a shorter window in the FFT frame
        window[left : left + win.numel()] = win
        freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
        phase = 2 * math.pi * freqs * torch.arange(n_fft, dtype=torch.float64)[None, :] / n_fft
        basis = torch.cat([torch.cos(phase), -torch.sin(phase)]) * window.double()  # (2F, n_fft)
        self.register_buffer("basis", basis.float()[:, None, :])  # (2F, 1, n_fft)
        self.register_buffer("fb", features.mel.mel_scale.fb.detach().float().cpu().clone())  # (F, n_mels)
        self.n_fft, self.hop = n_fft, hop

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, S) -> (B, T, n_mels) log-Mel energies, T = S // hop + 1."""
        x = nn.functional.pad(
            audio.float()[:, None, :], (self.n_fft // 2, self.n_fft // 2)
        )  # (B, 1, S + n_fft)
        spec = nn.functional.conv1d(x, self.basis, stride=self.hop)  # (B, 2F, T)
        re, im = spec.chunk(2, dim=1)  # (B, F, T) each
        mel = torch.matmul(
            (re * re + im * im).transpose(1, 2), self.fb
        )  # (B, T, F) @ (F, n_mels) -> (B, T, n_mels)
        return torch.log(mel + 1e-6)


class ExportableASR(nn.Module):
    """Waveforms -> log-probs as one graph: ``module``'s features (STFT as :class:`DFTLogMel`) and model."""

    def __init__(self, module: ASRModule) -> None:
        super().__init__()
        self.features = module.features
        self.log_mel = DFTLogMel(module.features)
        self.model = module.model

    def forward(self, audio: torch.Tensor, audio_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) waveforms, (B,) sample counts -> (B, T, C) log-probs, (B,) frame counts."""
        feats, frame_lengths = self.features.normalize_frames(self.log_mel(audio), audio_lengths)
        return self.model(feats, frame_lengths)


def export(checkpoint: str, fmt: str = "onnx", output: str | None = None, opset: int = 17) -> Path:
    """Write the checkpoint's features + model as ONNX or TorchScript; returns the written path.

    Args:
        checkpoint: a ``.ckpt`` written by ``asr.train``.
        fmt: ``onnx`` or ``torchscript``.
        output: file to write; default ``<checkpoint without .ckpt>.onnx`` / ``.pt``.
        opset: ONNX opset.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    module = ASRModule.load_for_inference(checkpoint)
    tok = module.tokenizer
    tokens = decoder_tokens(tok)  # class order: blank, then characters / words / pieces
    model = ExportableASR(module).eval()
    out = Path(output) if output else Path(checkpoint).with_suffix(FORMATS[fmt])
    out.parent.mkdir(parents=True, exist_ok=True)
    sr = module.features.config["sample_rate"]
    # Two utterances of different lengths, so padding and per-utterance lengths are traced, not constants.
    audio = torch.randn(2, sr) * 0.1
    lengths = torch.tensor([sr, sr * 3 // 4])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript tracer's notes on shape-dependent Python values
        if fmt == "onnx":
            try:
                import onnx  # noqa: F401
            except ImportError:
                raise ImportError(
                    "ONNX export needs onnx: pip install onnx onnxruntime (or `pip install asr[export]`)"
                ) from None
            # The TorchScript-based exporter: each direction's nn.LSTM becomes an ONNX LSTM node, the
            # per-length reversal a GatherElements.
            torch.onnx.export(
                model,
                (audio, lengths),
                str(out),
                dynamo=False,
                opset_version=opset,
                input_names=["audio", "audio_lengths"],
                output_names=["log_probs", "lengths"],
                dynamic_axes={
                    "audio": {0: "batch", 1: "samples"},
                    "audio_lengths": {0: "batch"},
                    "log_probs": {0: "batch", 1: "frames"},
                    "lengths": {0: "batch"},
                },
            )
        else:
            torch.jit.trace(model, (audio, lengths), check_trace=False).save(str(out))
    Path(f"{out}.tokens.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    with user_errors():
        out = export(cfg.checkpoint, cfg.format, cfg.output, cfg.opset)
    print(f"wrote {out} (and {out}.tokens.txt)")


if __name__ == "__main__":
    main()
