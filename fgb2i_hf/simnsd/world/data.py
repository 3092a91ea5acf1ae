"""The SimNSD data the world's models train on: distinct stimulus images and their captions, by split.

Every world component trains on the world's *train* images of a SimNSD (every image some subject saw outside the
shared set: ``load_nsd``'s train and validation splits together) and is scored on the *test* images (the shared
ones, ``sharedix``); no model ever sees a test image or caption while training. The rows come from
``fgb2i_hf.data.load_nsd``, so the split is NSD's own.

Why the world's generative models (clip, gpt2, diffusion, vdvae, versatile) also see the validation *images*: they
stand in for models pretrained on outside data (CLIP, GPT-2, SD, VD, VDVAE never saw NSD's brain data; LAION even
holds COCO images), and the validation split exists to select the *brain* models (ridge alphas, CE checkpoints),
which the world's brain components (``ldm_base``, ``mindeye``) fit under the data contract of their drivers, without
the validation rows. It also keeps the world's data what it was before the split (2,600 images), so the shipped
components stay reproducible from their records.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from fgb2i_hf.data import NSDStimuli, load_nsd
from fgb2i_hf.simnsd import simulate_nsd

SIMNSD_SUBJECTS = ("subj01", "subj02", "subj05", "subj07")


@dataclass
class WorldImages:
    """One split's distinct stimuli.

    Attributes:
        nsd_ids: (N,) sorted 0-based 73k ids.
        images: uint8 (N, H, W, 3).
        captions: N lists of COCO(-like) captions (5 per SimNSD image).
        fine_captions: N lists of fine captions (1 oracle caption per SimNSD image; may be empty elsewhere).
    """

    nsd_ids: np.ndarray
    images: np.ndarray
    captions: list[list[str]]
    fine_captions: list[list[str]]

    def __len__(self) -> int:
        return len(self.nsd_ids)

    def all_captions(self, fine: bool = True) -> list[str]:
        """Every caption of the split, COCO ones first (then fine ones when ``fine``)."""
        texts = [c for caps in self.captions for c in caps]
        return texts + ([c for caps in self.fine_captions for c in caps] if fine else [])

    def subset(self, n: int) -> "WorldImages":
        """The first ``n`` images (quick runs and tests)."""
        return WorldImages(self.nsd_ids[:n], self.images[:n], self.captions[:n], self.fine_captions[:n])

    def caption_pairs(self, fine: bool = True) -> tuple[np.ndarray, list[str]]:
        """``(image_index (M,), captions (M,))``: every (image, caption) pair of the split."""
        owner, texts = [], []
        for i, (caps, fines) in enumerate(zip(self.captions, self.fine_captions)):
            for c in list(caps) + (list(fines) if fine else []):
                owner.append(i)
                texts.append(c)
        return np.asarray(owner, dtype=np.int64), texts


@dataclass
class WorldData:
    """The SimNSD a world is trained on: its root and the train and test stimuli."""

    root: str
    train: WorldImages
    test: WorldImages

    def subset(self, train: int | None = None, test: int | None = None) -> "WorldData":
        return WorldData(self.root, self.train if train is None else self.train.subset(train),
                         self.test if test is None else self.test.subset(test))


def simulate_world_nsd(root: str, seed: int = 0) -> str:
    """A tiny SimNSD (the defaults of ``simulate_nsd``, ``seed``) at ``root``, simulated unless it is already there."""
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(os.path.join(root, "simnsd")):
        simulate_nsd(root, scale="tiny", seed=seed, overwrite=True)
    return root


def load_world_data(nsd_root: str, subjects=SIMNSD_SUBJECTS, cache_dir: str | None = None) -> WorldData:
    """Distinct train and test stimuli of ``subjects`` with their captions (``load_nsd`` rows + ``NSDStimuli``);
    the world's train images are ``load_nsd``'s train and validation images (module docstring)."""
    rows = load_nsd(nsd_root, subjects=list(subjects), cache_dir=cache_dir)
    stimuli = NSDStimuli(nsd_root)
    splits = {}
    for split, sources in (("train", ("train", "validation")), ("test", ("test",))):
        by_id = {}
        for source in (name for name in sources if name in rows):
            part = rows[source]
            for nsd_id, caps, fines in zip(part["nsd_id"], part["captions"], part["fine_captions"]):
                by_id.setdefault(int(nsd_id), (list(caps), list(fines)))
        ids = np.array(sorted(by_id), dtype=np.int64)
        splits[split] = WorldImages(ids, stimuli.get(ids.tolist()), [by_id[i][0] for i in ids],
                                    [by_id[i][1] for i in ids])
    overlap = set(splits["train"].nsd_ids.tolist()) & set(splits["test"].nsd_ids.tolist())
    if overlap:
        raise ValueError(f"{nsd_root}: {len(overlap)} images are in both the train and the test split")
    return WorldData(str(nsd_root), splits["train"], splits["test"])
