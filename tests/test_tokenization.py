"""train_caption_tokenizer: a GPT-2-style byte-level BPE tokenizer trained offline."""

import pytest
from transformers import AutoTokenizer

from fgb2i_hf.testing import CAPTIONS, tiny_caption_tokenizer
from fgb2i_hf.tokenization import EOS_TOKEN, train_caption_tokenizer


def test_trained_tokenizer_is_gpt2_like_and_round_trips(tmp_path):
    tok = train_caption_tokenizer(CAPTIONS, vocab_size=400)
    assert len(tok) == 400
    assert tok.eos_token == tok.bos_token == EOS_TOKEN and tok.eos_token_id == 0
    assert tok.pad_token is None  # like GPT-2: pad with eos, mask by the attention mask
    ids = tok("a cat sleeping on a laptop keyboard!")["input_ids"]
    assert EOS_TOKEN not in tok.convert_ids_to_tokens(ids)  # no special tokens added, as GPT-2
    assert len(ids) < len("a cat sleeping on a laptop keyboard!") // 2  # merges learned from the captions
    for text in ["a dog!", "  two spaces", "naïve café 東京 🙂", "unseen words: zygote"]:
        assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: anything round-trips
    assert tok.convert_ids_to_tokens(tok(" dog")["input_ids"])[0].startswith("Ġ")  # GPT-2's space marker
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded("a cat on a mat.")["input_ids"] == tok("a cat on a mat.")["input_ids"]
    assert loaded.eos_token_id == 0


def test_vocab_size_is_checked():
    with pytest.raises(ValueError, match="at least 257"):
        train_caption_tokenizer(CAPTIONS, vocab_size=100)


def test_tiny_tokenizer_is_reproducible():
    assert tiny_caption_tokenizer()("a red bus.")["input_ids"] == tiny_caption_tokenizer()("a red bus.")["input_ids"]
