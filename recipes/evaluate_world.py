"""Print the figures of the shipped SimNSD world (or of any folder of world components) and draw its figures.

    python recipes/evaluate_world.py
    python recipes/evaluate_world.py --world /tmp/world --diffusion_images 20 --figure_dir /tmp/world_figures

Simulates the tiny SimNSD (seed 0, the one the world was trained on) in ``work_dir`` unless ``--nsd_root`` is
given, loads each component by name (``simnsd/clip`` ...) and prints CLIP image -> caption retrieval (top-1 /
top-5 against chance), GPT-2 held-out perplexity, the diffusion model's background accuracy and CLIP two-way
identification, and the LDM base's test correlations. With ``--figure_dir``, writes ``world_retrieval.png`` and
``world_samples.png`` there; with ``--output_json``, the figures.
"""

import os
from dataclasses import dataclass, field

from trl import TrlParser

from fgb2i_hf.clip import CLIPScorer
from fgb2i_hf.core import atomic_write_json, resolve_pretrained
from fgb2i_hf.simnsd.world.data import load_world_data, simulate_world_nsd
from fgb2i_hf.simnsd.world.diffusion import sample_grid
from fgb2i_hf.simnsd.world.evaluate import evaluate_world, retrieval_figure


@dataclass
class EvaluateWorldConfig:
    world: str = field(default="simnsd/", metadata={
        "help": "'simnsd/' (the shipped world) or a folder holding clip/, gpt2/, diffusion/, ldm_base/."})
    nsd_root: str | None = field(default=None, metadata={
        "help": "SimNSD to evaluate on (default: simulate the tiny one, seed 0, in work_dir/simnsd)."})
    work_dir: str = field(default="world_work", metadata={"help": "Where the SimNSD and its dataset cache go."})
    diffusion_images: int = field(default=100, metadata={"help": "Test images the diffusion model draws."})
    num_inference_steps: int = field(default=25, metadata={"help": "Diffusion sampling steps."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    figure_dir: str | None = field(default=None, metadata={"help": "Write the retrieval figure and sample grid here."})
    output_json: str | None = field(default=None, metadata={"help": "Write the figures as JSON here."})


def lines(figures: dict) -> list[str]:
    out = []
    for kind, m in figures["clip"].items():
        out.append(f"simnsd/clip image->caption among the {m['captions']} test {kind}: "
                   f"top-1 {m['image_to_caption_top1']:.3f} (chance {m['image_to_caption_top1_chance']:.3f}), "
                   f"top-5 {m['image_to_caption_top5']:.3f} (chance {m['image_to_caption_top5_chance']:.3f}); "
                   f"caption->image top-1 {m['caption_to_image_top1']:.3f} (chance {m['caption_to_image_chance']:.3f})")
    g = figures["gpt2"]
    out.append(f"simnsd/gpt2 held-out perplexity {g['test_perplexity']:.3f} (COCO-like "
               f"{g['test_perplexity_coco_captions']:.3f}, fine {g['test_perplexity_fine_captions']:.3f}; "
               f"vocabulary {g['vocab_size']})")
    out.append("simnsd/diffusion " + ", ".join(f"{k} {v}" for k, v in figures["diffusion"].items()))
    for subject, targets in figures["ldm_base"].items():
        out.append(f"simnsd/ldm_base {subject}: " + ", ".join(
            f"{t} validation column r {v['validation_column_r']:.3f}, image r {v['validation_image_r']:.3f}"
            for t, v in targets.items()))
    return out


def main(argv=None):
    (config,) = TrlParser((EvaluateWorldConfig,)).parse_args_and_config(argv)

    nsd_root = config.nsd_root or simulate_world_nsd(os.path.join(config.work_dir, "simnsd"), 0)
    cache_dir = os.path.join(config.work_dir, "datasets_cache")
    figures = evaluate_world(nsd_root, cache_dir=cache_dir, prefix=config.world,
                             diffusion_images=config.diffusion_images, seed=config.seed,
                             num_inference_steps=config.num_inference_steps)
    print("\n".join(lines(figures)))
    if config.figure_dir:
        # imported here: diffusers is a heavy import, needed only on this path
        from diffusers import DiffusionPipeline

        def path(component):
            return resolve_pretrained(config.world + component) if config.world == "simnsd/" \
                else os.path.join(config.world, component)

        os.makedirs(config.figure_dir, exist_ok=True)
        test = load_world_data(nsd_root, cache_dir=cache_dir).test
        retrieval_figure(CLIPScorer.from_pretrained(path("clip")), test,
                         os.path.join(config.figure_dir, "world_retrieval.png"))
        sample_grid(DiffusionPipeline.from_pretrained(path("diffusion")), test,
                    os.path.join(config.figure_dir, "world_samples.png"), seed=config.seed,
                    num_inference_steps=config.num_inference_steps)
    if config.output_json:
        atomic_write_json(config.output_json, figures, indent=1)
    return figures


if __name__ == "__main__":
    main()
