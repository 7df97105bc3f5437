"""CTC decoders behind one interface: ``decode(log_probs, lengths) -> list[str]``.

``GreedyDecoder`` takes the best path. ``BeamSearchDecoder`` runs torchaudio's CTC beam search
(flashlight-text), lexicon-free, or constrained to a lexicon's words and scored by a KenLM n-gram.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

import torch

from asr.text import CharTokenizer, Tokenizer, WordTokenizer, ctc_collapse, normalize_text

log = logging.getLogger(__name__)

BLANK_TOKEN = "<blank>"
WORD_BOUNDARY = "|"  # our space token, named as flashlight names its silence/word boundary
UNK_WORD = "<unk>"
# a word model's character classes as flashlight tokens ("+a"): its words keep their names
CHAR_MARK = "+"


class Decoder(Protocol):
    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        """(B, T, C) log-probs, (B,) valid frames -> one text per utterance."""
        ...


class GreedyDecoder:
    """Best path: argmax per frame, merge repeats, drop blanks."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        best = log_probs.argmax(dim=-1).cpu()  # (B, T)
        return [
            " ".join(self.tokenizer.decode(ctc_collapse(best[i, : int(n)].tolist())).split())
            for i, n in enumerate(lengths.cpu())
        ]


def decoder_tokens(tokenizer: Tokenizer) -> list[str]:
    """The model's classes as flashlight tokens, in id order.

    Blank first, then characters (space renamed ``|``), SentencePiece pieces, or a word model's
    words (as themselves, so a word LM scores them) and its characters (``+a``; the space ``|``).
    """
    if isinstance(tokenizer, CharTokenizer):
        chars, words, mark = tokenizer.vocab, [], ""
    elif isinstance(tokenizer, WordTokenizer):
        chars, words, mark = tokenizer.chars, tokenizer.words, CHAR_MARK
    else:  # SentencePiece: its pieces; "▁" marks a word's start
        return [BLANK_TOKEN] + [tokenizer.sp.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    for reserved in (BLANK_TOKEN, WORD_BOUNDARY):
        if reserved in chars:
            raise ValueError(
                f"tokenizer.vocab contains {reserved!r}, which beam search reserves; "
                "remove it from the vocabulary"
            )
    if " " not in chars:
        raise ValueError("beam search needs a space in tokenizer.vocab: it separates words")
    tokens = [BLANK_TOKEN, *words] + [WORD_BOUNDARY if c == " " else mark + c for c in chars]
    if len(set(tokens)) != len(tokens):
        clash = sorted({t for t in tokens if tokens.count(t) > 1})
        raise ValueError(f"the tokenizer's words {clash} clash with names beam search reserves "
                         f"for its classes")
    return tokens


def read_lexicon_words(path: str | os.PathLike) -> list[str]:
    """Words of a lexicon or word-list file: the first column of each non-empty line, deduplicated.

    Flashlight lexicons (``word w o r d |``), phonetic ones (``WORD W ER1 D``) and plain word lists
    alike: a character model spells each word itself, so only the words matter.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"decoder.lexicon={path} does not exist; give a word list or lexicon (first column = "
            f"word), e.g. the one `python -m asr.lm` writes"
        )
    words: dict[str, None] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if fields:
                words.setdefault(fields[0])
    if not words:
        raise ValueError(f"decoder.lexicon={path} holds no words")
    return list(words)


def write_spelling_lexicon(words: list[str], tokenizer: CharTokenizer,
                           path: str | os.PathLike) -> int:
    """Write a flashlight lexicon spelling each word with the model's characters; return how many.

    A word is spelled from its normalised text (``HELLO`` as ``h e l l o |``, still scored by the LM
    as ``HELLO``). Words with characters the model cannot emit are left out.
    """
    kept = 0
    with open(path, "w", encoding="utf-8") as f:
        for word in words:
            text = normalize_text(word)
            if not text or " " in text or tokenizer.unknown_chars(text) or word == UNK_WORD:
                continue
            # trailing boundary: the space belongs to the word, as the model emits it between words
            spelling = [*text, WORD_BOUNDARY]
            f.write(f"{word}\t{' '.join(spelling)}\n")
            kept += 1
    return kept


def _usable_lexicon(tokenizer: Tokenizer, lexicon: str | None, lm: str | None) -> str | None:
    """The lexicon the search uses (None for a word model), after checking the settings agree.

    Raises:
        ValueError, FileNotFoundError: naming the ``decoder.*`` setting at fault.
    """
    words = isinstance(tokenizer, WordTokenizer)
    if lexicon and words:
        # flashlight's lexicon search cannot hold a one-token word over repeated frames (it scores
        # the repeat as silence); a word model's classes are its lexicon, so it searches
        # lexicon-free, the LM scoring each word class as the word it names
        log.info("decoder.lexicon=%s is not used with a word model: its word classes are the "
                 "lexicon", lexicon)
        lexicon = None
    if lexicon and not isinstance(tokenizer, CharTokenizer):
        raise ValueError(
            f"decoder.lexicon needs a character model; this checkpoint's tokenizer is "
            f"{type(tokenizer).__name__} (lexicon + LM search over SentencePiece pieces is not "
            f"supported yet): use decoder=beam (lexicon-free) or decoder=greedy"
        )
    if lm and not lexicon and not words:
        raise ValueError(
            f"decoder.lm={lm} is a word LM and needs decoder.lexicon (a word list); use "
            f"decoder=beam_lm with decoder.lexicon=..., or drop decoder.lm for lexicon-free search"
        )
    if lm and not Path(lm).is_file():
        raise FileNotFoundError(
            f"decoder.lm={lm} does not exist; give a KenLM ARPA or binary file (`python -m asr.lm` "
            f"writes one from training transcripts)"
        )
    return lexicon


def _lexicon_decoder(ctc_decoder: Any, tokenizer: CharTokenizer, lexicon: str, lm: str | None,
                     options: dict) -> Any:
    """flashlight's lexicon search over the words of ``lexicon``, scored by ``lm`` if given."""
    words = read_lexicon_words(lexicon)
    with tempfile.TemporaryDirectory() as tmp:
        spelled = Path(tmp) / "lexicon.txt"
        kept = write_spelling_lexicon(words, tokenizer, spelled)
        if kept == 0:
            raise ValueError(f"no word of decoder.lexicon={lexicon} can be spelled with the "
                             f"model's tokens")
        if kept < len(words):
            log.warning("%s: %d of %d words use characters the model cannot emit; left out",
                        lexicon, len(words) - kept, len(words))
        try:
            return ctc_decoder(lexicon=str(spelled), lm=str(lm) if lm else None, **options)
        except RuntimeError as err:  # KenLM's message on a malformed file
            raise ValueError(f"decoder.lm={lm} could not be loaded by KenLM: {err}") from None


class BeamSearchDecoder:
    """CTC beam search (torchaudio ``ctc_decoder``), optionally with a lexicon and a KenLM.

    Without ``lexicon`` any string of tokens can come out; with it only its words, scored by
    ``lm``: ``score = acoustic + lm_weight * lm + word_score * words``. A word model
    (:class:`WordTokenizer`) ignores ``lexicon``: ``lm`` scores its word classes as the words.

    Args:
        tokenizer: the checkpoint's tokenizer (its space is the word boundary).
        beam_size: hypotheses kept after each frame.
        beam_size_token: tokens considered per frame (``None``: all).
        beam_threshold: prune hypotheses scoring this much below the best.
        lexicon: word list or lexicon file (first column = word); ``None``: lexicon-free search.
        lm: KenLM ARPA (at least a bigram; ``.arpa.gz`` too) or binary file; needs ``lexicon``.
        lm_weight: LM score weight.
        word_score: score added per word (positive favours more words).
        sil_score: score added per word boundary.
        unk_score: score of an out-of-lexicon word (``-inf``: never).
        log_add: merge equal hypotheses by log-add instead of max.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        beam_size: int = 50,
        beam_size_token: int | None = None,
        beam_threshold: float = 50.0,
        lexicon: str | None = None,
        lm: str | None = None,
        lm_weight: float = 2.0,
        word_score: float = 0.0,
        sil_score: float = 0.0,
        unk_score: float = -math.inf,
        log_add: bool = False,
    ) -> None:
        try:
            from torchaudio.models.decoder import ctc_decoder
        except ImportError as err:  # flashlight-text missing
            raise ImportError(
                f"beam search needs flashlight-text ({err}); install it with "
                f"`pip install flashlight-text`"
            ) from None
        if beam_size < 1:
            raise ValueError(f"decoder.beam_size must be >= 1, got {beam_size}")
        self.words = isinstance(tokenizer, WordTokenizer)
        lexicon = _usable_lexicon(tokenizer, lexicon, lm)
        self.tokenizer = tokenizer
        self.tokens = decoder_tokens(tokenizer)
        self.settings = dict(
            beam_size=beam_size, beam_size_token=beam_size_token, beam_threshold=beam_threshold,
            lexicon=lexicon, lm=lm, lm_weight=lm_weight, word_score=word_score, sil_score=sil_score,
            unk_score=unk_score,
        )
        self.uses_lexicon = bool(lexicon)
        self.chars = isinstance(tokenizer, CharTokenizer)
        spaced = self.chars or self.words  # a space class: the word boundary
        # flashlight needs a silence token: the space, or for pieces (no space; "▁" starts a word)
        # SentencePiece's <unk>, which a trained model hardly ever emits (lexicon-free search only)
        sil_token = WORD_BOUNDARY if spaced else self.tokens[1 + tokenizer.sp.unk_id()]
        self._skip = {0} if spaced else {0, 1 + tokenizer.sp.unk_id()}
        options = dict(
            tokens=self.tokens, nbest=1, beam_size=beam_size, beam_size_token=beam_size_token,
            beam_threshold=beam_threshold, lm_weight=lm_weight, word_score=word_score,
            sil_score=sil_score, unk_score=unk_score, log_add=log_add, blank_token=BLANK_TOKEN,
            sil_token=sil_token, unk_word=UNK_WORD,
        )
        if not lexicon and lm:  # a word model: lexicon-free, the LM's words are its class names
            self._decoder = self._word_model_decoder(ctc_decoder, str(lm), options)
            return
        if not lexicon:
            self._decoder = ctc_decoder(lexicon=None, lm=None, **options)
            return
        self._decoder = _lexicon_decoder(ctc_decoder, tokenizer, lexicon, lm, options)

    def _word_model_decoder(self, ctc_decoder: Any, lm: str, options: dict) -> Any:
        """Lexicon-free search whose LM scores a word model's classes as the words they name, plus
        ``word_score`` each (lexicon-free search has no word score of its own)."""
        from flashlight.lib.text.decoder import KenLM
        from flashlight.lib.text.dictionary import Dictionary

        with tempfile.TemporaryDirectory() as tmp:
            # The LM's dictionary lists the classes in id order: the one torchaudio would make from
            # the tokens is re-sorted, and the LM would score the wrong words.
            lm_dict = Path(tmp) / "lm_dict.txt"
            lm_dict.write_text("".join(f"{t}\n" for t in [*self.tokens, UNK_WORD]),
                               encoding="utf-8")
            try:
                kenlm = KenLM(lm, Dictionary(str(lm_dict)))
            except RuntimeError as err:  # KenLM's message on a malformed file
                raise ValueError(f"decoder.lm={lm} could not be loaded by KenLM: {err}") from None
            lm_weight = options["lm_weight"]
            # the decoder scales LM scores by lm_weight
            bonus = options["word_score"] / lm_weight if lm_weight else 0.0
            # no word score: KenLM as it is (the Python wrapper costs a call per token and frame)
            scored = kenlm
            if bonus:
                scored = _word_score_lm_class()(kenlm, bonus,
                                                set(range(1, len(self.tokenizer.words) + 1)))
            return ctc_decoder(lexicon=None, lm=scored, lm_dict=str(lm_dict), **options)

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        emissions = log_probs.detach().to("cpu", torch.float32)  # (B, T, C)
        lengths = lengths.detach().to("cpu", torch.int32)
        if self.uses_lexicon:
            # Lexicon spellings end with the word boundary, which the model emits only *between*
            # words: one closing boundary frame lets the search complete the last word.
            b, _, c = emissions.shape
            emissions = torch.cat([emissions, emissions.new_zeros(b, 1, c)], dim=1)  # (B, T + 1, C)
            closing = torch.full((c,), -100.0)
            closing[self.tokens.index(WORD_BOUNDARY)] = 0.0
            emissions[torch.arange(b), lengths.long()] = closing
            lengths = lengths + 1
        emissions = emissions.contiguous()
        texts = []
        for hyps in self._decoder(emissions, lengths):
            if not hyps:
                texts.append("")
            elif self.uses_lexicon:
                texts.append(normalize_text(" ".join(hyps[0].words)))
            elif self.chars:
                chars = self._decoder.idxs_to_tokens(hyps[0].tokens)
                texts.append(normalize_text("".join(" " if c == WORD_BOUNDARY else c
                                                    for c in chars)))
            else:  # flashlight's token indices are our ids (same order)
                ids = [i for i in hyps[0].tokens.tolist() if i not in self._skip]
                texts.append(normalize_text(self.tokenizer.decode(ids)))
        return texts


@functools.cache
def _word_score_lm_class() -> type:
    """``WordScoreLM``, made on first use: torchaudio's decoder classes import flashlight-text."""
    from torchaudio.models.decoder import CTCDecoderLM

    class WordScoreLM(CTCDecoderLM):
        """An LM over classes (``lm``: KenLM over their names), ``bonus`` added for ``words``."""

        def __init__(self, lm: Any, bonus: float, words: set[int]) -> None:
            CTCDecoderLM.__init__(self)
            self.lm, self.bonus, self.words = lm, bonus, words

        def start(self, start_with_nothing: bool) -> Any:
            return self.lm.start(start_with_nothing)

        def score(self, state: Any, token: int) -> tuple[Any, float]:
            state, score = self.lm.score(state, token)
            return state, score + (self.bonus if token in self.words else 0.0)

        def finish(self, state: Any) -> tuple[Any, float]:
            return self.lm.finish(state)

    return WordScoreLM
