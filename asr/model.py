"""BiLSTMCTC: subsampling front end -> stacked BiLSTMs -> per-frame class log-probabilities.

A plain nn.Module: it knows nothing of Lightning, features or tokenizers.
"""

from __future__ import annotations

import torch
from torch import nn

from asr.lstm import BiLSTM, SharedDropout, check_implementation


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
    """Stride-2 2-D convolutions in time and frequency (x2, x4, x8): (B, T, F) -> (B, T', C*F')."""

    def __init__(self, input_dim: int, factor: int, channels: int = 32) -> None:
        super().__init__()
        if factor not in (2, 4, 8):
            raise ValueError(f"model.subsampling_factor must be 2, 4 or 8 with conv subsampling, "
                             f"got {factor}")
        layers: list[nn.Module] = []
        in_ch, f = 1, input_dim
        for _ in range({2: 1, 4: 2, 8: 3}[factor]):
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
        subsampling: ``"stack"`` (frame stacking), ``"conv"`` (2-D conv, x2/x4/x8) or ``"none"``.
        subsampling_factor: time reduction of the front end (ignored for ``"none"``).
        shared_dropout: one dropout mask per utterance and channel for all frames (variational).
        inter_classes: give the intermediate-CTC layer (:meth:`forward` ``layer``) an output layer
            of its own with this many classes; ``None``: it shares the final output layer.
        condition_layer: self-conditioned CTC (Nozaki & Komatsu, 2021) on this LSTM layer (1-based,
            below the last; train it with intermediate CTC there); 0: off. See docs/model.md.
        lstm: the BiLSTM's forward algorithm, ``"dense"``, ``"packed"`` or ``"auto"``
            (:class:`asr.lstm.BiLSTM`); checkpoints are the same for all three.
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
        shared_dropout: bool = False,
        inter_classes: int | None = None,
        condition_layer: int = 0,
        lstm: str = "auto",
    ) -> None:
        super().__init__()
        if condition_layer and not 1 <= condition_layer < num_layers:
            raise ValueError(f"model.condition_layer must be 1..{num_layers - 1} (below "
                             f"model.num_layers={num_layers}) or 0 (off), got {condition_layer}")
        self.config = dict(
            input_dim=input_dim, num_classes=num_classes, hidden_size=hidden_size,
            num_layers=num_layers, dropout=dropout, subsampling=subsampling,
            subsampling_factor=subsampling_factor, shared_dropout=shared_dropout,
            inter_classes=inter_classes, condition_layer=condition_layer,
            lstm=check_implementation(lstm),
        )
        self.condition_layer = condition_layer
        if subsampling == "stack":
            self.frontend: nn.Module | None = FrameStack(input_dim, subsampling_factor)
        elif subsampling == "conv":
            self.frontend = ConvSubsampling(input_dim, subsampling_factor)
        elif subsampling == "none":
            self.frontend = None
        else:
            raise ValueError(f"model.subsampling must be 'stack', 'conv' or 'none', "
                             f"got {subsampling!r}")
        lstm_in = self.frontend.output_dim if self.frontend is not None else input_dim
        self.input_dropout = SharedDropout(dropout, shared=shared_dropout)
        self.lstm = BiLSTM(lstm_in, hidden_size, num_layers, dropout=dropout,
                           shared_dropout=shared_dropout, implementation=lstm)
        self.output_dropout = SharedDropout(dropout, shared=shared_dropout)
        self.classifier = nn.Linear(2 * hidden_size, num_classes)
        self.inter_classifier = nn.Linear(2 * hidden_size, inter_classes) if inter_classes else None
        self.condition_proj = (
            nn.Linear(inter_classes or num_classes, 2 * hidden_size) if condition_layer else None
        )

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Output frames for ``lengths`` input frames."""
        return self.frontend.output_lengths(lengths) if self.frontend is not None else lengths

    def forward(
        self, feats: torch.Tensor, lengths: torch.Tensor, layer: int | None = None
    ) -> tuple[torch.Tensor, ...]:
        """(B, T, F) features, (B,) frame counts -> (B, T', C) log-probs, (B,) output frames.

        With ``layer`` (1-based, below the last; intermediate CTC), also that LSTM layer's
        log-probs, through the intermediate output layer if there is one:
        ``(log_probs, layer_log_probs, lengths)``.
        """
        if layer is None:
            outputs, _, lengths = self._encode(feats, lengths, every_layer=False)
            return self._log_probs(outputs[-1]), lengths
        if not 1 <= layer < len(self.lstm.layers):
            raise ValueError(f"the intermediate CTC layer must be 1..{len(self.lstm.layers) - 1} "
                             f"(model.num_layers={len(self.lstm.layers)}), got {layer}")
        outputs, conditioned, lengths = self._encode(feats, lengths)
        if layer == self.condition_layer:
            inter = conditioned
        else:
            inter = self._log_probs(outputs[layer - 1], self.inter_classifier)
        return self._log_probs(outputs[-1]), inter, lengths

    def _encode(
        self, feats: torch.Tensor, lengths: torch.Tensor, every_layer: bool = True
    ) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor]:
        """Front end + LSTMs: (every layer's output, or only the last's unless ``every_layer``;
        the self-conditioning layer's log-probs or None; lengths)."""
        x = feats
        if self.frontend is not None:
            x, lengths = self.frontend(x, lengths)
        if self.condition_proj is None:
            if not every_layer:  # the packed LSTM can then run all its layers in one call
                return [self.lstm(self.input_dropout(x), lengths)], None, lengths
            return self.lstm.layer_outputs(self.input_dropout(x), lengths), None, lengths
        conditioned: list[torch.Tensor] = []

        def condition(i: int, out: torch.Tensor) -> torch.Tensor:
            if i + 1 != self.condition_layer:
                return out
            log_probs = self._log_probs(out, self.inter_classifier)
            conditioned.append(log_probs)
            return out + self.condition_proj(log_probs.exp().to(out.dtype))

        outputs = self.lstm.layer_outputs(self.input_dropout(x), lengths, condition)
        return outputs, conditioned[0], lengths

    def _log_probs(self, x: torch.Tensor, classifier: nn.Linear | None = None) -> torch.Tensor:
        # (B, T', 2H) -> (B, T', C)
        logits = (classifier or self.classifier)(self.output_dropout(x))
        return logits.float().log_softmax(dim=-1)
