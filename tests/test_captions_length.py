import pytest

from fgb2i_hf.captions.length import clip_token_count, truncate_to_clip_tokens

SENTENCE = "A man sits on a wooden bench next to a small brown dog."  # 14 BPE tokens + start/end = 16


def test_token_count_includes_start_and_end_tokens():
    assert clip_token_count("") == 2
    assert clip_token_count("a dog") == 4
    assert clip_token_count(SENTENCE) == 16


def test_text_that_fits_is_unchanged():
    text = " ".join([SENTENCE] * 4)  # 4 * 14 + 2 = 58 tokens
    assert truncate_to_clip_tokens(text) == (text, False)


def test_cut_at_the_last_sentence_end_that_fits():
    text = " ".join([SENTENCE] * 6)  # 6 * 14 + 2 = 86 > 77; five sentences are 72
    cut, truncated = truncate_to_clip_tokens(text)
    assert truncated
    assert cut == " ".join([SENTENCE] * 5)
    assert clip_token_count(cut) == 72


def test_limit_is_inclusive_at_exactly_the_maximum():
    words = ["dog"] * 75  # 75 + 2 = 77
    assert truncate_to_clip_tokens(" ".join(words)) == (" ".join(words), False)
    cut, truncated = truncate_to_clip_tokens(" ".join(words + ["dog"]))
    assert truncated and cut == " ".join(words)


def test_sentence_ends_with_question_and_exclamation_marks_and_quotes():
    s1 = "Is it a dog or a cat? " + "It is a cat! "
    long_tail = "The cat " + "really " * 80 + "sleeps."
    cut, truncated = truncate_to_clip_tokens(s1 + long_tail)
    assert truncated and cut == "Is it a dog or a cat? It is a cat!"
    quoted = 'He says "stop." ' + "word " * 90
    assert truncate_to_clip_tokens(quoted)[0] == 'He says "stop."'


def test_falls_back_to_a_word_boundary_when_no_sentence_fits():
    text = "a giraffe " + "and a zebra " * 40 + "."
    cut, truncated = truncate_to_clip_tokens(text, max_tokens=20)
    assert truncated
    assert text.startswith(cut) and not cut.endswith(" ")
    assert clip_token_count(cut) <= 20
    next_word = text[len(cut):].split()[0]
    assert clip_token_count(cut + " " + next_word) > 20  # the longest word prefix that fits


def test_a_single_overlong_word_is_cut_by_characters():
    cut, truncated = truncate_to_clip_tokens("x" * 2000, max_tokens=10)
    assert truncated and 0 < len(cut) < 2000 and set(cut) == {"x"} and clip_token_count(cut) <= 10


@pytest.mark.parametrize("bad", [0, 2, -5])
def test_impossible_limit_is_rejected(bad):
    with pytest.raises(ValueError, match="max_tokens"):
        truncate_to_clip_tokens("a dog", max_tokens=bad)
