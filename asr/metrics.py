"""Word and character error rates on top of jiwer."""

from __future__ import annotations

from collections.abc import Sequence

import jiwer


def error_report(refs: Sequence[str], hyps: Sequence[str]) -> dict:
    """Corpus-level WER/CER with their edit counts.

    Empty references are left out of the word counts by jiwer's rules; pass normalised text.

    Returns:
        ``{"wer", "cer", "substitutions", "deletions", "insertions", "hits", "ref_words", "ref_chars",
        "char_substitutions", "char_deletions", "char_insertions", "utterances"}``.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        raise ValueError("no utterances to score")
    # jiwer rejects empty reference strings; a lone space keeps hypotheses countable as insertions.
    refs = [r if r.strip() else " " for r in refs]
    w = jiwer.process_words(list(refs), list(hyps))
    c = jiwer.process_characters(list(refs), list(hyps))
    ref_words = w.hits + w.substitutions + w.deletions
    ref_chars = c.hits + c.substitutions + c.deletions
    return {
        "wer": float(w.wer),
        "cer": float(c.cer),
        "substitutions": int(w.substitutions),
        "deletions": int(w.deletions),
        "insertions": int(w.insertions),
        "hits": int(w.hits),
        "ref_words": int(ref_words),
        "ref_chars": int(ref_chars),
        "char_substitutions": int(c.substitutions),
        "char_deletions": int(c.deletions),
        "char_insertions": int(c.insertions),
        "utterances": len(refs),
    }
