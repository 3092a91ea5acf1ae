"""Tiny models built from configs, for tests, benchmarks and examples (no download, no Hub).

Each builder has its own clearly named functions; random weights, seeded.
"""

from __future__ import annotations

import os

# --- tiny LLaVA (captions, issue 6) ---------------------------------------------------------------------------

# LLaVA-1.5's chat template (llava-hf/llava-1.5-7b-hf chat_template.json), reduced to what captioning needs:
# "USER: <image>\n{text} ASSISTANT:".
TINY_LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    " {% else %}ASSISTANT: {% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}{% endfor %}</s>{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

_TINY_LLAVA_WORDS = (
    ". , a an the of on in with and is are near next to at two three some red blue green white black brown "
    "yellow small large tall wooden old young sits stands holds lies walks table chair dog cat person man woman "
    "car bus truck bicycle boat bird horse sheep cow elephant bear zebra giraffe umbrella bench cup bowl pizza "
    "cake bed couch tv laptop clock vase book sink oven kite frisbee skateboard surfboard train airplane grass "
    "street room wall sky water field building tree window road beach snow plate food"
).split()


def tiny_llava_tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` with LLaVA's special tokens (``<image>``, ``<pad>``), built offline.

    Words outside the small vocabulary map to ``<unk>`` (the prompt's "USER:" included); punctuation is split off
    ('.' and ',' are words) so generated text has sentence ends.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    vocab = {t: i for i, t in enumerate(specials + list(dict.fromkeys(_TINY_LLAVA_WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins with spaces, no space before . and ,
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", extra_special_tokens={"image_token": "<image>"},
                                   padding_side="left")


def tiny_llava(seed: int = 0, image_size: int = 28, patch_size: int = 14, hidden_size: int = 32, layers: int = 2,
               chat_template: bool = True):
    """A random ``LlavaForConditionalGeneration`` and matching ``LlavaProcessor`` (CLIP vision tower + Llama).

    The processor expands ``<image>`` into ``(image_size // patch_size) ** 2`` tokens (CLS added by the tower,
    dropped by ``vision_feature_select_strategy="default"``, as in LLaVA-1.5: 24 x 24 = 576 there, 2 x 2 = 4 with
    the defaults here), which is what the model's vision tower produces. Returns ``(model, processor)``.
    """
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tokenizer = tiny_llava_tokenizer()
    vocab_size = len(tokenizer)
    vision = CLIPVisionConfig(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=layers,
                              num_attention_heads=2, image_size=image_size, patch_size=patch_size,
                              projection_dim=hidden_size)
    text = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                       num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                       max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    n_image_tokens = (image_size // patch_size) ** 2
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.image_token_id,
                         image_seq_length=n_image_tokens, vision_feature_select_strategy="default",
                         vision_feature_layer=-2, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=TINY_LLAVA_CHAT_TEMPLATE if chat_template else None)
    return model, processor


def save_tiny_llava(path: str, **kwargs) -> str:
    """Build :func:`tiny_llava` and save model + processor to ``path`` (loadable with ``AutoModelForImageTextToText``)."""
    model, processor = tiny_llava(**kwargs)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
