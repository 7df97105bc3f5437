"""BiLSTMCTC: subsampling front end -> stacked bidirectional LSTMs -> per-frame class log-probabilities.

A plain nn.Module: it knows nothing of Lightning, features or tokenizers.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class FrameStack(nn.Module):
    """Concatenate ``factor`` consecutive frames: (B, T, F) -> (B, ceil(T/factor), F*factor)."""

    def __init__(self, input_dim: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.output_dim = input_dim * factor

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(lengths + self.factor - 1, self.factor, rounding_mode="floor")

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, f = x.shape
        pad = (-t) % self.factor
        if pad:
            x = nn.functional.pad(x, (0, 0, 0, pad))
        return x.reshape(b, (t + pad) // self.factor, f * self.factor), self.output_lengths(lengths)


class ConvSubsampling(nn.Module):
    """2-D convolutions with stride 2 in time and frequency (x2 or x4): (B, T, F) -> (B, T', channels * F')."""

    def __init__(self, input_dim: int, factor: int, channels: int = 32) -> None:
        super().__init__()
        if factor not in (2, 4):
            raise ValueError(f"model.subsampling_factor must be 2 or 4 with conv subsampling, got {factor}")
        layers: list[nn.Module] = []
        in_ch, f = 1, input_dim
        for _ in range({2: 1, 4: 2}[factor]):
            layers += [nn.Conv2d(in_ch, channels, kernel_size=3, stride=2, padding=1), nn.ReLU()]
            in_ch, f = channels, (f - 1) // 2 + 1
        self.conv = nn.Sequential(*layers)
        self.num_convs = len(layers) // 2
        self.output_dim = channels * f

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for _ in range(self.num_convs):
            lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
        return lengths

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv(x.unsqueeze(1))  # (B, T, F) -> (B, 1, T, F) -> (B, C, T', F')
        b, c, t, f = x.shape
        x = x.transpose(1, 2).reshape(b, t, c * f)  # (B, C, T', F') -> (B, T', C*F')
        return x, self.output_lengths(lengths)


class BiLSTMCTC(nn.Module):
    """Stacked bidirectional LSTM acoustic model for CTC. Class 0 is the blank.

    Args:
        input_dim: feature dimension (e.g. 80 log-Mel channels).
        num_classes: output classes including the blank.
        hidden_size: LSTM units per direction.
        num_layers: stacked bidirectional LSTM layers.
        dropout: dropout on the LSTM input, between LSTM layers and before the output layer.
        subsampling: ``"stack"`` (frame stacking), ``"conv"`` (2-D conv, x2/x4) or ``"none"``.
        subsampling_factor: time reduction of the front end (ignored for ``"none"``).
    """

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        hidden_size: int = 256,
        num_layers: int = 3,
        dropout: float = 0.2,
        subsampling: str = "stack",
        subsampling_factor: int = 3,
    ) -> None:
        super().__init__()
        self.config = dict(
            input_dim=input_dim, num_classes=num_classes, hidden_size=hidden_size, num_layers=num_layers,
            dropout=dropout, subsampling=subsampling, subsampling_factor=subsampling_factor,
        )
        if subsampling == "stack":
            self.frontend: nn.Module | None = FrameStack(input_dim, subsampling_factor)
        elif subsampling == "conv":
            self.frontend = ConvSubsampling(input_dim, subsampling_factor)
        elif subsampling == "none":
            self.frontend = None
        else:
            raise ValueError(f"model.subsampling must be 'stack', 'conv' or 'none', got {subsampling!r}")
        lstm_in = self.frontend.output_dim if self.frontend is not None else input_dim
        self.input_dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(
            lstm_in, hidden_size, num_layers=num_layers, bidirectional=True, batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.output_dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * hidden_size, num_classes)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Output frames for ``lengths`` input frames."""
        return self.frontend.output_lengths(lengths) if self.frontend is not None else lengths

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, F) features, (B,) frame counts -> (B, T', C) log-probs, (B,) output frame counts."""
        x = feats
        if self.frontend is not None:
            x, lengths = self.frontend(x, lengths)
        x = self.input_dropout(x)
        total = x.shape[1]
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        x, _ = pad_packed_sequence(out, batch_first=True, total_length=total)  # (B, T', 2H)
        logits = self.classifier(self.output_dropout(x))  # (B, T', C)
        return logits.float().log_softmax(dim=-1), lengths
