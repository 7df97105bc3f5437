"""Word and character error rates on top of jiwer: the one place edits are counted.

Validation, model selection and evaluation all count with :func:`error_counts`, so they agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jiwer


class Edits(NamedTuple):
    """Edit counts of a set of utterances, in words or in characters."""

    hits: int
    substitutions: int
    deletions: int
    insertions: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def reference(self) -> int:
        """Length of the references (words or characters)."""
        return self.hits + self.substitutions + self.deletions


def error_counts(refs: Sequence[str], hyps: Sequence[str]) -> tuple[Edits, Edits]:
    """Word and character edits of ``hyps`` against ``refs`` (normalised text, one per utterance).

    An empty reference is allowed (non-speech): every word of its hypothesis counts as an
    insertion.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        raise ValueError("no utterances to score")
    w = jiwer.process_words(list(refs), list(hyps))
    c = jiwer.process_characters(list(refs), list(hyps))
    return (Edits(w.hits, w.substitutions, w.deletions, w.insertions),
            Edits(c.hits, c.substitutions, c.deletions, c.insertions))


def error_report(refs: Sequence[str], hyps: Sequence[str]) -> dict:
    """Corpus-level WER/CER with their edit counts.

    Returns:
        ``{"wer", "cer", "substitutions", "deletions", "insertions", "hits", "ref_words",
        "ref_chars", "char_substitutions", "char_deletions", "char_insertions", "utterances"}``.
    """
    words, chars = error_counts(refs, hyps)
    return {
        "wer": words.errors / max(words.reference, 1),
        "cer": chars.errors / max(chars.reference, 1),
        "substitutions": words.substitutions,
        "deletions": words.deletions,
        "insertions": words.insertions,
        "hits": words.hits,
        "ref_words": words.reference,
        "ref_chars": chars.reference,
        "char_substitutions": chars.substitutions,
        "char_deletions": chars.deletions,
        "char_insertions": chars.insertions,
        "utterances": len(refs),
    }
