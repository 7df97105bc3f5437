"""Decoders, the n-gram LM writer, evaluate's log-prob cache and sweeps, on AN4 transcripts and
audio: the committed fixture's, and the full corpus's for the LM tests that need its language
(names, numbers, commands in context)."""

import json
import math
import os
import subprocess
import sys
from collections import defaultdict

import pytest
import torch

from asr.data.manifest import read_manifest, write_manifest
from asr.decoding import BeamSearchDecoder, GreedyDecoder
from asr.lm.ngram import BOS, build_lm, spelled_words
from asr.report.scoring import evaluate_checkpoint
from asr.text import CharTokenizer, WordTokenizer, normalize_text
from tests.conftest import ROOT


def emissions_for(
    texts: list[str], tokenizer: CharTokenizer | WordTokenizer, peak: float = 0.9
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, C) log-probs whose best path spells each text: each token twice, then a blank."""
    paths = []
    for text in texts:
        path = []
        for i in tokenizer.encode(text):
            path += [i, i, 0]
        paths.append(path)
    lengths = torch.tensor([len(p) for p in paths])
    c = tokenizer.num_classes
    probs = torch.full((len(texts), int(lengths.max()), c), (1 - peak) / (c - 1))
    for b, path in enumerate(paths):
        for t, i in enumerate(path):
            probs[b, t, i] = peak
    return probs.log(), lengths


@pytest.fixture(scope="module")
def tiny_lm(tiny_dir, tmp_path_factory):
    return build_lm([str(tiny_dir / "train.jsonl")], str(tmp_path_factory.mktemp("lm")), order=3)


@pytest.fixture(scope="module")
def an4_lm(an4_dir, tmp_path_factory):
    return build_lm([str(an4_dir / "train.jsonl")], str(tmp_path_factory.mktemp("lm")), order=3)


# per corpus: histories to check the LM's normalisation on, and a misspelt sentence with the one
# the lexicon + LM should correct it to
CORPORA = {
    "tiny": ([(), (BOS,), ("stop",), (BOS, "go"), ("zzz", "yes")], "stap", "stop"),
    "an4": ([(), (BOS,), ("rubout",), (BOS, "rubout"), ("three", "nine"), ("zzz", "enter")],
            "rubout thrie nine", "rubout three nine"),
}


def read_arpa(path):
    """{order: {ngram: (log10 p, log10 bow)}} of an ARPA file."""
    tables, order = defaultdict(dict), 0
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if line.endswith("-grams:"):
            order = int(line[1])
        elif order and line and not line.startswith("\\"):
            fields = line.split("\t")
            tables[order][tuple(fields[1].split())] = (
                float(fields[0]),
                float(fields[2]) if len(fields) > 2 else 0.0,
            )
    return tables


def arpa_prob(tables, history, word):
    """p(word | history) by the ARPA backoff rule."""
    gram = (*history, word)
    if gram in tables[len(gram)]:
        return 10 ** tables[len(gram)][gram][0]
    bow = tables[len(history)].get(history, (0.0, 0.0))[1] if history else 0.0
    return 10**bow * arpa_prob(tables, history[1:], word)


@pytest.mark.parametrize("corpus", CORPORA)
def test_arpa_lm_is_normalised_and_covers_training_words(corpus, request):
    data, lm = request.getfixturevalue(f"{corpus}_dir"), request.getfixturevalue(f"{corpus}_lm")
    tables = read_arpa(lm["lm"])
    words = [w for (w,) in tables[1] if w != BOS]
    train_words = {w for u in read_manifest(data / "train.jsonl")
                   for w in normalize_text(u.text).split()}
    assert train_words <= set(words) and "<unk>" in words and "</s>" in words
    lexicon = [line.split()[0] for line in open(lm["lexicon"])]
    assert sorted(lexicon) == sorted(train_words)
    for history in CORPORA[corpus][0]:
        total = sum(arpa_prob(tables, history, w) for w in words)
        assert math.isclose(total, 1.0, abs_tol=1e-4), (history, total)


def test_greedy_and_beam_decode_a_clean_path(tiny_dir, tiny_lm):
    tok = CharTokenizer()
    texts = ([normalize_text(u.text) for u in read_manifest(tiny_dir / "test.jsonl")]
             + ["help stop", "no no yes"])
    log_probs, lengths = emissions_for(texts, tok)
    assert GreedyDecoder(tok).decode(log_probs, lengths) == texts
    assert BeamSearchDecoder(tok, beam_size=10).decode(log_probs, lengths) == texts
    in_lexicon = [t for t in texts
                  if set(t.split()) <= {line.split()[0] for line in open(tiny_lm["lexicon"])}]
    assert in_lexicon == texts
    lp, n = emissions_for(in_lexicon, tok)
    assert BeamSearchDecoder(tok, beam_size=10, lexicon=tiny_lm["lexicon"],
                             lm=tiny_lm["lm"]).decode(lp, n) == in_lexicon


def assert_word_model_decodes(tok: WordTokenizer, texts: list[str], lm: dict[str, str]) -> None:
    """Clean emissions of ``texts`` come back from greedy, lexicon-free beam and beam + ``lm``."""
    log_probs, lengths = emissions_for(texts, tok)
    assert GreedyDecoder(tok).decode(log_probs, lengths) == texts
    assert BeamSearchDecoder(tok, beam_size=10).decode(log_probs, lengths) == texts
    # the lexicon is not needed (the word classes are one) and not used;
    # the LM scores each class as its word
    beam_lm = BeamSearchDecoder(tok, beam_size=10, lexicon=lm["lexicon"], lm=lm["lm"],
                                lm_weight=1.0)
    assert beam_lm.decode(log_probs, lengths) == texts
    assert BeamSearchDecoder(tok, beam_size=10, lm=lm["lm"]).decode(log_probs, lengths) == texts


def test_word_model_greedy_and_beam_on_the_fixture(tiny_dir, tiny_lm):
    tok = WordTokenizer(train_manifest=str(tiny_dir / "train.jsonl"))
    texts = ([normalize_text(u.text) for u in read_manifest(tiny_dir / "test.jsonl")]
             + ["help stop go"])
    texts.append("november go one")  # words the vocabulary lacks: spelled with characters
    assert_word_model_decodes(tok, texts, tiny_lm)


def test_word_model_greedy_and_beam(an4_dir, an4_lm):
    """The LM's context over word classes: AN4's sentences (commands, spelled names, numbers)."""
    tok = WordTokenizer(train_manifest=str(an4_dir / "train.jsonl"))
    texts = [normalize_text(u.text) for u in read_manifest(an4_dir / "test.jsonl")[:12]]
    texts.append("november thirteen one")  # words the vocabulary lacks: spelled with characters
    assert_word_model_decodes(tok, texts, an4_lm)
    beam_lm = BeamSearchDecoder(tok, beam_size=10, lexicon=an4_lm["lexicon"], lm=an4_lm["lm"],
                                lm_weight=1.0)
    # a word the acoustics slightly disfavour, but the LM much prefers in its context,
    # wins with the LM
    tables = read_arpa(an4_lm["lm"])

    def sentence_prob(words):
        history, p = (BOS,), 1.0
        for w in [*words, "</s>"]:
            p *= arpa_prob(tables, history[-2:], w)
            history += (w,)
        return p

    likely, unlikely = sorted(["three", "e"], key=lambda w: -sentence_prob(["rubout", w, "nine"]))
    assert (sentence_prob(["rubout", likely, "nine"])
            > 1.5 * sentence_prob(["rubout", unlikely, "nine"]))
    lp, n = emissions_for(["rubout three nine"], tok)
    lp[0, 3:5, :] = math.log(0.1 / (tok.num_classes - 2))
    # acoustic odds (0.47 / 0.43) ** 2 frames = 1.19, below the LM odds
    (lp[0, 3:5, tok.encode(unlikely)[0]],
     lp[0, 3:5, tok.encode(likely)[0]]) = math.log(0.47), math.log(0.43)
    assert BeamSearchDecoder(tok, beam_size=10).decode(lp, n) == [f"rubout {unlikely} nine"]
    assert beam_lm.decode(lp, n) == [f"rubout {likely} nine"]
    # word_score is a per-word score: a negative one drops words the acoustics are unsure of,
    # a big one adds some
    lp, n = emissions_for(["erase c q q f seven"], tok, peak=0.6)
    words = {ws: BeamSearchDecoder(tok, beam_size=20, lm=an4_lm["lm"], lm_weight=2.0,
                                   word_score=ws).decode(lp, n)[0]
             for ws in (-3.0, 0.0, 6.0)}
    assert len(words[-3.0].split()) < 6 == len(words[0.0].split()) < len(words[6.0].split()), words


def test_spelling_lm_from_a_word_list_corrects_a_spelled_letter(an4_dir, an4_lm, tmp_path):
    from asr.lm.wordlist import write_wordlist

    words = write_wordlist(tmp_path / "words.txt", "en", top=3000)
    lines = [line.split("\t") for line in words.read_text().splitlines()]
    assert len(lines) == 3000 and lines[0][0] == "the"
    zipf = [float(f) for _, f in lines]
    assert zipf == sorted(zipf, reverse=True)  # most frequent first
    spelled = spelled_words(words)
    assert ["m", "a", "r", "k", "e", "t"] in spelled
    # "don't", "2", "café" left out
    assert all("".join(w).isalpha() and "".join(w).isascii() for w in spelled)
    assert len(spelled) < 3000 and spelled_words(words, top=10) == spelled[:10]

    out = tmp_path / "lm"
    paths = build_lm([str(an4_dir / "train.jsonl")], str(out), order=5, spell=str(words),
                     transcript_repeat=5)
    tables = read_arpa(paths["lm"])
    assert ("m", "a", "r", "k", "e") in tables[5]  # 5-grams of letters the transcripts do not have
    assert "rubout" in {w for (w,) in tables[1]}  # and the transcripts' words
    tok = WordTokenizer(train_manifest=str(an4_dir / "train.jsonl"))
    lp, n = emissions_for(["s y s t e m"], tok)  # m/n: one of AN4's commonest confusions
    # the m's two frames: n a little likelier than m
    lp[0, 15:17, :] = math.log(0.1 / (tok.num_classes - 2))
    (lp[0, 15:17, tok.encode("n")[0]],
     lp[0, 15:17, tok.encode("m")[0]]) = math.log(0.47), math.log(0.43)
    assert BeamSearchDecoder(tok, beam_size=10).decode(lp, n) == ["s y s t e n"]
    # the transcripts' 3-gram knows AN4's names, which end in n more often than in m ...
    assert BeamSearchDecoder(tok, beam_size=10, lm=an4_lm["lm"],
                             lm_weight=0.5).decode(lp, n) == ["s y s t e n"]
    # ... the spelling LM knows English words
    assert BeamSearchDecoder(tok, beam_size=10, lm=paths["lm"],
                             lm_weight=0.5).decode(lp, n) == ["s y s t e m"]

    # the .done marker holds the settings: the same ones skip the stage, others rebuild it
    mtime = os.stat(paths["lm"]).st_mtime_ns
    build_lm([str(an4_dir / "train.jsonl")], str(out), order=5, spell=str(words),
             transcript_repeat=5)
    assert os.stat(paths["lm"]).st_mtime_ns == mtime
    build_lm([str(an4_dir / "train.jsonl")], str(out), order=5, spell=str(words), spell_top=100)
    # "market" is not in the top 100
    assert ("m", "a", "r", "k", "e") not in read_arpa(paths["lm"])[5]
    with pytest.raises(FileNotFoundError, match="spell=.*asr.lm.wordlist"):
        spelled_words(tmp_path / "missing.txt")
    (tmp_path / "digits.txt").write_text("2026\ndon't\n")
    with pytest.raises(ValueError, match="no word of only the letters a-z"):
        spelled_words(tmp_path / "digits.txt")


@pytest.mark.parametrize("corpus", CORPORA)
def test_lexicon_and_lm_correct_a_misspelling(corpus, request):
    lm = request.getfixturevalue(f"{corpus}_lm")
    _, wrong, right = CORPORA[corpus]
    tok = CharTokenizer()
    log_probs, lengths = emissions_for([wrong], tok, peak=0.6)
    assert BeamSearchDecoder(tok, beam_size=20).decode(log_probs, lengths) == [wrong]
    beam_lm = BeamSearchDecoder(tok, beam_size=20, lexicon=lm["lexicon"], lm=lm["lm"],
                                lm_weight=1.0)
    assert beam_lm.decode(log_probs, lengths) == [right]


def test_decoder_errors_name_the_setting(tmp_path, tiny_lm):
    tok = CharTokenizer()
    with pytest.raises(ValueError, match="decoder.lexicon"):
        BeamSearchDecoder(tok, lm=tiny_lm["lm"])
    with pytest.raises(FileNotFoundError, match="decoder.lm="):
        BeamSearchDecoder(tok, lexicon=tiny_lm["lexicon"], lm=str(tmp_path / "missing.arpa"))
    with pytest.raises(FileNotFoundError, match="decoder.lexicon="):
        BeamSearchDecoder(tok, lexicon=str(tmp_path / "missing.txt"))
    (tmp_path / "upper.txt").write_text("ÉCOLE\n")
    with pytest.raises(ValueError, match="can be spelled"):
        BeamSearchDecoder(tok, lexicon=str(tmp_path / "upper.txt"))


def test_evaluate_caches_log_probs_per_split(tiny_checkpoint, tiny_dir, tmp_path):
    manifests = {"test": str(tiny_dir / "test.jsonl")}
    cache = tmp_path / "cache"
    first = evaluate_checkpoint(str(tiny_checkpoint), manifests, str(tmp_path / "a"), "cpu",
                                progress=False, cache_dir=str(cache))
    assert (cache / "test.pt").is_file() and not first["test"]["cached_log_probs"]
    again = evaluate_checkpoint(
        str(tiny_checkpoint),
        manifests,
        str(tmp_path / "b"),
        "cpu",
        progress=False,
        cache_dir=str(cache),
        decoder=lambda tok: BeamSearchDecoder(tok, beam_size=1),
    )
    assert (
        again["test"]["cached_log_probs"]
        and again["test"]["forward_seconds"] == first["test"]["forward_seconds"]
    )
    # beam size 1 without LM keeps the single best prefix: here the same text as greedy
    assert (tmp_path / "a/test/hyps.txt").read_text() == (tmp_path / "b/test/hyps.txt").read_text()
    os.utime(tiny_checkpoint)  # a rewritten checkpoint invalidates the cache
    third = evaluate_checkpoint(str(tiny_checkpoint), manifests, str(tmp_path / "c"), "cpu",
                                progress=False, cache_dir=str(cache))
    assert not third["test"]["cached_log_probs"]


@pytest.mark.slow  # keeps the default suite under 5 minutes on 2 cores; CI runs it (make test-slow)
def test_cli_sweep_writes_one_report_per_point_and_a_summary(tiny_checkpoint, tiny_dir, tiny_lm,
                                                              tmp_path):
    subset = tmp_path / "test10.jsonl"
    write_manifest(subset, read_manifest(tiny_dir / "train.jsonl")[:10])
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "asr.evaluate",
            "-m",
            f"checkpoint={tiny_checkpoint}",
            f"manifests={{test: {subset}}}",
            "device=cpu",
            f"cache_dir={tmp_path / 'cache'}",
            f"hydra.sweep.dir={sweep}",
            "decoder=beam_lm",
            f"decoder.lexicon={tiny_lm['lexicon']}",
            f"decoder.lm={tiny_lm['lm']}",
            "decoder.beam_size=5",
            "decoder.lm_weight=0.5,1",
            "decoder.word_score=-1,0,1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/test/report.json"))]
    assert len(reports) == 6
    assert sorted((r["decoder"]["lm_weight"], r["decoder"]["word_score"]) for r in reports) == [
        (w, s) for w in (0.5, 1.0) for s in (-1.0, 0.0, 1.0)
    ]
    assert sum(not r["cached_log_probs"] for r in reports) == 1  # one forward pass for the sweep
    summary = (sweep / "summary.md").read_text().splitlines()
    assert summary[0].startswith("lm_weight | word_score | test WER %") and len(summary) == 2 + 6
    assert "summary.md" in proc.stdout


def test_librispeech_style_files_upper_case_lm_and_phonetic_lexicon(tiny_dir, tmp_path):
    """LibriSpeech's resource-11 files: upper-case ARPA words, a phonetic lexicon (only the word
    is read)."""
    from asr.lm.ngram import kneser_ney, write_arpa

    sentences = [normalize_text(u.text).upper().split()
                 for u in read_manifest(tiny_dir / "train.jsonl")]
    write_arpa(kneser_ney(sentences, order=2), tmp_path / "lm.arpa")
    words = sorted({w for s in sentences for w in s})
    (tmp_path / "lexicon.txt").write_text("".join(f"{w} HH AH0 L OW1\n{w} HH EH0 L OW1\n"
                                                  for w in words))
    tok = CharTokenizer()
    log_probs, lengths = emissions_for(["stap"], tok, peak=0.6)
    lexicon, lm = str(tmp_path / "lexicon.txt"), str(tmp_path / "lm.arpa")
    dec = BeamSearchDecoder(tok, beam_size=20, lexicon=lexicon, lm=lm)
    assert dec.decode(log_probs, lengths) == ["stop"]


def test_lexicon_free_beam_search_with_sentencepiece_pieces(tiny_dir, tiny_lm, tmp_path):
    from asr.text import SentencePieceTokenizer

    tok = SentencePieceTokenizer(tmp_path / "bpe.model", tiny_dir / "train.jsonl", vocab_size=30)
    texts = ([normalize_text(u.text) for u in read_manifest(tiny_dir / "test.jsonl")]
             + ["yes help go"])
    log_probs, lengths = emissions_for(texts, tok)
    assert GreedyDecoder(tok).decode(log_probs, lengths) == texts
    assert BeamSearchDecoder(tok, beam_size=10).decode(log_probs, lengths) == texts
    with pytest.raises(ValueError, match="decoder.lexicon needs a character model"):
        BeamSearchDecoder(tok, lexicon=tiny_lm["lexicon"], lm=tiny_lm["lm"])


def test_run_dir_of_a_checkpoint(tmp_path):
    from asr.report.run_info import run_dir_of

    run = tmp_path / "exp" / "an4" / "run1"
    assert run_dir_of(run / "checkpoints" / "best.ckpt") == run.resolve()
    assert run_dir_of(run / "checkpoints" / "top" / "epoch=41.ckpt") == run.resolve()
    # copied out of its run: decode/ goes beside it, not to the filesystem's root
    assert run_dir_of(tmp_path / "early.ckpt") == tmp_path.resolve()
