"""Train a small GPT-2-style tokenizer offline: byte-level BPE with ``<|endoftext|>`` as bos/eos/unk.

Real runs use GPT-2's own tokenizer (``AutoTokenizer.from_pretrained("gpt2")``). Tests and the shipped SimNSD world
have no Hub, so they train one like it on their captions with ``tokenizers``: same pre-tokenizer (byte-level,
no prefix space), same decoder, same single special token, no pad token (pad with eos and mask by the attention
mask, as with GPT-2).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"


def train_caption_tokenizer(
    texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 1, model_max_length: int = 1024
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``; ``save_pretrained``/``AutoTokenizer.from_pretrained`` work.

    ``vocab_size`` counts the 256 byte symbols and ``<|endoftext|>`` (id 0); the result may be smaller when the
    texts hold fewer merges. Any UTF-8 text encodes (bytes are the fallback) and decodes back unchanged.
    """
    if vocab_size < 257:
        raise ValueError(f"vocab_size must be at least 257 (256 bytes + <|endoftext|>), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        model_max_length=model_max_length,
    )


__all__ = ["EOS_TOKEN", "train_caption_tokenizer"]
