"""Word and character error rates on top of jiwer: the one place edits are counted.

Training's validation WER, model selection and evaluation reports all count with :func:`error_counts`, so the
numbers they print agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jiwer


class ErrorCounts(NamedTuple):
    """Edit counts of a set of utterances, words and characters (normalised text)."""

    hits: int
    substitutions: int
    deletions: int
    insertions: int
    char_hits: int
    char_substitutions: int
    char_deletions: int
    char_insertions: int

    @property
    def word_errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def ref_words(self) -> int:
        return self.hits + self.substitutions + self.deletions

    @property
    def char_errors(self) -> int:
        return self.char_substitutions + self.char_deletions + self.char_insertions

    @property
    def ref_chars(self) -> int:
        return self.char_hits + self.char_substitutions + self.char_deletions


def error_counts(refs: Sequence[str], hyps: Sequence[str]) -> ErrorCounts:
    """Word and character edits of ``hyps`` against ``refs`` (normalised text, one pair per utterance).

    An empty reference is scored as a lone space (jiwer rejects empty references), so every word of its
    hypothesis counts as an insertion.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        raise ValueError("no utterances to score")
    refs = [r if r.strip() else " " for r in refs]
    w = jiwer.process_words(list(refs), list(hyps))
    c = jiwer.process_characters(list(refs), list(hyps))
    return ErrorCounts(w.hits, w.substitutions, w.deletions, w.insertions,
                       c.hits, c.substitutions, c.deletions, c.insertions)


def error_report(refs: Sequence[str], hyps: Sequence[str]) -> dict:
    """Corpus-level WER/CER with their edit counts.

    Returns:
        ``{"wer", "cer", "substitutions", "deletions", "insertions", "hits", "ref_words", "ref_chars",
        "char_substitutions", "char_deletions", "char_insertions", "utterances"}``.
    """
    n = error_counts(refs, hyps)
    return {
        "wer": n.word_errors / max(n.ref_words, 1),
        "cer": n.char_errors / max(n.ref_chars, 1),
        "substitutions": n.substitutions,
        "deletions": n.deletions,
        "insertions": n.insertions,
        "hits": n.hits,
        "ref_words": n.ref_words,
        "ref_chars": n.ref_chars,
        "char_substitutions": n.char_substitutions,
        "char_deletions": n.char_deletions,
        "char_insertions": n.char_insertions,
        "utterances": len(refs),
    }
