"""Tiny random models built from configs, for tests and for the ``"tiny-random"`` stand-ins of the library.

One module for every tiny builder the package uses, so that library stand-ins (``fit_decoders``' and the pipelines'
``model_name_or_path="tiny-random"``, the captioner's, the random feature networks) and the tests build the very
same models:

    model, tokenizer = tiny_brain_prefix_gpt2({"subj01": 40, "subj02": 56})      # random weights, well under 1 s
    model, processor = tiny_llava()                                              # LlavaForConditionalGeneration
    pipe = FgB2ILDMPipeline(**tiny_sd_components(), brain_model=model, caption_tokenizer=tokenizer)
    extractor = tiny_target_extractor("ldm")                                     # SD VAE + CLIP text targets

Everything is offline and seeded: the same call gives the same weights and the same tokenizer. The CLIP tokenizer
is OpenAI CLIP's, built from the BPE merges that ship with ``open_clip`` (``fgb2i_hf.clip.openai_clip_tokenizer``).
Random models exercise mechanics only: their outputs mean nothing.
"""

from __future__ import annotations

import functools
import os

import torch
from tokenizers import Tokenizer
from tokenizers import decoders as tokenizer_decoders
from tokenizers import models as tokenizer_models
from tokenizers import pre_tokenizers
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    GPT2Config,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from .clip import CLIPScorer, openai_clip_tokenizer
from .core import TINY_RANDOM
from .decoders.targets import BrainDiffuserTargetExtractor, LDMTargetExtractor
from .decoders.vdvae_targets import VDVAETargetExtractor
from .models import BrainPrefixGPT2, BrainPrefixGPT2Config
from .models.mindeye import MindEyeConfig, MindEyeModel
from .models.vdvae import VDVAEModel
from .tokenization import EOS_TOKEN, train_caption_tokenizer

CAPTIONS = (
    "a man riding a wave on top of a surfboard.",
    "a plate of food with broccoli and a fork.",
    "two giraffes standing next to a tall tree.",
    "a red double decker bus driving down a street.",
    "a cat sleeping on a laptop keyboard!",
    "a group of people flying kites in a park.",
    "a small brown dog sitting on a wooden bench.",
    "a kitchen with a white stove and a sink.",
    "an elephant walking through tall green grass.",
    "a pizza with cheese and tomatoes on a table.",
    "a woman holding an umbrella in the rain.",
    "a train stopped at a station next to a platform!",
    "a boy swinging a baseball bat at a ball.",
    "a bowl of oranges and bananas on a counter.",
    "a herd of zebras grazing on a dry field.",
    "a teddy bear sitting on a bed with pillows.",
    "a clock tower in front of a cloudy sky.",
    "a person skiing down a snowy mountain slope.",
    "a bathroom with a toilet and a mirror.",
    "three horses standing in a fenced pasture!",
)


@functools.lru_cache(maxsize=8)
def _cached_tokenizer_json(vocab_size: int) -> str:
    return train_caption_tokenizer(CAPTIONS, vocab_size=vocab_size).backend_tokenizer.to_str()


def tiny_caption_tokenizer(vocab_size: int = 384):
    """A byte-level BPE tokenizer trained on ``CAPTIONS`` (eos = bos = ``<|endoftext|>`` = id 0, no pad token)."""
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_cached_tokenizer_json(vocab_size)),
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        model_max_length=1024,
    )


def tiny_gpt2_config(vocab_size: int, eos_token_id: int = 0, **overrides) -> GPT2Config:
    """A 2-layer, 32-wide GPT-2 without dropout; bos = eos = ``eos_token_id``.

    Its init std is 0.3 rather than GPT-2's 0.02: at 0.02 a random 32-wide GPT-2 barely attends to anything, so its
    next token ignores the prefix and no brain could steer it; at 0.3 captions depend on the brain and training on
    the prefix side lowers the loss, as tests of training need.
    """
    kwargs = dict(
        vocab_size=vocab_size, n_positions=128, n_embd=32, n_layer=2, n_head=2, initializer_range=0.3,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=eos_token_id, eos_token_id=eos_token_id,
    )
    kwargs.update(overrides)
    return GPT2Config(**kwargs)


def tiny_brain_prefix_gpt2(voxel_counts=None, tokenizer=None, seed: int = 0, gpt2_overrides: dict | None = None,
                           **overrides):
    """(model, tokenizer): a tiny BrainPrefixGPT2 (prefix 4, mapper 2 layers x 4 heads, GPT-2 2 x 32) in eval mode.

    ``voxel_counts`` defaults to ``{"subj01": 40, "subj02": 56}``; ``overrides`` are config fields
    (``prefix_length``, ``subject_hidden_size``, ``freeze_language_model``...); ``gpt2_overrides`` GPT2Config fields.
    """
    tokenizer = tokenizer if tokenizer is not None else tiny_caption_tokenizer()
    config = dict(
        voxel_counts=dict(voxel_counts or {"subj01": 40, "subj02": 56}),
        prefix_length=4, mapper_layers=2, mapper_heads=4, max_caption_tokens=24,
        gpt2_config=tiny_gpt2_config(len(tokenizer), tokenizer.eos_token_id, **(gpt2_overrides or {})),
    )
    config.update(overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BrainPrefixGPT2(BrainPrefixGPT2Config(**config))
    return model.eval(), tokenizer


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
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    vocab = {t: i for i, t in enumerate(specials + list(dict.fromkeys(_TINY_LLAVA_WORDS)))}
    tok = Tokenizer(tokenizer_models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = tokenizer_decoders.WordPiece(prefix="##", cleanup=True)  # joins with spaces, no space before . and ,
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
    with torch.random.fork_rng(devices=[]):
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


# --- diffusion backbones (reconstruction, issues 7-8) -------------------------------------------------------

TINY_CROSS_ATTENTION_DIM = 32


def tiny_clip_tokenizer():
    """The OpenAI CLIP tokenizer (49,408 tokens, 77 positions), built offline from open_clip's BPE."""
    return openai_clip_tokenizer(77)


def _tiny_clip_text_config(dim: int):
    return CLIPTextConfig(hidden_size=dim, intermediate_size=2 * dim, num_attention_heads=4, num_hidden_layers=2,
                          vocab_size=49408, max_position_embeddings=77, projection_dim=dim,
                          bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)


def _tiny_vae():
    # imported here: diffusers is a heavy import, needed only on this path
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=32, sample_size=32)


def tiny_ddim_scheduler():
    """DDIM with SD v1's training schedule (scaled-linear betas 0.00085..0.012, steps_offset 1)."""
    # imported here: diffusers is a heavy import, needed only on this path
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def _tiny_unet_kwargs(dim: int) -> dict:
    return dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
                cross_attention_dim=dim, attention_head_dim=8, norm_num_groups=32)


def tiny_sd_components(seed: int = 0, dim: int = TINY_CROSS_ATTENTION_DIM) -> dict:
    """``vae, text_encoder, tokenizer, unet, scheduler`` of a random SD v1-shaped model (32 px images, 16x16
    latents, CLIP text width ``dim``), for ``StableDiffusion*Pipeline`` or ``FgB2ILDMPipeline``."""
    # imported here: diffusers is a heavy import, needed only on this path
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), **_tiny_unet_kwargs(dim))
    vae = _tiny_vae()
    text_encoder = CLIPTextModel(_tiny_clip_text_config(dim))
    return dict(vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tiny_clip_tokenizer(), unet=unet.eval(),
                scheduler=tiny_ddim_scheduler())


def tiny_vd_components(seed: int = 0, dim: int = TINY_CROSS_ATTENTION_DIM, vision_patch_size: int = 2) -> dict:
    """The components of a random Versatile Diffusion-shaped model (``VersatileDiffusionDualGuidedPipeline``
    or ``FgB2IVersatileDiffusionPipeline``): ``tokenizer, image_feature_extractor, text_encoder,
    image_encoder, image_unet, text_unet, vae, scheduler``. The CLIP vision tower sees 32 px images in
    2 px patches, so it returns 257 tokens like VD's ViT-L/14 at 224 px (``vision_patch_size=4``: 65 tokens);
    text contexts have 77 tokens."""
    # imported here: diffusers is a heavy import, needed only on this path
    from diffusers import UNet2DConditionModel
    from diffusers.pipelines.deprecated.versatile_diffusion.modeling_text_unet import UNetFlatConditionModel

    torch.manual_seed(seed)
    image_unet = UNet2DConditionModel(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), **_tiny_unet_kwargs(dim))
    text_unet = UNetFlatConditionModel(down_block_types=("CrossAttnDownBlockFlat", "DownBlockFlat"),
                                       up_block_types=("UpBlockFlat", "CrossAttnUpBlockFlat"),
                                       mid_block_type="UNetMidBlockFlatCrossAttn", **_tiny_unet_kwargs(dim))
    vae = _tiny_vae()
    text_encoder = CLIPTextModelWithProjection(_tiny_clip_text_config(dim))
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=dim, intermediate_size=2 * dim, num_attention_heads=4, num_hidden_layers=2, image_size=32,
        patch_size=vision_patch_size, projection_dim=dim))
    feature_extractor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return dict(tokenizer=tiny_clip_tokenizer(), image_feature_extractor=feature_extractor,
                text_encoder=text_encoder.eval(), image_encoder=image_encoder.eval(), image_unet=image_unet.eval(),
                text_unet=text_unet.eval(), vae=vae.eval(), scheduler=tiny_ddim_scheduler())


# An open_clip config small enough for CPU tests (as the metrics tests use): 32 px images, 16-d embeddings.
TINY_CLIP_CONFIG = dict(embed_dim=16, vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
                        text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))


def tiny_clip_scorer():
    """A random tiny ``CLIPScorer`` (``fgb2i_hf.clip``), e.g. for the CLIP column with random feature models."""
    return CLIPScorer.from_config(TINY_CLIP_CONFIG)



# --- target extractors (decoders) ------------------------------------------------------------------------

def _text_config(width: int):
    return CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, projection_dim=width)


def tiny_ldm_extractor(model_seed: int = 0, width: int = 32, image_size: int = 32, **kwargs):
    """SD-shaped components: a VAE with 4 latent channels and one downsampling (z: 4 x s/2 x s/2), and a
    ``width``-wide CLIP text encoder (c: 77 x width)."""
    # imported here: diffusers is a heavy import, needed only on this path
    from diffusers import AutoencoderKL

    with torch.random.fork_rng():
        torch.manual_seed(model_seed)
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64),
                            latent_channels=4, layers_per_block=1, sample_size=image_size)
        text_encoder = CLIPTextModel(_text_config(width))
    return LDMTargetExtractor(vae, openai_clip_tokenizer(), text_encoder, image_size=image_size, name_or_path=TINY_RANDOM,
                              **kwargs)


def tiny_brain_diffuser_extractor(model_seed: int = 0, width: int = 32, image_size: int = 32,
                                  **kwargs):
    """VD-shaped components: CLIP text with projection (77 x width) and CLIP vision with projection at
    ``image_size`` px, patch 4 (clip_vision: (image_size/4)^2 + 1 tokens x width)."""
    with torch.random.fork_rng():
        torch.manual_seed(model_seed)
        text_encoder = CLIPTextModelWithProjection(_text_config(width))
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=4,
            image_size=image_size, patch_size=4, projection_dim=width))
    processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                   crop_size={"height": image_size, "width": image_size})
    return BrainDiffuserTargetExtractor(openai_clip_tokenizer(), text_encoder, processor, image_encoder,
                                        image_size=image_size, name_or_path=TINY_RANDOM, **kwargs)


# --- the image metrics' networks ------------------------------------------------------------------------------

TINY_FEATURE_INPUT = 32  # px: the tiny feature networks' input size


class _TinyFeatureNetwork(torch.nn.Module):
    """Two small convolutions; returns ``{layer: features}`` under the layer names the metrics read."""

    def __init__(self, layers: tuple[str, ...], width: int = 8):
        super().__init__()
        self.layers = layers
        self.conv1 = torch.nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        first = torch.relu(self.conv1(x))
        second = torch.relu(self.conv2(first))
        maps = {"features.4": first, "features.11": second,
                "avgpool": torch.nn.functional.adaptive_avg_pool2d(second, 1)}
        return {name: maps[name] for name in self.layers}


def tiny_feature_networks(seed: int = 0) -> dict[str, torch.nn.Module]:
    """Random tiny stand-ins for the networks of the image metrics (``alexnet``, ``inception``, ``effnet``,
    ``swav``; CLIP is :func:`tiny_clip_scorer`), each returning the layers the metrics read (AlexNet's
    ``features.4``/``features.11``, the others' ``avgpool``) for :data:`TINY_FEATURE_INPUT` px inputs: the metrics'
    mechanics in milliseconds, where the real architectures with random weights take seconds per image."""
    layers = {"alexnet": ("features.4", "features.11"), "inception": ("avgpool",), "effnet": ("avgpool",),
              "swav": ("avgpool",)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {key: _TinyFeatureNetwork(names).eval().requires_grad_(False) for key, names in layers.items()}


# --- VDVAE and MindEye (the Brain-Diffuser and MindEye bases) -------------------------------------------------

# A 16 px VDVAE with 6 latent layers, the first 3 the regression target (Brain-Diffuser's 31 of 75, in small).
TINY_VDVAE_CONFIG = dict(image_size=16, width=8, zdim=2, enc_blocks="16x1,16d2,8x1,8d2,4x1,4d4,1x1",
                         dec_blocks="1x1,4m1,4x1,8m4,16m8,16x1", custom_width_str="4:12,1:12", num_mixtures=3,
                         num_target_layers=3)


def tiny_vdvae(seed: int = 0, **_):
    """A random tiny ``VDVAEModel`` (``TINY_VDVAE_CONFIG``) in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VDVAEModel(**TINY_VDVAE_CONFIG).eval()


def tiny_vdvae_extractor(model_seed: int = 0, **kwargs):
    """Brain-Diffuser's low-level target (``"vdvae"``) from :func:`tiny_vdvae`."""
    kwargs.pop("revision", None)
    return VDVAETargetExtractor(tiny_vdvae(model_seed), name_or_path=TINY_RANDOM, **kwargs)


def tiny_mindeye(seed: int = 0, voxel_counts: dict | None = None, backbone: dict | None = None,
                 clip_tokens: int | None = None, clip_dim: int | None = None):
    """A random tiny ``MindEyeModel`` whose prior predicts the image context of ``backbone`` (a dict of Versatile
    Diffusion components: tokens and width from its ``image_encoder``), or ``clip_tokens`` x ``clip_dim``."""
    if backbone is not None and backbone.get("image_encoder") is not None:
        vision = backbone["image_encoder"].config
        clip_tokens = clip_tokens or (vision.image_size // vision.patch_size) ** 2 + 1
        clip_dim = clip_dim or vision.projection_dim
    config = MindEyeConfig(voxel_counts=dict(voxel_counts or {"subj01": 40}), clip_tokens=clip_tokens or 9,
                           clip_dim=clip_dim or 16, hidden_size=32, num_blocks=2, projector_hidden_size=24,
                           prior_depth=2, prior_heads=2, prior_dim_head=8, prior_timesteps=10,
                           low_level_hidden_size=16, low_level_num_blocks=1, low_level_channels=8, low_level_side=2,
                           low_level_block_out_channels=[8, 8], low_level_norm_num_groups=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MindEyeModel(config).eval()


__all__ = ["CAPTIONS", "TINY_CLIP_CONFIG", "TINY_FEATURE_INPUT", "TINY_LLAVA_CHAT_TEMPLATE", "TINY_RANDOM",
           "tiny_feature_networks",
           "save_tiny_llava", "tiny_brain_diffuser_extractor", "tiny_ldm_extractor", "tiny_brain_prefix_gpt2", "tiny_caption_tokenizer", "tiny_clip_scorer",
           "tiny_clip_tokenizer", "tiny_ddim_scheduler", "tiny_gpt2_config", "tiny_llava", "tiny_llava_tokenizer",
           "tiny_sd_components", "tiny_vd_components", "TINY_VDVAE_CONFIG", "tiny_mindeye", "tiny_vdvae",
           "tiny_vdvae_extractor"]
