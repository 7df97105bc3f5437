"""CTC decoders behind one interface: ``decode(log_probs, lengths) -> list[str]``."""

from __future__ import annotations

from typing import Protocol

import torch

from asr.text import CharTokenizer, ctc_collapse


class Decoder(Protocol):
    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        """(B, T, C) log-probs, (B,) valid frames -> one text per utterance."""
        ...


class GreedyDecoder:
    """Best path: argmax per frame, merge repeats, drop blanks."""

    def __init__(self, tokenizer: CharTokenizer) -> None:
        self.tokenizer = tokenizer

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        best = log_probs.argmax(dim=-1).cpu()  # (B, T)
        return [
            " ".join(self.tokenizer.decode(ctc_collapse(best[i, : int(n)].tolist())).split())
            for i, n in enumerate(lengths.cpu())
        ]
