"""``object_accuracy``: object F1 of a caption against its stimulus' COCO objects (the paper's L_obj).

Objects named in the caption are found with CHAIR matching (``fgb2i_hf.captions.objects``), the same
matching the caption metrics and the hallucination audit use, and compared with the row's ``objects``
column (the image's COCO instance categories).
"""

from __future__ import annotations

from typing import Sequence

from ..captions.objects import caption_objects, object_prf
from .registry import register_reward


@register_reward("object_accuracy")
def object_accuracy(completions: Sequence[str], objects: Sequence[Sequence[str]], **columns) -> list[float]:
    """F1 between the COCO categories named in each completion and that row's ``objects``."""
    if len(objects) != len(completions):
        raise ValueError(f"'objects' has {len(objects)} rows for {len(completions)} completions")
    return [object_prf(caption_objects(c), ref)[2] for c, ref in zip(completions, objects)]
