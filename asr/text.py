"""Text normalisation and tokenizers.

Index 0 is always the CTC blank; tokens start at 1.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)


def normalize_text(text: str) -> str:
    """Lower-case and collapse white space: the form WER is computed on."""
    return " ".join(text.lower().split())  # split() and regex \s agree on white space


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
        return set(text).difference(self._ids)

    def encode(self, text: str) -> list[int]:
        """Ids of a normalised text; a ValueError names any character outside the vocabulary."""
        try:
            return list(map(self._ids.__getitem__, text))
        except KeyError as err:
            raise ValueError(
                f"character {err.args[0]!r} in {text!r} is not in the tokenizer's vocabulary "
                f"{self.vocab!r}"
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


class WordTokenizer:
    """Whole words as CTC classes, for closed-vocabulary tasks (digits, letters, commands: AN4).

    Class 0 is the blank, ``1..W`` the words (most frequent first), then one class per character of
    ``chars``. A word outside the vocabulary is spelled with characters and closed by the space, so
    every text round-trips. A word is one output frame: nothing is misspelt, fewer frames do.

    Args:
        words: the vocabulary, in class order; ``None``: from ``train_manifest``.
        train_manifest: JSONL manifest whose normalised transcripts give the vocabulary.
        min_count: fewest occurrences in ``train_manifest`` for a word to get a class of its own.
        max_words: the largest vocabulary (the most frequent words are kept).
        chars: the characters that spell the other words; must hold the space.
    """

    def __init__(
        self,
        words: Sequence[str] | None = None,
        train_manifest: str | os.PathLike | None = None,
        min_count: int = 1,
        max_words: int = 1000,
        chars: str = " abcdefghijklmnopqrstuvwxyz'",
    ) -> None:
        if " " not in chars or len(set(chars)) != len(chars):
            raise ValueError(f"tokenizer.chars must hold the space and each character once, "
                             f"got {chars!r}")
        if words is None:
            if train_manifest is None or not Path(train_manifest).is_file():
                raise FileNotFoundError(
                    f"the word tokenizer takes its vocabulary from "
                    f"tokenizer.train_manifest={train_manifest}, which does not exist; run the "
                    f"recipe's prepare stage first"
                )
            words = vocabulary(train_manifest, min_count=min_count, max_words=max_words)
        words = list(words)
        bad = [w for w in words if not w or " " in w]
        if bad or len(set(words)) != len(words):
            raise ValueError(f"tokenizer.words must be distinct words without spaces, "
                             f"got {bad or 'repeats'}")
        self.words, self.chars = words, chars
        self._word_ids = {w: i + 1 for i, w in enumerate(words)}
        self._char_ids = {c: len(words) + 1 + i for i, c in enumerate(chars)}
        self._space = self._char_ids[" "]

    @property
    def num_classes(self) -> int:
        """Output size of the model: the blank, the words, the characters."""
        return 1 + len(self.words) + len(self.chars)

    def unknown_chars(self, text: str) -> set[str]:
        """Characters of ``text``'s out-of-vocabulary words that ``chars`` cannot spell."""
        return {c for w in text.split() if w not in self._word_ids
                for c in w if c not in self._char_ids}

    def encode(self, text: str) -> list[int]:
        """Ids of a normalised text: one per known word, spelling plus a space for any other."""
        bad = self.unknown_chars(text)
        if bad:
            raise ValueError(f"characters {sorted(bad)} in {text!r} are neither in a known word "
                             f"nor in tokenizer.chars={self.chars!r}")
        ids: list[int] = []
        for w in text.split():
            if w in self._word_ids:
                ids.append(self._word_ids[w])
            else:
                ids.extend(self._char_ids[c] for c in w)
                ids.append(self._space)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a sequence of ids (blank and out-of-range ids are skipped).

        A word class is a word; so is a run of character classes up to a space, a word or the end.
        """
        words: list[str] = []
        spelling = ""
        n_words = len(self.words)
        for i in ids:
            if 0 < i <= n_words or i == self._space:
                if spelling:
                    words.append(spelling)
                    spelling = ""
                if i != self._space:
                    words.append(self.words[i - 1])
            elif n_words < i < self.num_classes:
                spelling += self.chars[i - n_words - 1]
        if spelling:
            words.append(spelling)
        return " ".join(words)

    def state_dict(self) -> dict:
        """Plain data that rebuilds this tokenizer (in checkpoints): the words as one line."""
        return {"type": "word", "words": " ".join(self.words), "chars": self.chars}

    @classmethod
    def from_state_dict(cls, state: dict) -> WordTokenizer:
        if state.get("type") != "word":
            raise ValueError(f"unknown tokenizer type {state.get('type')!r} in checkpoint")
        return cls(words=str(state["words"]).split(), chars=str(state["chars"]))


def vocabulary(manifest: str | os.PathLike, min_count: int = 1,
               max_words: int | None = None) -> list[str]:
    """Words of a manifest's normalised transcripts seen at least ``min_count`` times, at most
    ``max_words``, most frequent first (ties alphabetical, whatever the manifest's order)."""
    counts: dict[str, int] = {}
    with open(manifest, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                for w in normalize_text(json.loads(line)["text"]).split():
                    counts[w] = counts.get(w, 0) + 1
    ranked = sorted((w for w, n in counts.items() if n >= min_count),
                    key=lambda w: (-counts[w], w))
    return ranked[:max_words] if max_words else ranked


class SentencePieceTokenizer:
    """SentencePiece (BPE by default) sub-words to ids and back; blank 0, piece ``i`` is ``i + 1``.

    Trained on ``train_manifest`` the first time (the ``model_path`` file is reused afterwards); it
    travels inside every checkpoint as plain data.

    Args:
        model_path: the ``.model`` file, trained here when missing; None: beside the training
            manifest, ``<manifest stem>.<model_type><vocab_size>.model``.
        train_manifest: JSONL manifest whose normalised texts train the model, if it must be.
        vocab_size: number of pieces (the model's output layer has one more, for the blank).
        model_type: ``bpe`` or ``unigram``.
    """

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        train_manifest: str | os.PathLike | None = None,
        vocab_size: int = 256,
        model_type: str = "bpe",
        _model_proto: bytes | None = None,
    ) -> None:
        import sentencepiece as spm

        if _model_proto is None:
            if model_path is None:
                if train_manifest is None:
                    raise ValueError("set tokenizer.model_path or tokenizer.train_manifest ")
                manifest = Path(train_manifest)
                model_path = manifest.with_name(f"{manifest.stem}.{model_type}{vocab_size}.model")
            model_path = Path(model_path)
            if not model_path.is_file():
                if train_manifest is None or not Path(train_manifest).is_file():
                    raise FileNotFoundError(
                        f"no SentencePiece model at {model_path} and no training manifest to "
                        f"train one (tokenizer.train_manifest={train_manifest}); run the recipe's "
                        f"prepare stage first"
                    )
                train_sentencepiece(train_manifest, model_path, vocab_size, model_type)
            _model_proto = model_path.read_bytes()
        self._proto = _model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=_model_proto)
        n = self.sp.get_piece_size()
        self._known = {p for i in range(n) for p in self.sp.id_to_piece(i)
                       if not self.sp.is_unknown(i)}
        self.vocab_size = n

    @property
    def num_classes(self) -> int:
        """Output size of the model: the pieces plus the blank."""
        return self.vocab_size + 1

    def unknown_chars(self, text: str) -> set[str]:
        """Characters of ``text`` that no piece covers (they would become ``<unk>``)."""
        return {c for c in text if c != " " and c not in self._known}

    def encode(self, text: str) -> list[int]:
        """Ids of a normalised text. Raises ValueError naming any character no piece covers."""
        bad = self.unknown_chars(text)
        if bad:
            raise ValueError(f"characters {sorted(bad)} in {text!r} are not covered by the "
                             f"SentencePiece model (train it on text that has them, or normalise "
                             f"them away)")
        return [i + 1 for i in self.sp.encode(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a sequence of ids (blank and out-of-range ids are skipped)."""
        return self.sp.decode([i - 1 for i in ids if 0 < i <= self.vocab_size])

    def state_dict(self) -> dict:
        """Plain data that rebuilds this tokenizer (in checkpoints): the model as base64 text."""
        return {"type": "sentencepiece", "model": base64.b64encode(self._proto).decode("ascii")}

    @classmethod
    def from_state_dict(cls, state: dict) -> SentencePieceTokenizer:
        if state.get("type") != "sentencepiece":
            raise ValueError(f"unknown tokenizer type {state.get('type')!r} in checkpoint")
        return cls(_model_proto=base64.b64decode(state["model"]))


def train_sentencepiece(
    manifest: str | os.PathLike, model_path: str | os.PathLike, vocab_size: int = 256,
    model_type: str = "bpe"
) -> Path:
    """Train a SentencePiece model on a manifest's normalised transcripts and write ``model_path``.

    Args:
        manifest: JSONL manifest (``text`` key).
        model_path: where the ``.model`` file goes (written atomically).
        vocab_size: pieces wanted; fewer are made if the text is too small to support them.
        model_type: ``bpe`` or ``unigram``.
    """
    import sentencepiece as spm

    model_path = Path(model_path)
    with open(manifest, encoding="utf-8") as f:
        texts = [normalize_text(json.loads(line)["text"]) for line in f if line.strip()]
    if not texts:
        raise ValueError(f"{manifest} has no transcripts to train the SentencePiece model on")
    proto = _BytesSink()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=proto, vocab_size=vocab_size,
        model_type=model_type, character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0,
        hard_vocab_limit=False, num_threads=1, input_sentence_size=2_000_000,
        shuffle_input_sentence=True, minloglevel=2,
    )
    model_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = model_path.with_name(model_path.name + ".tmp")
    tmp.write_bytes(proto.data)
    os.replace(tmp, model_path)
    log.info("trained a %s SentencePiece model (%d pieces) on %d transcripts -> %s", model_type,
             vocab_size, len(texts), model_path)
    return model_path


class _BytesSink:
    """Receives the trained model from SentencePieceTrainer (its ``model_writer`` protocol)."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


Tokenizer = CharTokenizer | WordTokenizer | SentencePieceTokenizer


def tokenizer_from_state_dict(state: dict) -> Tokenizer:
    """Rebuild a tokenizer from the plain data a checkpoint stores (any kind's ``state_dict()``)."""
    kinds = {"char": CharTokenizer, "word": WordTokenizer, "sentencepiece": SentencePieceTokenizer}
    kind = state.get("type")
    if kind not in kinds:
        raise ValueError(f"unknown tokenizer type {kind!r} in checkpoint; expected one of "
                         f"{sorted(kinds)}")
    return kinds[kind].from_state_dict(state)


def ctc_min_frames(ids: Sequence[int]) -> int:
    """Fewest output frames CTC needs for a label: one per token, plus a blank between repeats."""
    return len(ids) + sum(a == b for a, b in zip(ids[:-1], ids[1:], strict=True))


def ctc_collapse(ids: Sequence[int]) -> list[int]:
    """Best-path CTC rule: merge repeats, then drop blanks (0)."""
    out: list[int] = []
    prev = -1
    for i in ids:
        if i != prev and i != 0:
            out.append(i)
        prev = i
    return out
