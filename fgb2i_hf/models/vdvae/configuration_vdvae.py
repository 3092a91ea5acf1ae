"""The VDVAE architecture described by its config values, without building the model.

Child (2021), "Very Deep VAEs Generalize Autoregressive Models and Can Outperform Them on Images" (arXiv
2011.10650), describes a hierarchical VAE by two block strings, written as in the paper's released hyperparameters
(openai/vdvae ``hps.py``):

* ``enc_blocks`` (bottom-up): comma-separated ``RxN`` (N residual blocks at resolution R) and ``RdK`` (one
  residual block at R followed by K x K average pooling), from the image resolution down to 1 x 1;
* ``dec_blocks`` (top-down): ``RxN`` (N top-down blocks at R) and ``RmS`` (one top-down block at R whose input
  is the state at resolution S, nearest-upsampled: the "mixin"), from 1 x 1 up to the image resolution.

Every top-down block is one latent layer of ``zdim`` channels at its resolution, so the latent shapes follow from
``dec_blocks`` and ``zdim`` alone. Defaults (the model's ``__init__``) are the ImageNet-64 model Brain-Diffuser
uses (openai/vdvae ``hps.py``, ``imagenet64``; pixel statistics from ``data.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# openai/vdvae hps.py, HPARAMS_REGISTRY["imagenet64"] (Brain-Diffuser's scripts/vdvae_extract_features.py, H dict)
IMAGENET64_ENC_BLOCKS = "64x11,64d2,32x20,32d2,16x9,16d2,8x8,8d2,4x7,4d4,1x5"
IMAGENET64_DEC_BLOCKS = "1x2,4m1,4x3,8m4,8x7,16m8,16x15,32m16,32x31,64m32,64x12"
# openai/vdvae data.py, imagenet64: inputs are (x - 115.92961967) / 69.37404 on the 0-255 scale
IMAGENET64_PIXEL_MEAN = 115.92961967
IMAGENET64_PIXEL_STD = 69.37404
# Brain-Diffuser regresses onto the latents of the first 31 top-down layers (scripts/vdvae_extract_features.py,
# ``num_latents = 31``): 1x1 (2), 4x4 (4), 8x8 (8), 16x16 (16) and the first 32x32 layer, 91,168 values.
BRAIN_DIFFUSER_NUM_LAYERS = 31
# Brain-Diffuser decodes (scripts/vdvae_reconstruct_images.py) with ``forward_manual_latents(..., t=None)``: the
# layers after the given ones are drawn from the prior at its own scale (temperature 1), and the image is a sample
# of the output distribution (``out_net.sample``).
BRAIN_DIFFUSER_TEMPERATURE = 1.0
BRAIN_DIFFUSER_OUTPUT = "sample"


def parse_block_string(spec: str, kind: str) -> list[tuple[int, int | None]]:
    """``"64x2,64d2,32x1"`` -> ``[(64, None), (64, None), (64, 2), (32, None)]``.

    ``kind`` is ``"enc"`` (entries ``RxN``, ``RdK``, ``R``; the second value is the pooling factor) or ``"dec"``
    (entries ``RxN``, ``RmS``, ``R``; the second value is the mixin resolution S).
    """
    marker = {"enc": "d", "dec": "m"}[kind]
    blocks = []
    for entry in (e.strip() for e in str(spec).split(",")):
        try:
            if "x" in entry:
                res, count = (int(v) for v in entry.split("x"))
                if count < 1:
                    raise ValueError
                blocks += [(res, None)] * count
            elif marker in entry:
                res, other = (int(v) for v in entry.split(marker))
                blocks.append((res, other))
            else:
                blocks.append((int(entry), None))
        except ValueError:
            raise ValueError(f"{kind}_blocks: cannot read {entry!r} in {spec!r}; expected entries like '32x4', "
                             f"'32{marker}{16 if kind == 'dec' else 2}' or '32'") from None
    return blocks


def parse_widths(width: int, custom_width_str: str = "") -> dict[int, int]:
    """Per-resolution widths: ``width`` unless ``custom_width_str`` (``"R:W,R:W"``) says otherwise."""
    widths = {}
    for entry in (e for e in str(custom_width_str or "").split(",") if e.strip()):
        try:
            res, w = (int(v) for v in entry.split(":"))
        except ValueError:
            raise ValueError(f"custom_width_str: cannot read {entry!r}; expected 'resolution:width'") from None
        widths[res] = w
    return widths


@dataclass(frozen=True)
class VDVAEArchitecture:
    """Block lists, widths and latent shapes of a VDVAE config (pure Python: no weights are built)."""

    image_size: int
    width: int
    zdim: int
    enc: tuple[tuple[int, int | None], ...]
    dec: tuple[tuple[int, int | None], ...]
    custom_widths: tuple[tuple[int, int], ...]

    @classmethod
    def from_config(cls, image_size: int, width: int, zdim: int, enc_blocks: str, dec_blocks: str,
                    custom_width_str: str = "", **_) -> "VDVAEArchitecture":
        arch = cls(int(image_size), int(width), int(zdim), tuple(parse_block_string(enc_blocks, "enc")),
                   tuple(parse_block_string(dec_blocks, "dec")),
                   tuple(sorted(parse_widths(width, custom_width_str).items())))
        arch.check()
        return arch

    def width_at(self, res: int) -> int:
        return dict(self.custom_widths).get(res, self.width)

    @property
    def resolutions(self) -> list[int]:
        """Decoder resolutions, ascending."""
        return sorted({res for res, _ in self.dec})

    def check(self) -> None:
        res = self.image_size
        for block_res, pool in self.enc:
            if block_res != res:
                raise ValueError(f"enc_blocks: a block at {block_res} px follows the {res} px activations")
            if pool is not None:
                if pool < 1 or res % pool:
                    raise ValueError(f"enc_blocks: cannot pool {res} px by {pool}")
                res //= pool
                if self.width_at(res) < self.width_at(block_res):
                    raise ValueError(f"widths must not shrink going down: {block_res} px has "
                                     f"{self.width_at(block_res)}, {res} px {self.width_at(res)}")
        encoded = self.encoder_resolutions
        seen = set()
        for block_res, mixin in self.dec:
            if block_res not in encoded:
                raise ValueError(f"dec_blocks: no encoder activations at {block_res} px "
                                 f"(encoder has {sorted(encoded)})")
            if mixin is not None and (mixin not in seen or block_res % mixin):
                raise ValueError(f"dec_blocks: '{block_res}m{mixin}' needs an earlier {mixin} px block that "
                                 f"divides {block_res}")
            seen.add(block_res)
        if self.dec[-1][0] != self.image_size:
            raise ValueError(f"dec_blocks must end at the image size {self.image_size}, ends at {self.dec[-1][0]}")
        if self.zdim < 1 or self.width < 1:
            raise ValueError(f"width and zdim must be positive, got {self.width}, {self.zdim}")

    @property
    def encoder_resolutions(self) -> set[int]:
        res, out = self.image_size, {self.image_size}
        for _, pool in self.enc:
            if pool is not None:
                res //= pool
                out.add(res)
        return out

    @property
    def num_layers(self) -> int:
        """Number of latent layers (= top-down blocks)."""
        return len(self.dec)

    def latent_shapes(self, num_layers: int | None = None) -> list[tuple[int, int, int]]:
        """``(zdim, R, R)`` of the first ``num_layers`` latent layers (all by default)."""
        n = self.num_layers if num_layers is None else int(num_layers)
        if not 0 <= n <= self.num_layers:
            raise ValueError(f"num_layers must be in 0..{self.num_layers}, got {num_layers}")
        return [(self.zdim, res, res) for res, _ in self.dec[:n]]

    def latent_size(self, num_layers: int | None = None) -> int:
        """Values in the flattened latents of the first ``num_layers`` layers."""
        return sum(math.prod(s) for s in self.latent_shapes(num_layers))

    def layers_for_size(self, size: int) -> int:
        """The k whose first-k-layer latents flatten to ``size`` values (sizes grow strictly with k)."""
        total = 0
        for k, shape in enumerate(self.latent_shapes(), start=1):
            total += math.prod(shape)
            if total == size:
                return k
        sizes = [self.latent_size(k) for k in range(1, min(self.num_layers, 6) + 1)]
        raise ValueError(f"{size} values are not the flattened latents of the first k layers "
                         f"(k = 1, 2, ...: {sizes}, ...)")
