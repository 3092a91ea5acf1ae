"""The shipped world as an FgB2I reconstruction pipeline: ``simnsd/diffusion`` + the ``simnsd/ldm_base`` decoders.

    pipe = world_ldm_pipeline("subj01", brain_model="outputs/ce/final")   # an FgB2ILDMPipeline
    base = pipe(betas, "subj01", w=0.0, output_type="np").images          # Takagi & Nishimoto's LDM base
    fgb2i = pipe(betas, "subj01", w=0.5, output_type="np").images         # base + the decoded caption

This is ``fgb2i_hf.pipelines.build_pipeline("ldm", "simnsd/diffusion", decoders=...)`` with the subject's two
ridge decoders; ``betas`` are the subject's test rows of ``load_nsd`` with its default options (z-scored, test
repetitions averaged), the rows the decoders were scored on.
"""

from __future__ import annotations

import os

import torch

from ...core import resolve_pretrained
from ...pipelines import build_pipeline


def world_ldm_decoders(subject: str) -> dict[str, str]:
    """``{"z_decoder": "simnsd/ldm_base/<subject>/z", "c_decoder": ".../c"}``; raises for a subject without them."""
    folder = os.path.join(resolve_pretrained("simnsd/ldm_base"), subject)
    if not os.path.isdir(folder):
        shipped = sorted(d for d in os.listdir(resolve_pretrained("simnsd/ldm_base"))
                         if os.path.isdir(os.path.join(resolve_pretrained("simnsd/ldm_base"), d)))
        raise ValueError(f"simnsd/ldm_base has no decoders for {subject!r}; shipped subjects: {shipped}")
    return {"z_decoder": f"simnsd/ldm_base/{subject}/z", "c_decoder": f"simnsd/ldm_base/{subject}/c"}


def world_ldm_pipeline(subject: str, brain_model=None, caption_tokenizer=None, device=None,
                       dtype: torch.dtype = torch.float32):
    """An ``FgB2ILDMPipeline`` on the shipped world for ``subject``.

    Args:
        subject: one of the SimNSD subjects with shipped decoders (subj01, subj02, subj05, subj07).
        brain_model: a ``BrainPrefixGPT2`` or the folder of one (its tokenizer is loaded from there), trained on
            ``simnsd/gpt2``; ``None`` for a pipeline that needs ``captions=`` whenever ``w > 0``.
        caption_tokenizer: the brain model's tokenizer, when ``brain_model`` is an object.
    """
    return build_pipeline("ldm", "simnsd/diffusion", brain_model=brain_model, caption_tokenizer=caption_tokenizer,
                          decoders=world_ldm_decoders(subject), dtype=dtype, device=device)
