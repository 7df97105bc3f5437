import pytest

from asr.text import CharTokenizer, ctc_collapse, normalize_text


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
