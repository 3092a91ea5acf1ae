"""Brain-Diffuser's low-level target: the VDVAE latents of the first k layers, flattened (``"vdvae"``).

Brain-Diffuser (Ozcelik & VanRullen 2023; ozcelikfu/brain-diffuser) regresses fMRI onto the latents of
the first 31 layers of the released ImageNet-64 VDVAE and decodes its predictions into the init image of its
second stage. What its scripts do, and where:

* image size — each stimulus resized to 64 x 64 with torchvision's ``resize`` on the PIL image (bilinear, PIL's
  antialiasing), 0-255 floats, normalised with the ImageNet-64 statistics (``scripts/vdvae_extract_features.py``
  l. 64-65; ``vdvae/model_utils.py`` ``set_up_data``);
* the target — ``stats[i]["z"]`` of the first ``num_latents = 31`` top-down layers (l. 82, 92-95): a posterior
  *sample* per layer, each layer conditioned on the samples above it (the released ``DecBlock.sample``), flattened
  per layer and concatenated: 91,168 values;
* the ridge — ``sklearn.linear_model.Ridge(alpha=50000, fit_intercept=True)`` (``scripts/vdvae_regression.py``
  l. 42) on betas divided by 300 and z-scored with the train mean and std (l. 22-29); the targets are not
  standardised; the test predictions are z-scored over the test set and given the train latents' mean and std
  (l. 45-46): ``RidgeDecoder(alphas=[BRAIN_DIFFUSER_VDVAE_ALPHA]).predict(..., rescale=True)``;
* the decode — the predicted 31 layers fixed, the rest from the prior at temperature 1, the output distribution
  sampled, the 64 px image resized to 512 (bicubic) (``scripts/vdvae_reconstruct_images.py`` l. 129-135):
  ``VDVAEModel.decode``'s defaults.

``VDVAETargetExtractor`` computes the target with a ``VDVAEModel`` (a converted release, or ``simnsd/vdvae``); k is
the model's ``config.num_target_layers`` unless given. Posterior samples are seeded per image (``seed``, image
id), so a target does not depend on batching or order; ``latent_sampling="mean"`` takes posterior means instead.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from ..core import resolve_pretrained
from ..models.vdvae import VDVAEModel
from ..models.vdvae.modeling_vdvae import LATENT_SAMPLING
from .targets import TargetExtractor, _resize

# scripts/vdvae_regression.py l. 42: skl.Ridge(alpha=50000, max_iter=10000, fit_intercept=True)
BRAIN_DIFFUSER_VDVAE_ALPHA = 50000.0
# scripts/vdvae_regression.py l. 45-46: predictions z-scored over the test set, then the train latents' mean and std
BRAIN_DIFFUSER_VDVAE_RESCALE = True
# scripts/vdvae_extract_features.py l. 64: T.functional.resize(img, (64, 64)) on a PIL image (bilinear)
BRAIN_DIFFUSER_VDVAE_IMAGE_SIZE = 64


class VDVAETargetExtractor(TargetExtractor):
    """Target ``"vdvae"``: ``(N, D_k)`` flattened first-k-layer VDVAE latents of the resized stimuli."""

    base = "brain_diffuser"
    image_targets = ("vdvae",)
    components = ("vdvae",)

    def __init__(self, vdvae, *, num_layers: int | None = None, latent_sampling: str = "sample", seed: int = 42,
                 device=None, dtype: torch.dtype = torch.float32, name_or_path: str | None = None):
        if latent_sampling not in LATENT_SAMPLING:
            raise ValueError(f"latent_sampling must be 'sample' (Brain-Diffuser) or 'mean', got {latent_sampling!r}")
        self.vdvae = vdvae
        self.num_layers = int(vdvae.config.num_target_layers if num_layers is None else num_layers)
        vdvae.latent_shapes(self.num_layers)  # checks the range
        self.image_size = int(vdvae.config.image_size)
        self.latent_sampling, self.seed = latent_sampling, int(seed)
        super().__init__(device, dtype, name_or_path)

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, revision: str | None = None, **kwargs):
        """A ``VDVAEModel`` folder (``convert_vdvae``'s output, ``simnsd/vdvae``) or a saved extractor."""
        path = resolve_pretrained(name_or_path)
        subfolder = "vdvae" if os.path.isdir(os.path.join(path, "vdvae")) else None
        return cls(VDVAEModel.from_pretrained(path, subfolder=subfolder, revision=revision), name_or_path=name_or_path,
                   **cls._saved_kwargs(path, kwargs))

    @property
    def target_size(self) -> int:
        return self.vdvae.arch.latent_size(self.num_layers)

    def extraction_kwargs(self) -> dict:
        return {"num_layers": self.num_layers, "latent_sampling": self.latent_sampling, "seed": self.seed}

    def settings(self) -> dict:
        return {**super().settings(), **self.extraction_kwargs(), "image_size": self.image_size}

    def _generator(self, key: int) -> torch.Generator:
        seed = int(np.random.SeedSequence([self.seed, int(key)]).generate_state(1, np.uint64)[0])
        return torch.Generator().manual_seed(seed)

    def encode_images(self, name, images, keys):
        pil = _resize(images, self.image_size, Image.BILINEAR)
        x = torch.from_numpy(np.stack([np.asarray(im) for im in pil])).permute(0, 3, 1, 2)
        x = x.to(self.device, self.dtype) / 255.0
        generator = [self._generator(k) for k in keys] if self.latent_sampling == "sample" else None
        latents = self.vdvae.encode(x, num_layers=self.num_layers, latent_sampling=self.latent_sampling,
                                    generator=generator)
        return self.vdvae.flatten_latents(latents)
