from collections import Counter

import pytest

from asr.data.manifest import read_manifest, write_manifest
from asr.model_files import validate_description
from asr.text import (
    CharTokenizer,
    WordTokenizer,
    ctc_collapse,
    ctc_min_frames,
    normalize_text,
    tokenizer_from_state_dict,
    vocabulary,
)


def test_roundtrip_and_blank():
    tok = CharTokenizer()
    text = normalize_text("  RUBOUT  G m E f THREE\tNINE ")
    assert text == "rubout g m e f three nine"
    ids = tok.encode(text)
    assert 0 not in ids and max(ids) < tok.num_classes
    assert tok.decode(ids) == text
    assert tok.num_classes == len(tok.vocab) + 1


def test_unknown_character_is_named():
    with pytest.raises(ValueError, match="'#'"):
        CharTokenizer().encode("ab#c")
    assert CharTokenizer().unknown_chars("a1b") == {"1"}


def test_repeated_vocab_rejected():
    with pytest.raises(ValueError, match="repeated"):
        CharTokenizer("abca")


def test_state_dict_roundtrip():
    tok = CharTokenizer("xyz ")
    assert CharTokenizer.from_state_dict(tok.state_dict()).vocab == "xyz "


@pytest.mark.parametrize(
    "ids,expected",
    [([0, 1, 1, 0, 1, 2, 2, 0], [1, 1, 2]), ([0, 0, 0], []), ([3], [3]), ([1, 0, 1], [1, 1]),
     ([], [])],
)
def test_ctc_collapse(ids, expected):
    assert ctc_collapse(ids) == expected


@pytest.mark.parametrize("ids,need", [([], 0), ([1], 1), ([1, 1], 3), ([1, 2, 2, 2], 6),
                                      ([1, 2, 1], 3)])
def test_ctc_min_frames(ids, need):
    assert ctc_min_frames(ids) == need


def test_word_tokenizer_vocabulary_and_roundtrip(tiny_dir, tmp_path):
    train = read_manifest(tiny_dir / "train.jsonl")
    tok = WordTokenizer(train_manifest=str(tiny_dir / "train.jsonl"))
    counts = Counter(w for u in train for w in normalize_text(u.text).split())
    assert set(tok.words) == set(counts) == {"yes", "no", "stop", "go", "help", "start"}
    # most frequent first
    assert [counts[w] for w in tok.words] == sorted(counts.values(), reverse=True)
    write_manifest(tmp_path / "reversed.jsonl", train[::-1])
    # the order does not depend on the file's
    assert vocabulary(tmp_path / "reversed.jsonl") == tok.words
    assert tok.num_classes == 1 + len(counts) + len(tok.chars)
    for u in train + read_manifest(tiny_dir / "test.jsonl"):
        text = normalize_text(u.text)
        ids = tok.encode(text)
        assert 0 not in ids and max(ids) < tok.num_classes
        assert tok.decode(ids) == text
    # a known word is one class; an unknown one is spelled and closed by the space
    assert len(tok.encode("stop")) == 1
    assert (tok.decode(tok.encode("november")) == "november"
            and len(tok.encode("november")) == len("november") + 1)
    assert tok.decode(tok.encode("zyx wvu go qq")) == "zyx wvu go qq"


def test_word_tokenizer_min_count_state_and_errors(tiny_dir):
    # the fixture's training words: go, help, stop 5 times each, start 4, no and yes 3
    manifest = str(tiny_dir / "train.jsonl")
    assert (set(WordTokenizer(train_manifest=manifest, min_count=4).words)
            == {"go", "help", "stop", "start"})
    tok = WordTokenizer(train_manifest=manifest, min_count=4, max_words=3)
    assert set(tok.words) == {"go", "help", "stop"}
    assert (tok.decode(tok.encode("start yes go")) == "start yes go"
            and len(tok.encode("start")) == 6)
    state = tok.state_dict()
    validate_description({"tokenizer": state, "features": {}, "model": {}})  # plain strings only
    again = tokenizer_from_state_dict(state)
    assert again.words == tok.words and again.chars == tok.chars
    with pytest.raises(ValueError, match="'#'"):
        tok.encode("go a#b")
    assert tok.unknown_chars("go 1x") == {"1"}
    with pytest.raises(FileNotFoundError, match="tokenizer.train_manifest"):
        WordTokenizer(train_manifest="/nonexistent.jsonl")
    with pytest.raises(ValueError, match="distinct words"):
        WordTokenizer(words=["a", "a"])
