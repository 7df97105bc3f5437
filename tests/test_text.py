import pytest

from asr.checkpointing import validate_description
from asr.data import read_manifest, write_manifest
from asr.text import CharTokenizer, WordTokenizer, ctc_collapse, normalize_text, tokenizer_from_state_dict, vocabulary


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
    [([0, 1, 1, 0, 1, 2, 2, 0], [1, 1, 2]), ([0, 0, 0], []), ([3], [3]), ([1, 0, 1], [1, 1]), ([], [])],
)
def test_ctc_collapse(ids, expected):
    assert ctc_collapse(ids) == expected


def test_word_tokenizer_vocabulary_and_roundtrip(an4_dir, tmp_path):
    train = read_manifest(an4_dir / "train.jsonl")
    tok = WordTokenizer(train_manifest=str(an4_dir / "train.jsonl"))
    train_words = {w for u in train for w in normalize_text(u.text).split()}
    assert set(tok.words) == train_words and tok.words[:2] == ["one", "two"]  # most frequent first
    write_manifest(tmp_path / "reversed.jsonl", train[::-1])
    assert vocabulary(tmp_path / "reversed.jsonl") == tok.words  # the order does not depend on the file's
    assert tok.num_classes == 1 + len(train_words) + len(tok.chars)
    for u in train + read_manifest(an4_dir / "test.jsonl"):  # the test set has words training never saw
        text = normalize_text(u.text)
        ids = tok.encode(text)
        assert 0 not in ids and max(ids) < tok.num_classes
        assert tok.decode(ids) == text
    # a known word is one class; an unknown one is spelled and closed by the space
    assert len(tok.encode("three")) == 1
    assert tok.decode(tok.encode("november")) == "november" and len(tok.encode("november")) == len("november") + 1
    assert tok.decode(tok.encode("zyx wvu one qq")) == "zyx wvu one qq"


def test_word_tokenizer_min_count_state_and_errors(an4_dir):
    tok = WordTokenizer(train_manifest=str(an4_dir / "train.jsonl"), min_count=20, max_words=30)
    assert len(tok.words) == 30 and "apostrophe" not in tok.words
    assert tok.decode(tok.encode("apostrophe one")) == "apostrophe one"
    state = tok.state_dict()
    validate_description({"tokenizer": state, "features": {}, "model": {}})  # plain strings only
    again = tokenizer_from_state_dict(state)
    assert again.words == tok.words and again.chars == tok.chars
    with pytest.raises(ValueError, match="'#'"):
        tok.encode("one a#b")
    assert tok.unknown_chars("one 1x") == {"1"}
    with pytest.raises(FileNotFoundError, match="tokenizer.train_manifest"):
        WordTokenizer(train_manifest="/nonexistent.jsonl")
    with pytest.raises(ValueError, match="distinct words"):
        WordTokenizer(words=["a", "a"])
