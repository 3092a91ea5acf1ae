"""fgb2i_hf: fine-grained brain-to-image reconstruction (FgB2I, arXiv 2505.22150) on the Hugging Face stack."""

from ._version import __version__

import importlib

from transformers import AutoConfig, AutoModel

from .models import BrainPrefixGPT2, BrainPrefixGPT2Config
from .models.mindeye import MindEyeConfig, MindEyeModel
from .models.render_surrogate import RenderSurrogate, RenderSurrogateConfig

AutoConfig.register(BrainPrefixGPT2Config.model_type, BrainPrefixGPT2Config, exist_ok=True)
AutoModel.register(BrainPrefixGPT2Config, BrainPrefixGPT2, exist_ok=True)
AutoConfig.register(MindEyeConfig.model_type, MindEyeConfig, exist_ok=True)
AutoModel.register(MindEyeConfig, MindEyeModel, exist_ok=True)
AutoConfig.register(RenderSurrogateConfig.model_type, RenderSurrogateConfig, exist_ok=True)
AutoModel.register(RenderSurrogateConfig, RenderSurrogate, exist_ok=True)

_SUBMODULES = ("captions", "clip", "core", "data", "decoders", "drivers", "evaluation", "metrics", "models",
               "pipelines", "rewards", "rl", "simnsd", "testing", "tiny", "tokenization", "training", "visualization")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'fgb2i_hf' has no attribute {name!r}")
