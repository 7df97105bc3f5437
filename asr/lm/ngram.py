"""Word n-gram LM (interpolated Kneser-Ney, ARPA) and lexicon from training transcripts.

    python -m asr.lm manifest=data/an4/train.jsonl out_dir=data/an4/lm order=3

writes ``<out_dir>/lexicon.txt`` and ``<out_dir>/<order>-gram.arpa`` for ``decoder=beam_lm``;
``spell=<word list>`` adds its words spelled out letter by letter. Why spelled words, and why not
KenLM's ``lmplz``: see docs/report.md.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from asr.data.manifest import read_manifest
from asr.text import normalize_text

log = logging.getLogger(__name__)

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
_LETTERS = re.compile(r"[a-z]+")  # the words spelled_words keeps


def _discount(counts: Iterable[int]) -> float:
    """Kneser-Ney's single discount ``n1 / (n1 + 2 n2)`` from counts-of-counts, kept inside
    (0, 1)."""
    hist = Counter(counts)
    n1, n2 = hist.get(1, 0), hist.get(2, 0)
    if n1 == 0 or n2 == 0:
        return 0.5
    return min(max(n1 / (n1 + 2 * n2), 0.05), 0.95)


def _counts(sentences: Sequence[Sequence[str]],
            order: int) -> tuple[list[Counter], list[Counter]]:
    """Raw n-gram counts per order, and Kneser-Ney's adjusted ones: raw for the top order and for
    n-grams after ``<s>``, continuation counts (distinct words before the n-gram) otherwise."""
    raw: list[Counter] = [Counter() for _ in range(order + 1)]  # raw[n][ngram]
    for words in sentences:
        padded = [BOS, *words, EOS]
        for n in range(1, order + 1):
            for i in range(len(padded) - n + 1):
                raw[n][tuple(padded[i : i + n])] += 1
    if not raw[1]:
        raise ValueError("no sentences to estimate an LM from")
    adjusted: list[Counter] = [Counter() for _ in range(order + 1)]
    adjusted[order] = Counter(raw[order])
    for n in range(order - 1, 0, -1):
        for gram in raw[n + 1]:
            adjusted[n][gram[1:]] += 1
        for gram, c in raw[n].items():
            if gram[0] == BOS:
                adjusted[n][gram] = c
    adjusted[1].pop((BOS,), None)
    return raw, adjusted


def kneser_ney(
    sentences: Sequence[Sequence[str]], order: int = 3
) -> list[dict[tuple[str, ...], tuple[float, float]]]:
    """Estimate an interpolated Kneser-Ney n-gram model (counts: :func:`_counts`).

    Unigrams are interpolated with the uniform distribution, so ``<unk>`` gets probability mass; a
    history's backoff weight in the ARPA file is its interpolation weight.

    Args:
        sentences: word sequences (without ``<s>``/``</s>``).
        order: n of the n-gram (>= 2: KenLM in flashlight needs at least a bigram).

    Returns:
        one ``{ngram: (log10 prob, log10 backoff)}`` dict per order, unigrams first.
    """
    if order < 2:
        raise ValueError(f"order must be >= 2 (the decoder's KenLM needs at least a bigram), "
                         f"got {order}")
    raw, adjusted = _counts(sentences, order)

    vocab = {w for (w,) in raw[1]} | {UNK}
    probs: list[dict[tuple[str, ...], float]] = [{} for _ in range(order + 1)]
    gammas: list[dict[tuple[str, ...], float]] = [{} for _ in range(order + 1)]
    for n in range(1, order + 1):
        d = _discount(adjusted[n].values())
        totals: dict[tuple[str, ...], int] = defaultdict(int)
        types: dict[tuple[str, ...], int] = defaultdict(int)
        for gram, c in adjusted[n].items():
            totals[gram[:-1]] += c
            types[gram[:-1]] += 1
        for hist, total in totals.items():
            gammas[n][hist] = d * types[hist] / total
        for gram, c in adjusted[n].items():
            hist = gram[:-1]
            lower = (1.0 / (len(vocab) - 1) if n == 1
                     else _prob(probs, gammas, gram[1:], len(vocab)))
            probs[n][gram] = (c - d) / totals[hist] + gammas[n][hist] * lower
        if n == 1:
            probs[1][(UNK,)] = gammas[1][()] / (len(vocab) - 1)
    model: list[dict[tuple[str, ...], tuple[float, float]]] = []
    for n in range(1, order + 1):
        table = {
            gram: (math.log10(p), _log10_or_zero(gammas[n + 1].get(gram)) if n < order else 0.0)
            for gram, p in probs[n].items()
        }
        if n == 1:
            table[(BOS,)] = (-99.0, _log10_or_zero(gammas[2].get((BOS,))))
        model.append(table)
    return model


def _log10_or_zero(x: float | None) -> float:
    return math.log10(x) if x else 0.0


def _prob(probs: list[dict], gammas: list[dict], gram: tuple[str, ...], vocab_size: int) -> float:
    """Interpolated probability of ``gram`` from the orders already estimated (backing off as
    needed)."""
    n = len(gram)
    if n == 1:
        return probs[1].get(gram, gammas[1][()] / (vocab_size - 1))
    if gram in probs[n]:
        return probs[n][gram]
    return gammas[n].get(gram[:-1], 1.0) * _prob(probs, gammas, gram[1:], vocab_size)


def write_arpa(model: list[dict[tuple[str, ...], tuple[float, float]]],
               path: str | os.PathLike) -> None:
    """Write :func:`kneser_ney`'s tables in ARPA format (read by KenLM, SRILM, flashlight)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write("\\data\\\n")
        for n, table in enumerate(model, start=1):
            f.write(f"ngram {n}={len(table)}\n")
        for n, table in enumerate(model, start=1):
            f.write(f"\n\\{n}-grams:\n")
            for gram in sorted(table):
                logp, bow = table[gram]
                line = f"{logp:.6f}\t{' '.join(gram)}"
                f.write(f"{line}\t{bow:.6f}\n" if n < len(model) and bow != 0.0 else line + "\n")
        f.write("\n\\end\\\n")
    os.replace(tmp, path)


def spelled_words(path: str | os.PathLike, top: int | None = None) -> list[list[str]]:
    """The words of a word list, each spelled out as a list of its letters.

    Args:
        path: UTF-8 text, one word a line (anything after a tab is ignored), most frequent first;
            words are normalised like transcripts, those with anything but a-z are left out.
        top: keep the first ``top`` usable words (None: all).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"spell={path}: no such word list "
                                "(write one with `python -m asr.lm.wordlist`)")
    words: list[list[str]] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as f:
        for line in f:
            word = normalize_text(line.split("\t", 1)[0])
            if not _LETTERS.fullmatch(word) or word in seen:
                continue
            seen.add(word)
            words.append(list(word))
            if top is not None and len(words) >= top:
                break
    if not words:
        raise ValueError(f"spell={path}: no word of only the letters a-z in it")
    return words


def build_lm(
    manifests: Sequence[str],
    out_dir: str,
    order: int = 3,
    spell: str | None = None,
    spell_top: int | None = None,
    transcript_repeat: int = 1,
) -> dict[str, str]:
    """Lexicon + ARPA LM from the normalised transcripts of ``manifests``; skipped when
    ``<out_dir>/.done.<order>-gram`` holds the same settings.

    Args:
        spell: a word list whose words join the LM's sentences spelled out letter by letter
            (:func:`spelled_words`); the lexicon stays the transcripts' words.
        spell_top: how many of the list's words (None: all).
        transcript_repeat: count each transcript this many times, so that a long word list does
            not drown the corpus's own sentences.

    Returns:
        ``{"lexicon": path, "lm": path}``.
    """
    if transcript_repeat < 1:
        raise ValueError(f"transcript_repeat must be >= 1, got {transcript_repeat}")
    out = Path(out_dir)
    paths = {"lexicon": str(out / "lexicon.txt"), "lm": str(out / f"{order}-gram.arpa")}
    done = out / f".done.{order}-gram"
    settings = json.dumps({"manifests": list(manifests), "spell": spell, "spell_top": spell_top,
                           "transcript_repeat": transcript_repeat})
    if (done.exists() and done.read_text() == settings
            and all(Path(p).is_file() for p in paths.values())):
        log.info("LM stage already done with these settings (%s); delete it to rebuild", done)
        return paths
    sentences = [normalize_text(u.text).split() for m in manifests for u in read_manifest(m)]
    sentences = [s for s in sentences if s]
    words = sorted({w for s in sentences for w in s})
    corpus = sentences * transcript_repeat
    if spell is not None:
        spelled = spelled_words(spell, spell_top)
        log.info("%d words of %s spelled out letter by letter", len(spelled), spell)
        corpus += spelled
    model = kneser_ney(corpus, order)
    write_arpa(model, paths["lm"])
    Path(paths["lexicon"]).write_text("".join(f"{w}\t{' '.join(w)}\n" for w in words),
                                      encoding="utf-8")
    done.write_text(settings)
    log.info(
        "%d sentences, %d words -> %s, %s (%s n-grams)",
        len(sentences),
        len(words),
        paths["lexicon"],
        paths["lm"],
        "/".join(str(len(t)) for t in model),
    )
    return paths
