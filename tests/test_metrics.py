"""WER/CER against hand-counted edits (asr.metrics).

Every expected number below was counted by hand; the comment on each case shows the alignment
(``[a->b]`` substitution, ``[-a]`` deletion, ``[+b]`` insertion). Each case is chosen so that
its minimal alignments all split into the same S/D/I, so the counts do not depend on jiwer's
tie-breaking.
"""

from __future__ import annotations

import pytest

from asr.metrics import error_counts, error_report


def sdi(report: dict) -> tuple[int, int, int, int]:
    """Word (substitutions, deletions, insertions, reference words) of a report."""
    return report["substitutions"], report["deletions"], report["insertions"], report["ref_words"]


def char_sdi(report: dict) -> tuple[int, int, int, int]:
    """Character (substitutions, deletions, insertions, reference characters) of a report."""
    return (report["char_substitutions"], report["char_deletions"], report["char_insertions"],
            report["ref_chars"])


def test_exact_match_scores_zero():
    r = error_report(["the cat sat"], ["the cat sat"])
    assert sdi(r) == (0, 0, 0, 3) and r["hits"] == 3
    assert char_sdi(r) == (0, 0, 0, 11)  # 9 letters + 2 spaces
    assert r["wer"] == 0.0 and r["cer"] == 0.0 and r["utterances"] == 1


@pytest.mark.parametrize(("ref", "hyp", "expected", "wer"), [
    # one [two->too] three [four->for]
    ("one two three four", "one too three for", (2, 0, 0, 4), 2 / 4),
    # [-please] turn [-the] lights off
    ("please turn the lights off", "turn lights off", (0, 2, 0, 5), 2 / 5),
    # [+please] turn [+the] lights off
    ("turn lights off", "please turn the lights off", (0, 0, 2, 3), 2 / 3),
    # the cat [sat->sit] on [the->mat] mat [+now]
    ("the cat sat on the mat", "the cat sit on mat mat now", (2, 0, 1, 6), 3 / 6),
    # the [cat->bat] sat [-on] the mat [+today]
    ("the cat sat on the mat", "the bat sat the mat today", (1, 1, 1, 6), 3 / 6),
], ids=["substitutions", "deletions", "insertions", "subs+ins", "sub+del+ins"])
def test_word_edit_counts(ref, hyp, expected, wer):
    r = error_report([ref], [hyp])
    assert sdi(r) == expected
    assert r["wer"] == wer
    s, d, i, n = expected
    assert r["hits"] == n - s - d


def test_corpus_wer_pools_edits_not_utterance_rates():
    # [hello->yellow] (1 of 1 word) + exact match (0 of 6): pooled 1/7, mean of rates would be 1/2
    # chars: [h->y]ello[+w] (2 of 5) + 0 of 22: pooled 2/27, mean of rates would be 1/5
    refs = ["hello", "the cat sat on the mat"]
    hyps = ["yellow", "the cat sat on the mat"]
    r = error_report(refs, hyps)
    assert sdi(r) == (1, 0, 0, 7) and char_sdi(r) == (1, 0, 1, 27)
    assert r["wer"] == 1 / 7 and r["cer"] == 2 / 27
    assert r["utterances"] == 2
    words, chars = error_counts(refs, hyps)
    assert (words.errors, words.reference, chars.errors, chars.reference) == (1, 7, 2, 27)


def test_empty_reference_counts_the_hypothesis_as_insertions():
    # "" vs [+uh] [+huh]: 2 word and 6 character insertions (the space counts), 0 reference words
    r = error_report([""], ["uh huh"])
    assert sdi(r) == (0, 0, 2, 0) and char_sdi(r) == (0, 0, 6, 0)
    # with no reference at all the denominator is guarded to 1: the "rate" is the insertion count
    assert r["wer"] == 2.0 and r["cer"] == 6.0
    # whitespace-only references are empty too; in a corpus the insertions add to the other errors
    r = error_report(["  ", "turn lights off"], ["uh huh", "turn lights off"])
    assert sdi(r) == (0, 0, 2, 3) and char_sdi(r) == (0, 0, 6, 15)
    assert r["wer"] == 2 / 3 and r["cer"] == 6 / 15


def test_all_empty_corpus_scores_zero_without_dividing_by_zero():
    r = error_report(["", ""], ["", ""])
    assert sdi(r) == (0, 0, 0, 0) and char_sdi(r) == (0, 0, 0, 0)
    assert r["wer"] == 0.0 and r["cer"] == 0.0 and r["utterances"] == 2


def test_empty_hypothesis_is_all_deletions():
    # [-turn] [-lights] [-off]; chars: all 15 deleted (13 letters + 2 spaces)
    r = error_report(["turn lights off"], [""])
    assert sdi(r) == (0, 3, 0, 3) and char_sdi(r) == (0, 15, 0, 15)
    assert r["wer"] == 1.0 and r["cer"] == 1.0


def test_cer_counts_spaces():
    # words: [ice->icecream] [-cream]
    # chars: ice[- ]cream, 1 of 9 (not counting spaces it would be 0 of 8)
    r = error_report(["ice cream"], ["icecream"])
    assert sdi(r) == (1, 1, 0, 2) and char_sdi(r) == (0, 1, 0, 9)
    assert r["wer"] == 1.0 and r["cer"] == 1 / 9
    # chars: the [c->d][a->o][t->g] sat, 3 of 11
    r = error_report(["the cat sat"], ["the dog sat"])
    assert char_sdi(r) == (3, 0, 0, 11) and r["cer"] == 3 / 11


def test_cer_single_letter_in_long_word():
    # internationali[z->s]ation: 1 of 20 characters, but the whole (only) word is wrong
    r = error_report(["internationalization"], ["internationalisation"])
    assert sdi(r) == (1, 0, 0, 1) and char_sdi(r) == (1, 0, 0, 20)
    assert r["wer"] == 1.0 and r["cer"] == 1 / 20


def test_case_is_not_folded():
    # callers pass normalised text (asr.text.normalize_text); metrics itself compares verbatim:
    # [Cat->cat]; chars [C->c]at
    r = error_report(["Cat"], ["cat"])
    assert sdi(r) == (1, 0, 0, 1) and char_sdi(r) == (1, 0, 0, 3)


def test_surrounding_and_repeated_word_spaces_are_ignored_for_words():
    r = error_report(["turn lights off"], ["  turn   lights off "])
    assert sdi(r) == (0, 0, 0, 3) and r["wer"] == 0.0
    # characters: leading/trailing white space is stripped before counting
    r = error_report(["turn lights off"], [" turn lights off  "])
    assert char_sdi(r) == (0, 0, 0, 15) and r["cer"] == 0.0


def test_rejects_mismatched_or_empty_input():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        error_counts(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no utterances"):
        error_report([], [])
