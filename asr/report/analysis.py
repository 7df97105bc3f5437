"""Where the errors are: worst utterances (ref vs hyp, aligned) and the most frequent word
confusions, from what evaluation wrote (``decode/<split>/{refs,hyps}.txt``): no model needed.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import jiwer

_TRN_LINE = re.compile(r"^(.*?)\s*\(([^()]*)\)\s*$")


def read_trn(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """An sclite ``trn`` file (``text (id)`` a line, as evaluation writes) -> (ids, texts)."""
    ids, texts = [], []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        m = _TRN_LINE.match(line)
        if not m:
            raise ValueError(f"{path}:{n}: expected 'text (utterance id)', found {line!r}")
        texts.append(m.group(1))
        ids.append(m.group(2))
    return ids, texts


def word_pairs(ref: list[str], hyp: list[str], chunks: Sequence) -> list[tuple[str, str, str]]:
    """Jiwer's alignment chunks -> one ``(op, ref word, hyp word)`` per aligned position.

    ``op`` is ``""`` (correct), ``S``, ``D`` or ``I``; the missing word of a deletion or insertion
    is ``""``.
    """
    pairs = []
    for c in chunks:
        r, h = ref[c.ref_start_idx : c.ref_end_idx], hyp[c.hyp_start_idx : c.hyp_end_idx]
        if c.type == "equal":
            pairs += [("", w, w) for w in r]
        elif c.type == "substitute":
            pairs += [("S", a, b) for a, b in zip(r, h, strict=True)]
        elif c.type == "delete":
            pairs += [("D", a, "") for a in r]
        else:  # insert
            pairs += [("I", "", b) for b in h]
    return pairs


def align_words(ref: list[str], hyp: list[str],
                chunks: Sequence) -> tuple[str, str, list[tuple[str, str, str]]]:
    """Two aligned lines from jiwer's alignment chunks, sclite style (errors UPPER case, gaps ***).

    Returns:
        (ref line, hyp line, edits as ``(op, ref word, hyp word)`` with op in ``S``/``D``/``I``).
    """
    return _aligned_lines(word_pairs(ref, hyp, chunks))


def _aligned_lines(
    pairs: list[tuple[str, str, str]],
) -> tuple[str, str, list[tuple[str, str, str]]]:
    """:func:`word_pairs` -> the two aligned lines and the edits of :func:`align_words`."""
    ref_out, hyp_out, edits = [], [], []
    for op, a, b in pairs:
        if op:
            edits.append((op, a, b))
            a, b = (a or "*" * len(b)).upper(), (b or "*" * len(a)).upper()
        width = max(len(a), len(b))
        ref_out.append(a.ljust(width))
        hyp_out.append(b.ljust(width))
    return " ".join(ref_out).rstrip(), " ".join(hyp_out).rstrip(), edits


def error_analysis(
    ids: Sequence[str], refs: Sequence[str], hyps: Sequence[str], worst: int = 10, top: int = 10
) -> dict:
    """Per-utterance word errors, the ``worst`` utterances and the ``top`` confusions of a split.

    Args:
        ids, refs, hyps: utterance ids, normalised references and hypotheses, in the same order.
        worst: how many utterances to list, most word errors first (ties: higher WER first).
        top: how many substitution pairs, deleted words and inserted words to list.

    Returns:
        ``{"worst": [{"id", "errors", "ref_words", "wer", "ref", "hyp", "words"}],
        "substitutions": [[ref, hyp, n]], "deletions": [[word, n]], "insertions": [[word, n]],
        "utterances_with_errors"}``; ``ref``/``hyp`` are the aligned lines of :func:`align_words`,
        ``words`` the ``[op, ref word, hyp word]`` of :func:`word_pairs` (what report.html colours).
    """
    if not (len(ids) == len(refs) == len(hyps)):
        raise ValueError(f"{len(ids)} ids, {len(refs)} references and {len(hyps)} hypotheses: "
                         "they must match")
    if not refs:
        raise ValueError("no utterances to analyse")
    refs = [r if r.strip() else " " for r in refs]  # jiwer rejects empty references
    out = jiwer.process_words(list(refs), list(hyps))
    subs: Counter[tuple[str, str]] = Counter()
    dels: Counter[str] = Counter()
    ins: Counter[str] = Counter()
    utts = []
    for utt_id, ref, hyp, chunks in zip(ids, out.references, out.hypotheses, out.alignments,
                                        strict=True):
        pairs = word_pairs(ref, hyp, chunks)
        ref_line, hyp_line, edits = _aligned_lines(pairs)
        for op, a, b in edits:
            if op == "S":
                subs[(a, b)] += 1
            elif op == "D":
                dels[a] += 1
            else:
                ins[b] += 1
        utts.append({"id": utt_id, "errors": len(edits), "ref_words": len(ref),
                     "wer": round(len(edits) / max(len(ref), 1), 4), "ref": ref_line,
                     "hyp": hyp_line, "words": [list(p) for p in pairs]})
    ranked = sorted((u for u in utts if u["errors"]),
                    key=lambda u: (-u["errors"], -u["wer"], u["id"]))
    return {
        "worst": ranked[:worst],
        "substitutions": [[a, b, n] for (a, b), n in subs.most_common(top)],
        "deletions": [[w, n] for w, n in dels.most_common(top)],
        "insertions": [[w, n] for w, n in ins.most_common(top)],
        "utterances_with_errors": len(ranked),
    }


def format_errors(split: str, analysis: dict, worst: int | None = None) -> str:
    """Markdown: the worst utterances (aligned, in a code block) and the top confusions of one
    split."""
    items = analysis["worst"][:worst] if worst is not None else analysis["worst"]
    lines = [f"### {split}: worst utterances", ""]
    if items:
        lines.append("```")
        for u in items:
            lines += [f"{u['id']}  {u['errors']} errors / {u['ref_words']} words "
                      f"(WER {100 * u['wer']:.0f}%)", f"  REF: {u['ref']}", f"  HYP: {u['hyp']}",
                      ""]
        lines[-1] = "```"
    else:
        lines.append("no errors")
    lines += ["", f"### {split}: top confusions", "",
              "| substitution (ref → hyp) | n | deleted | n | inserted | n |",
              "|---|---:|---|---:|---|---:|"]
    subs, dels, ins = analysis["substitutions"], analysis["deletions"], analysis["insertions"]
    for i in range(max(len(subs), len(dels), len(ins), 1)):
        s = f"{subs[i][0]} → {subs[i][1]} | {subs[i][2]}" if i < len(subs) else " | "
        d = f"{dels[i][0]} | {dels[i][1]}" if i < len(dels) else " | "
        n = f"{ins[i][0]} | {ins[i][1]}" if i < len(ins) else " | "
        lines.append(f"| {s} | {d} | {n} |")
    return "\n".join(lines)


def write_error_analysis(
    split_dir: str | os.PathLike, ids: Sequence[str], refs: Sequence[str], hyps: Sequence[str],
    worst: int = 10, top: int = 10,
) -> dict:
    """:func:`error_analysis` of one split, written to ``<split_dir>/errors.json`` and
    ``errors.md``."""
    split_dir = Path(split_dir)
    analysis = error_analysis(ids, refs, hyps, worst, top)
    split_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / "errors.json").write_text(
        json.dumps(analysis, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (split_dir / "errors.md").write_text(format_errors(split_dir.name, analysis) + "\n",
                                         encoding="utf-8")
    return analysis


def analyse_decode_dir(split_dir: str | os.PathLike) -> dict:
    """Rebuild the error analysis of ``<split_dir>`` from its ``refs.txt`` and ``hyps.txt``."""
    split_dir = Path(split_dir)
    ref_ids, refs = read_trn(split_dir / "refs.txt")
    hyp_ids, hyps = read_trn(split_dir / "hyps.txt")
    if ref_ids != hyp_ids:
        raise ValueError(f"{split_dir}: refs.txt and hyps.txt list different utterances; "
                         "re-run asr.evaluate")
    return write_error_analysis(split_dir, ref_ids, refs, hyps)
