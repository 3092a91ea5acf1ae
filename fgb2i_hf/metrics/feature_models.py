"""The networks behind MindEye's high-level image metrics, with MindEye's input transforms.

| key        | network (torchvision unless noted)                 | layer(s)                    | input (from 256 x 256)   |
|------------|----------------------------------------------------|-----------------------------|--------------------------|
| alexnet    | ``alexnet``, ``IMAGENET1K_V1``                     | ``features.4``, ``features.11`` | Resize(256) + ImageNet norm |
| inception  | ``inception_v3``, ``DEFAULT``                      | ``avgpool``                 | Resize(342) + ImageNet norm |
| clip       | OpenAI CLIP ViT-L/14 (open_clip, ``CLIPScorer``)   | final image embedding       | Resize(224) + CLIP norm  |
| effnet     | ``efficientnet_b1``, ``DEFAULT`` (IMAGENET1K_V2)   | ``avgpool``                 | Resize(255) + ImageNet norm |
| swav       | ``resnet50`` with SwAV weights (facebookresearch/swav) | ``avgpool``             | Resize(224) + ImageNet norm |

Every model is injectable: :class:`FeatureModel` wraps any callable that maps a normalised batch to a
tensor or a dict of tensors. :func:`load_feature_models` builds the real ones (``pretrained=True``;
torchvision downloads its weights to the torch hub cache on first use, then works offline) or the same
architectures with random weights (``pretrained=False``, for tests).

SwAV: upstream loads it with ``torch.hub.load('facebookresearch/swav:main', 'resnet50')``, which runs
the repository's ``hubconf.py``: torchvision's ``resnet50`` plus the state dict at
https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar with the ``module.`` prefixes
removed (``fc`` stays random; it is not used). We do the same without running remote code: from a
local file (``swav_weights=``: safetensors, or a torch checkpoint read with ``weights_only=True``) or,
when none is given, from that URL through the torch hub cache.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from ..clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, CLIPScorer
from ..tiny import TINY_FEATURE_INPUT, tiny_clip_scorer, tiny_feature_networks
from .image import resize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SWAV_URL = "https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar"
FEATURE_MODEL_KEYS = ("alexnet", "inception", "clip", "effnet", "swav")


@dataclass
class FeatureModel:
    """A network and the input transform MindEye uses with it.

    ``network`` maps a normalised float batch (B, 3, resize, resize) to a tensor (B, ...) or a dict of
    tensors keyed by layer name (a torchvision feature extractor).
    """

    network: Callable[[torch.Tensor], torch.Tensor | dict[str, torch.Tensor]]
    resize: int
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    def to(self, device) -> "FeatureModel":
        module = self.network if isinstance(self.network, nn.Module) else getattr(self.network, "__self__", None)
        if isinstance(module, nn.Module):  # a network, or the model behind a bound method (CLIP's encode_image)
            module.to(device)
        return self

    def preprocess(self, images: torch.Tensor, antialias: bool = False) -> torch.Tensor:
        """(B, 3, 256, 256) in [0, 1] -> resized and normalised network input."""
        x = resize(images, self.resize, antialias)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, antialias: bool = False) -> dict[str | None, np.ndarray]:
        """Features of a batch, flattened per image: ``{layer: (B, D)}`` (key None for a plain tensor output)."""
        device = _device_of(self.network)
        out = self.network(self.preprocess(images.to(device), antialias))
        if isinstance(out, torch.Tensor):
            out = {None: out}
        return {k: v.float().flatten(1).cpu().numpy() for k, v in out.items()}


def _device_of(network) -> torch.device:
    module = network if isinstance(network, nn.Module) else getattr(network, "__self__", None)
    if isinstance(module, nn.Module):
        for p in module.parameters():
            return p.device
    return torch.device("cpu")


def _extractor(model: nn.Module, nodes: list[str]) -> nn.Module:
    # imported here: torchvision is a heavy import, needed only on this path
    from torchvision.models.feature_extraction import create_feature_extractor

    with warnings.catch_warnings():  # "nodes traced in eval mode are a subsequence of train mode's": we only use eval
        warnings.filterwarnings("ignore", message="NOTE: The nodes obtained by tracing")
        return create_feature_extractor(model.eval(), return_nodes=nodes).eval().requires_grad_(False)


def alexnet_model(pretrained: bool = True) -> FeatureModel:
    # imported here: torchvision is a heavy import, needed only on this path
    from torchvision.models import AlexNet_Weights, alexnet

    model = alexnet(weights=AlexNet_Weights.IMAGENET1K_V1 if pretrained else None)
    return FeatureModel(_extractor(model, ["features.4", "features.11"]), resize=256)


def inception_model(pretrained: bool = True) -> FeatureModel:
    # imported here: torchvision is a heavy import, needed only on this path
    from torchvision.models import Inception_V3_Weights, inception_v3

    # torchvision turns on transform_input with its pretrained weights; keep the same graph when random.
    if pretrained:
        model = inception_v3(weights=Inception_V3_Weights.DEFAULT)
    else:
        model = inception_v3(weights=None, transform_input=True, aux_logits=True, init_weights=True)
    return FeatureModel(_extractor(model, ["avgpool"]), resize=342)


def effnet_model(pretrained: bool = True) -> FeatureModel:
    # imported here: torchvision is a heavy import, needed only on this path
    from torchvision.models import EfficientNet_B1_Weights, efficientnet_b1

    model = efficientnet_b1(weights=EfficientNet_B1_Weights.DEFAULT if pretrained else None)
    return FeatureModel(_extractor(model, ["avgpool"]), resize=255)


def load_swav_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A SwAV ResNet-50 state dict from a local file, ``module.`` prefixes removed. Never unpickles objects.

    ``*.safetensors`` is read with safetensors; anything else with ``torch.load(weights_only=True)``
    (the upstream ``swav_800ep_pretrain.pth.tar`` is a plain dict of tensors and loads this way).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"SwAV weights not found: {path}")
    if path.endswith(".safetensors"):
        state = load_file(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - re-raised with the file name
            raise ValueError(f"{path}: not loadable as a tensor-only torch checkpoint (weights_only=True): {err}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    return {k.replace("module.", ""): v for k, v in state.items()}


def swav_resnet50(weights: str | None = None, pretrained: bool = True) -> nn.Module:
    """torchvision ResNet-50 with SwAV's weights (as facebookresearch/swav's hubconf builds it)."""
    # imported here: torchvision is a heavy import, needed only on this path
    from torchvision.models import resnet50

    model = resnet50(weights=None)
    if not pretrained:
        return model
    if weights is not None:
        state, source = load_swav_state_dict(weights), weights
    else:
        state = torch.hub.load_state_dict_from_url(SWAV_URL, map_location="cpu", weights_only=True)
        state, source = {k.replace("module.", ""): v for k, v in state.items()}, SWAV_URL
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing:
        raise ValueError(f"{source}: not a SwAV ResNet-50 checkpoint: {len(missing)} backbone weights missing "
                         f"(e.g. {missing[:3]})")
    return model


def swav_model(weights: str | None = None, pretrained: bool = True) -> FeatureModel:
    return FeatureModel(_extractor(swav_resnet50(weights, pretrained), ["avgpool"]), resize=224)


def clip_model(scorer) -> FeatureModel:
    """MindEye's CLIP column: ``encode_image`` (final projected embedding, not normalised) at the CLIP input size."""
    return FeatureModel(scorer.model.encode_image, resize=scorer.image_size, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)


def tiny_feature_models(seed: int = 0, device=None) -> dict[str, FeatureModel]:
    """Random tiny stand-ins for every feature model (``fgb2i_hf.tiny.tiny_feature_networks`` and
    ``tiny_clip_scorer``): the eight columns' mechanics at a fraction of the real architectures' cost (their values
    mean nothing)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = tiny_clip_scorer()
    models = {key: FeatureModel(network, resize=TINY_FEATURE_INPUT)
              for key, network in tiny_feature_networks(seed).items()}
    models["clip"] = clip_model(clip.eval())
    if device is not None:
        for m in models.values():
            m.to(device)
    return {key: models[key] for key in FEATURE_MODEL_KEYS}


def load_feature_models(keys: Sequence[str] = FEATURE_MODEL_KEYS, pretrained: bool = True, device=None,
                        clip="ViT-L-14-quickgelu", swav_weights: str | None = None) -> dict[str, FeatureModel]:
    """Build the feature models named in ``keys`` (subset of alexnet, inception, clip, effnet, swav).

    Args:
        pretrained: real weights (torchvision's, SwAV's, OpenAI CLIP) or random ones (tests).
        clip: a ``CLIPScorer`` (any CLIP, e.g. a tiny random one in tests) or an open_clip model name
            loaded with OpenAI's weights (default ViT-L/14, as MindEye).
        swav_weights: local SwAV checkpoint (see :func:`load_swav_state_dict`); default: download/cache.
    """
    unknown = [k for k in keys if k not in FEATURE_MODEL_KEYS]
    if unknown:
        raise ValueError(f"unknown feature models {unknown}; choose from {list(FEATURE_MODEL_KEYS)}")
    models: dict[str, FeatureModel] = {}
    for key in keys:
        if key == "alexnet":
            models[key] = alexnet_model(pretrained)
        elif key == "inception":
            models[key] = inception_model(pretrained)
        elif key == "effnet":
            models[key] = effnet_model(pretrained)
        elif key == "swav":
            models[key] = swav_model(swav_weights, pretrained)
        elif key == "clip":
            if isinstance(clip, str):
                if not pretrained:
                    raise ValueError("pretrained=False needs a CLIPScorer for `clip` (e.g. CLIPScorer.from_config(...))")

                clip = CLIPScorer.from_pretrained(clip, pretrained="openai")
            clip.eval()
            models[key] = clip_model(clip)
    if device is not None:
        for m in models.values():
            m.to(device)
    return models
