"""``simnsd/clip``: a tiny open_clip CLIP trained contrastively on SimNSD train images and their captions.

A ViT image tower (64 x 64 input, 8-pixel patches) and a causal text tower with OpenAI CLIP's tokenizer and
QuickGELU, trained with CLIP's symmetric InfoNCE loss (Radford et al. 2021, eq. in Fig. 3) and a learned
temperature. Each step pairs every image of the batch with one of its captions: the fine caption with probability
``clip_fine_caption_probability``, else one of its COCO-like captions. Identical caption strings of different
images in a batch are not treated as negatives of each other.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ...clip import CLIPScorer
from .loop import TrainLoop


@dataclass
class CLIPTrainingConfig:
    """The world CLIP's size and training (``recipes/train_world.py`` reads these from YAML or the command line)."""

    clip_embed_dim: int = field(default=64, metadata={"help": "Joint embedding size."})
    clip_image_size: int = field(default=64, metadata={"help": "Input image size (SimNSD images are 64 x 64)."})
    clip_patch_size: int = field(default=8, metadata={"help": "ViT patch size."})
    clip_vision_width: int = field(default=64, metadata={"help": "Width of the image transformer."})
    clip_vision_layers: int = field(default=4, metadata={"help": "Layers of the image transformer."})
    clip_text_width: int = field(default=32, metadata={
        "help": "Width of the text transformer = the diffusion model's cross-attention size and the LDM base's c "
                "width. Its token table has 49,408 rows (CLIP's BPE), which dominates the CLIP's size."})
    clip_text_heads: int = field(default=4, metadata={"help": "Attention heads of the text transformer."})
    clip_text_layers: int = field(default=4, metadata={"help": "Layers of the text transformer."})
    clip_context_length: int = field(default=40, metadata={
        "help": "Text context length (SimNSD's longest caption is 37 CLIP tokens)."})
    clip_epochs: int = field(default=40, metadata={"help": "Passes over the train images."})
    clip_batch_size: int = field(default=128, metadata={"help": "Images (each with one caption) per step."})
    clip_learning_rate: float = field(default=1e-3, metadata={"help": "Peak AdamW learning rate (cosine decay)."})
    clip_weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay of matrices."})
    clip_warmup_steps: int = field(default=50, metadata={"help": "Linear warm-up steps."})
    clip_fine_caption_probability: float = field(default=0.5, metadata={
        "help": "Probability of pairing an image with its fine caption rather than a COCO-like one."})
    clip_max_shift: int = field(default=2, metadata={
        "help": "Random translation of training images, in pixels (edges replicated)."})

    def model_config(self) -> dict:
        """The open_clip config dict (``CLIPScorer.from_config``)."""
        return {
            "embed_dim": self.clip_embed_dim,
            "vision_cfg": {"image_size": self.clip_image_size, "patch_size": self.clip_patch_size,
                           "width": self.clip_vision_width, "layers": self.clip_vision_layers, "head_width": 16},
            "text_cfg": {"context_length": self.clip_context_length, "vocab_size": 49408,
                         "width": self.clip_text_width, "heads": self.clip_text_heads,
                         "layers": self.clip_text_layers},
            "quick_gelu": True,
        }


def shift_images(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image of (B, C, H, W) by up to ``max_shift`` pixels in x and y, replicating edges."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    dx, dy = (torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator)).tolist()
    return torch.stack([padded[i, :, dy[i]: dy[i] + h, dx[i]: dx[i] + w] for i in range(b)])


def contrastive_loss(image_emb, text_emb, logit_scale, texts):
    """Symmetric InfoNCE over a batch of unit vectors; other images' identical captions are masked out."""
    logits = logit_scale.exp() * image_emb @ text_emb.T
    same = np.array(texts, dtype=object)
    duplicate = torch.from_numpy(same[:, None] == same[None, :]) & ~torch.eye(len(texts), dtype=torch.bool)
    logits = logits.masked_fill(duplicate.to(logits.device), float("-inf"))
    labels = torch.arange(len(texts), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


@torch.no_grad()
def retrieval(scorer: CLIPScorer, images: np.ndarray, captions: list[list[str]]) -> dict:
    """Image -> caption retrieval among all captions of the set (a hit at k: one of the image's own captions is
    among the k most similar), caption -> image top-1, and their chance levels.

    Chance of image -> caption top-k: the probability that k captions drawn at random without replacement
    include one of the image's own, averaged over images.
    """
    owner = np.array([i for i, caps in enumerate(captions) for _ in caps])
    texts = [c for caps in captions for c in caps]
    image_emb = scorer.encode_images(images)
    text_emb = scorer.encode_text(texts)
    sims = (image_emb @ text_emb.T).cpu().numpy()
    ranked = np.argsort(-sims, axis=1)
    best_image = sims.argmax(0)
    counts = np.bincount(owner, minlength=len(images))
    out = {}
    for k in (1, 5):
        hits = (owner[ranked[:, :k]] == np.arange(len(images))[:, None]).any(1)
        # P(no own caption among k of M) = C(M - n, k) / C(M, k)
        miss = [math.comb(len(texts) - n, k) / math.comb(len(texts), k) for n in counts]
        out[f"image_to_caption_top{k}"] = float(hits.mean())
        out[f"image_to_caption_top{k}_chance"] = float(1 - np.mean(miss))
    out["image_to_caption_chance"] = out["image_to_caption_top1_chance"]
    out.update({"caption_to_image_top1": float(np.mean(best_image == owner)),
                "caption_to_image_chance": 1.0 / len(images), "images": int(len(images)), "captions": len(texts)})
    return out


def evaluate_clip(scorer: CLIPScorer, split) -> dict:
    """Retrieval among a split's COCO-like captions and among its fine captions."""
    out = {"coco_captions": retrieval(scorer, split.images, split.captions)}
    if all(split.fine_captions):
        out["fine_captions"] = retrieval(scorer, split.images, split.fine_captions)
    return out


def train_clip(config: CLIPTrainingConfig, data, seed: int = 0, device: str = "cpu", progress: bool = True):
    """Train the world CLIP on ``data.train``; returns ``(CLIPScorer, record)`` with test retrieval in the record."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    scorer = CLIPScorer.from_config(config.model_config(), name="simnsd/clip").to(device)
    model = scorer.model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embedding" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.clip_weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.clip_learning_rate,
                                  betas=(0.9, 0.98), eps=1e-6)
    train = data.train
    n = len(train)
    steps_per_epoch = math.ceil(n / config.clip_batch_size)
    images = torch.from_numpy(train.images).permute(0, 3, 1, 2).float() / 255.0
    with TrainLoop(optimizer, model.parameters(), config.clip_epochs * steps_per_epoch, config.clip_warmup_steps,
                   "simnsd/clip", progress) as loop:
        for epoch in range(config.clip_epochs):
            order = rng.permutation(n)
            for s in range(steps_per_epoch):
                rows = order[s * config.clip_batch_size: (s + 1) * config.clip_batch_size]
                texts = [train.fine_captions[i][rng.integers(len(train.fine_captions[i]))]
                         if train.fine_captions[i] and rng.random() < config.clip_fine_caption_probability
                         else train.captions[i][rng.integers(len(train.captions[i]))] for i in rows]
                x = shift_images(images[rows], config.clip_max_shift, generator).to(device)
                image_emb = model.encode_image((x - scorer.mean) / scorer.std, normalize=True)
                text_emb = model.encode_text(scorer.tokenize(texts), normalize=True)
                loop.step(contrastive_loss(image_emb, text_emb, model.logit_scale, texts), epoch=epoch)
                with torch.no_grad():
                    model.logit_scale.clamp_(0, math.log(100))
    model.eval()
    record = {"component": "simnsd/clip", "config": asdict(config), "seed": seed, **loop.summary(),
              "metrics": {"test": evaluate_clip(scorer, data.test)}}
    return scorer, record
