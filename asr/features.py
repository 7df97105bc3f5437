"""Log-Mel features and SpecAugment as nn.Modules that run on the model's device."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torchaudio
from torch import nn

NORMALIZE = ("utterance", "global", "none")


class LogMelFeatures(nn.Module):
    """Waveforms -> normalised log-Mel filterbanks.

    Args:
        sample_rate: of the input waveforms.
        n_mels: filterbank channels (the feature dimension).
        win_ms, hop_ms: analysis window and hop in milliseconds.
        n_fft: FFT size (>= window length in samples).
        normalize: ``"utterance"`` (mean/variance over each utterance's valid frames), ``"global"``
            (per-channel training-set statistics saved with the model, see :meth:`set_global_stats`)
            or ``"none"``.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 80,
        win_ms: float = 25.0,
        hop_ms: float = 10.0,
        n_fft: int = 512,
        normalize: str = "utterance",
    ) -> None:
        super().__init__()
        if normalize not in NORMALIZE:
            raise ValueError(f"features.normalize must be one of {', '.join(NORMALIZE)}, "
                             f"got {normalize!r}")
        self.config = dict(
            sample_rate=sample_rate, n_mels=n_mels, win_ms=win_ms, hop_ms=hop_ms, n_fft=n_fft,
            normalize=normalize
        )
        self.n_mels = n_mels
        self.hop_length = int(round(sample_rate * hop_ms / 1000))
        self.normalize = normalize
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=n_fft,
            win_length=int(round(sample_rate * win_ms / 1000)),
            hop_length=self.hop_length,
            n_mels=n_mels,
            center=True,
            power=2.0,
            pad_mode="constant",  # zeros, as batch padding is: features do not depend on the batch
        )
        if normalize == "global":  # identity until set_global_stats; saved in the state_dict
            self.register_buffer("global_mean", torch.zeros(n_mels))
            self.register_buffer("global_std", torch.ones(n_mels))

    def set_global_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Channel means and standard deviations of log-Mel energies for ``normalize="global"``."""
        if self.normalize != "global":
            raise ValueError(f"global statistics need features.normalize=global, "
                             f"not {self.normalize!r}")
        if mean.shape != (self.n_mels,) or std.shape != (self.n_mels,) or not bool((std > 0).all()):
            raise ValueError(f"global statistics must be ({self.n_mels},) means and positive "
                             f"standard deviations")
        self.global_mean.copy_(mean)
        self.global_std.copy_(std)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames per utterance for ``lengths`` samples (centred STFT)."""
        return torch.div(lengths, self.hop_length, rounding_mode="floor") + 1

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, S) waveforms -> (B, T, n_mels) log-Mel energies, before normalisation."""
        # The STFT runs in fp32 even under autocast: bf16 log-power spectra lose too much.
        with torch.autocast(device_type=audio.device.type, enabled=False):
            feats = self.mel(audio.float())  # (B, n_mels, T)
            return torch.log(feats + 1e-6).transpose(1, 2)  # (B, n_mels, T) -> (B, T, n_mels)

    @torch.no_grad()
    def forward(self, audio: torch.Tensor,
                lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) waveforms, (B,) sample counts -> (B, T, n_mels) features, (B,) frame counts."""
        return self.normalize_frames(self.log_mel(audio), lengths)

    def normalize_frames(
        self, feats: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, n_mels) log-Mel, (B,) sample counts -> (B, T, n_mels) normalised, (B,) frames.

        Padding frames are zero. The frame counts stay where ``lengths`` is; only a copy goes
        to the device for the mask, so nothing waits for the device.
        """
        frame_lengths = self.output_lengths(lengths).clamp(max=feats.shape[1])
        on_device = frame_lengths.to(feats.device, non_blocking=True)
        mask = (torch.arange(feats.shape[1], device=feats.device)[None, :]
                < on_device[:, None])[..., None]  # (B, T, 1)
        if self.normalize == "utterance":
            n = on_device.clamp(min=1)[:, None, None].to(feats.dtype)
            mean = (feats * mask).sum(1, keepdim=True) / n
            var = (((feats - mean) * mask) ** 2).sum(1, keepdim=True) / n
            feats = (feats - mean) / torch.sqrt(var + 1e-5)
        elif self.normalize == "global":
            feats = (feats - self.global_mean) / self.global_std
        return feats * mask, frame_lengths


@torch.no_grad()
def global_stats(
    features: LogMelFeatures, audio: Iterable[torch.Tensor], floor: float = 1e-2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of the log-Mel energies of ``audio`` (1-D waveforms)
    over all frames, in float64; the deviation is floored at ``floor`` (silent channels)."""
    total = torch.zeros(features.n_mels, dtype=torch.float64)
    squares = torch.zeros(features.n_mels, dtype=torch.float64)
    frames = 0
    for wav in audio:
        feats = features.log_mel(wav.reshape(1, -1))[0].double()  # (T, n_mels)
        total += feats.sum(0)
        squares += feats.square().sum(0)
        frames += feats.shape[0]
    if frames == 0:
        raise ValueError("global feature statistics need at least one utterance")
    mean = total / frames
    std = (squares / frames - mean.square()).clamp(min=0).sqrt().clamp(min=floor)
    return mean.float(), std.float()


class SpecAugment(nn.Module):
    """Frequency and time masking (Park et al. 2019), a fresh mask per utterance; eval: identity.

    Args:
        freq_masks: number of frequency masks.
        freq_width: largest frequency mask, in channels.
        time_masks: number of time masks.
        time_width: largest time mask as a fraction of each utterance's length.
    """

    def __init__(self, freq_masks: int = 2, freq_width: int = 27, time_masks: int = 2,
                 time_width: float = 0.05):
        super().__init__()
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width

    @staticmethod
    def _mask(size: int, widths: torch.Tensor, limits: torch.Tensor) -> torch.Tensor:
        """(B,) widths and (B,) valid extents -> (B, size) bool mask of one band per row."""
        starts = (torch.rand_like(widths, dtype=torch.float)
                  * (limits - widths).clamp(min=0)).long()
        pos = torch.arange(size, device=widths.device)[None, :]
        return (pos >= starts[:, None]) & (pos < (starts + widths)[:, None])

    @torch.no_grad()
    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, F) features, (B,) frame counts -> (B, T, F) masked features (in training)."""
        if not self.training:
            return feats
        b, t, f = feats.shape
        lengths = lengths.to(feats.device, non_blocking=True)
        keep = torch.ones(b, t, f, dtype=torch.bool, device=feats.device)
        full_f = torch.full((b,), f, device=feats.device)
        for _ in range(self.freq_masks):
            widths = torch.randint(0, self.freq_width + 1, (b,), device=feats.device)
            keep &= ~self._mask(f, widths, full_f)[:, None, :]
        for _ in range(self.time_masks):
            max_w = (lengths.float() * self.time_width).long()
            widths = (torch.rand(b, device=feats.device) * (max_w + 1)).long()
            keep &= ~self._mask(t, widths, lengths)[:, :, None]
        return feats * keep
