"""The learned stand-in for rendering in the image-image reward: fit it, load it (checked), watch its fidelity.

``clip_image_image`` scores cos(CLIP_image(render(caption)), CLIP_image(stimulus)). Rendering every sampled caption
is what makes stage 2 unaffordable (millions of renders for the paper's 10 epochs). A :class:`RenderSurrogate`
(``fgb2i_hf.models``) predicts CLIP_image(render(caption)) from CLIP_text(caption) — for SD v1.x and OpenAI CLIP
ViT-L/14 the renderer's own text encoder is that CLIP's text tower, so the text embedding carries what the
renderer reads — and the reward becomes cos(surrogate(CLIP_text(caption)), CLIP_image(stimulus)).

* :func:`fit_render_surrogate` fits it once on renderings of the training captions (a cosine loss, the best epoch on
  a held-out tenth kept) and reports how well it ranks the reward on the held-out captions;
* the saved folder (``save_pretrained``: safetensors + ``config.json``) records the renderer's identity (settings,
  scheduler, weights SHA-256) and the CLIP model's; :func:`load_render_surrogate` refuses it for another renderer
  or another CLIP, naming what differs;
* :class:`FidelityWindow` keeps the last pairs of (surrogate reward, rendered reward) of the samples that the reward
  still renders during training (``surrogate_render_fraction``) and gives their Spearman correlation.
"""

from __future__ import annotations

import copy
import math
import os
from collections import deque
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..core import loading_config_field
from ..models.render_surrogate import RenderSurrogate, RenderSurrogateConfig
from .rendering import RendererSettings, TextToImageRenderer, identity_key, weights_sha256


def clip_identity(scorer) -> dict:
    """The name and weights SHA-256 of a ``CLIPScorer`` (what a surrogate's input and target depend on)."""
    return {"name": getattr(scorer, "name", None), "weights_sha256": weights_sha256({"clip": scorer.model})}


def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    # imported here: scipy is a heavy import, needed only on this path
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


@dataclass
class SurrogateFitConfig:
    """The surrogate's size and how it is fitted (``recipes/fit_reward_surrogate.py``)."""

    hidden_size: int = field(default=1024, metadata={"help": "Width of the MLP's hidden layers."})
    num_layers: int = field(default=2, metadata={"help": "Hidden layers of the MLP added to the linear map."})
    epochs: int = field(default=200, metadata={"help": "Passes over the training pairs."})
    batch_size: int = field(default=256, metadata={"help": "Pairs per optimiser step."})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate (cosine decay to 0)."})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay."})
    val_fraction: float = field(default=0.1, metadata={"help": "Captions held out to choose the epoch and report."})
    seed: int = field(default=0, metadata={"help": "Seed of the split, the initialisation and the batch order."})

    def __post_init__(self):
        for name in ("hidden_size", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")


def fit_render_surrogate(text_embeds: torch.Tensor, image_embeds: torch.Tensor, config: SurrogateFitConfig,
                         renderer_identity: dict, clip: dict, stimulus_embeds: torch.Tensor | None = None,
                         groups: np.ndarray | None = None) -> tuple[RenderSurrogate, dict]:
    """Fit a surrogate on pairs (CLIP text embedding of a caption, CLIP image embedding of its rendering).

    Args:
        text_embeds: (N, Dt) unit vectors; image_embeds: (N, Di) unit vectors, row i the rendering of caption i.
        config: size and optimisation.
        renderer_identity: ``TextToImageRenderer.identity()`` of the renderer that drew the targets.
        clip: :func:`clip_identity` of the CLIP model that embedded both.
        stimulus_embeds: (N, Di) CLIP image embedding of each caption's own stimulus: the held-out report then
            also gives the reward's Spearman correlation (surrogate vs rendered) on held-out captions.
        groups: (N,) a group id per caption (e.g. its image); the held-out split keeps groups whole, so held-out
            captions describe images the fit never saw.

    Returns:
        The model (its config records renderer, CLIP and the fit) and the fit's report.
    """
    n = len(text_embeds)
    if image_embeds.shape[0] != n or (stimulus_embeds is not None and stimulus_embeds.shape[0] != n):
        raise ValueError(f"text_embeds, image_embeds (and stimulus_embeds) must have the same rows, got {n}, "
                         f"{image_embeds.shape[0]}" + ("" if stimulus_embeds is None else f", {stimulus_embeds.shape[0]}"))
    rng = np.random.default_rng(config.seed)
    ids = np.arange(n) if groups is None else np.asarray(groups)
    unique = rng.permutation(np.unique(ids))
    n_val = max(1, int(round(config.val_fraction * len(unique))))
    if n_val >= len(unique):
        raise ValueError(f"{len(unique)} caption groups are too few to hold out {config.val_fraction:.0%} and fit on the rest")
    val = np.isin(ids, unique[:n_val])
    train_idx, val_idx = np.flatnonzero(~val), np.flatnonzero(val)

    torch.manual_seed(config.seed)
    model = RenderSurrogate(RenderSurrogateConfig(
        text_dim=int(text_embeds.shape[1]), image_dim=int(image_embeds.shape[1]), hidden_size=config.hidden_size,
        num_layers=config.num_layers, renderer=renderer_identity, renderer_key=identity_key(renderer_identity),
        clip=clip))
    x, y = text_embeds.float().cpu(), image_embeds.float().cpu()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_idx) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(config.seed)
    best, best_cos, curve = None, -math.inf, []
    train_t = torch.as_tensor(train_idx)
    for epoch in range(config.epochs):
        model.train()
        order = train_t[torch.randperm(len(train_t), generator=generator)]
        for i in range(0, len(order), config.batch_size):
            batch = order[i : i + config.batch_size]
            loss = 1 - (model(x[batch]) * y[batch]).sum(-1).mean()
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        model.eval()
        with torch.no_grad():
            val_cos = float((model(x[val_idx]) * y[val_idx]).sum(-1).mean())
        curve.append(round(val_cos, 5))
        if val_cos > best_cos:
            best_cos, best = val_cos, (epoch + 1, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[1])
    model.eval()
    report = {"captions": n, "train_captions": len(train_idx), "val_captions": len(val_idx),
              "best_epoch": best[0], "val_cosine": best_cos, "val_cosine_curve": curve,
              "linear_baseline_val_cosine": None, "config": asdict(config)}
    with torch.no_grad():
        predicted = model(x[val_idx])
        if stimulus_embeds is not None:
            s = stimulus_embeds.float().cpu()[val_idx]
            report["val_reward_spearman"] = spearman((predicted * s).sum(-1), (y[val_idx] * s).sum(-1))
        # what the text embedding alone says: cos(text, target) is the best a surrogate that ignores rendering does
        if x.shape[1] == y.shape[1]:
            report["linear_baseline_val_cosine"] = float((x[val_idx] * y[val_idx]).sum(-1).mean())
    model.config.fit = report
    return model, report


def _differences(expected: dict, found: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(expected) | set(found)):
        a, b = expected.get(key), found.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: fitted with {a!r}, offered {b!r}")
    return out


def check_surrogate_renderer(surrogate: RenderSurrogate, renderer, where: str = "the surrogate") -> None:
    """Refuse a renderer other than the one whose renderings the surrogate was fitted on (ValueError naming the
    settings that differ)."""
    if not hasattr(renderer, "identity"):
        raise ValueError(f"{where} can only be checked against a renderer with an identity() (a "
                         f"TextToImageRenderer), got {type(renderer).__name__}")
    recorded = surrogate.config.renderer or {}
    found = renderer.identity()
    if identity_key(found) != surrogate.config.renderer_key:
        differences = _differences(recorded, found) or ["(the recorded identity does not match its key)"]
        raise ValueError(f"{where} was fitted on another renderer; it predicts that renderer's images only. "
                         f"Differences: {'; '.join(differences[:6])}. Fit a surrogate for this renderer "
                         "(recipes/fit_reward_surrogate.py) or use the renderer it records.")


def check_surrogate_clip(surrogate: RenderSurrogate, scorer, where: str = "the surrogate") -> None:
    """Refuse a CLIP model other than the one the surrogate's inputs and targets came from."""
    recorded = surrogate.config.clip or {}
    found = clip_identity(scorer)
    if recorded.get("weights_sha256") != found["weights_sha256"]:
        raise ValueError(f"{where} was fitted with the CLIP model {recorded.get('name')!r} (weights "
                         f"{str(recorded.get('weights_sha256'))[:12]}), but the reward's CLIP is {found['name']!r} "
                         f"(weights {found['weights_sha256'][:12]}): its text inputs and image targets would not match")


def load_render_surrogate(path: str, renderer=None, scorer=None, device=None) -> RenderSurrogate:
    """A fitted surrogate from its folder, checked against ``renderer`` and ``scorer`` when given."""
    if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"render surrogate {path!r}: expected a folder with config.json and "
                                "model.safetensors, written by recipes/fit_reward_surrogate.py")
    with loading_config_field("surrogate_path", path):
        surrogate = RenderSurrogate.from_pretrained(path)
    if surrogate.config.renderer is None or surrogate.config.clip is None:
        raise ValueError(f"render surrogate {path}: its config records no renderer or CLIP model; refit it")
    where = f"the render surrogate {path}"
    if renderer is not None:
        check_surrogate_renderer(surrogate, renderer, where)
    if scorer is not None:
        check_surrogate_clip(surrogate, scorer, where)
    surrogate.eval().requires_grad_(False)
    return surrogate.to(device) if device is not None else surrogate


def surrogate_renderer(surrogate: RenderSurrogate, device=None, **overrides) -> TextToImageRenderer:
    """The renderer a surrogate was fitted on, built from its record (``overrides``: ``batch_size``, ``dtype``, which
    change speed, not the images), and checked against it (weights included)."""
    settings = RendererSettings(**{**surrogate.config.renderer["settings"], **overrides})
    renderer = TextToImageRenderer(device=device, settings=settings)
    check_surrogate_renderer(surrogate, renderer)
    return renderer


class FidelityWindow:
    """The last ``size`` pairs of (surrogate reward, rendered reward) and their agreement."""

    def __init__(self, size: int = 512):
        self.pairs: deque[tuple[float, float]] = deque(maxlen=size)

    def add(self, surrogate_values, rendered_values) -> None:
        self.pairs.extend(zip(np.asarray(surrogate_values, float).tolist(), np.asarray(rendered_values, float).tolist()))

    def __len__(self) -> int:
        return len(self.pairs)

    def summary(self) -> dict[str, float]:
        if not self.pairs:
            return {}
        a, b = np.asarray(self.pairs).T
        return {"pairs": float(len(a)), "spearman": spearman(a, b), "mean_abs_error": float(np.abs(a - b).mean()),
                "mean_error": float((a - b).mean())}
