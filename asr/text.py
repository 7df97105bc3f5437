"""Text normalisation and tokenizers.

Index 0 is always the CTC blank; tokens start at 1.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lower-case and collapse white space: the form WER is computed on."""
    return _SPACES.sub(" ", text.lower()).strip()


class CharTokenizer:
    """Characters to ids and back; blank is 0, ``vocab[i]`` is id ``i + 1``.

    Args:
        vocab: the characters, in id order (one string, each character once).
    """

    def __init__(self, vocab: str = " abcdefghijklmnopqrstuvwxyz'") -> None:
        if len(set(vocab)) != len(vocab):
            raise ValueError(f"tokenizer.vocab has repeated characters: {vocab!r}; list each once")
        if not vocab:
            raise ValueError("tokenizer.vocab is empty; give the characters the model should emit")
        self.vocab = vocab
        self._ids = {c: i + 1 for i, c in enumerate(vocab)}

    @property
    def num_classes(self) -> int:
        """Output size of the model: the characters plus the blank."""
        return len(self.vocab) + 1

    def unknown_chars(self, text: str) -> set[str]:
        """Characters of ``text`` (already normalised) that the tokenizer cannot encode."""
        return {c for c in text if c not in self._ids}

    def encode(self, text: str) -> list[int]:
        """Ids of a normalised text. Raises ValueError naming any character outside the vocabulary."""
        try:
            return [self._ids[c] for c in text]
        except KeyError as err:
            raise ValueError(
                f"character {err.args[0]!r} in {text!r} is not in the tokenizer's vocabulary {self.vocab!r}"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a sequence of ids (blank and out-of-range ids are skipped)."""
        n = len(self.vocab)
        return "".join(self.vocab[i - 1] for i in ids if 0 < i <= n)

    def state_dict(self) -> dict:
        """Plain data that rebuilds this tokenizer (stored in checkpoints)."""
        return {"type": "char", "vocab": self.vocab}

    @classmethod
    def from_state_dict(cls, state: dict) -> CharTokenizer:
        if state.get("type") != "char":
            raise ValueError(f"unknown tokenizer type {state.get('type')!r} in checkpoint")
        return cls(vocab=str(state["vocab"]))


def ctc_collapse(ids: Sequence[int]) -> list[int]:
    """Best-path CTC rule: merge repeats, then drop blanks (0)."""
    out: list[int] = []
    prev = -1
    for i in ids:
        if i != prev and i != 0:
            out.append(i)
        prev = i
    return out
