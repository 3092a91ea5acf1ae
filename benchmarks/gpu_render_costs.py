"""Per-render cost of the image-image reward's renderers on an accelerator, and the hours they give the paper's stage 2.

No weights are downloaded: each renderer is built from its published architecture with random weights (the cost of a
forward pass does not depend on the weights), in float16, through the same ``TextToImageRenderer`` the reward uses:

* ``renderer``  — SD v1.x shape (UNet 320-640-1280-1280, CLIP ViT-L/14 text, the SD VAE), DDIM, ``--render-steps``
  with classifier-free guidance 7.5: the paper's kind of renderer (``RENDERER_PRESETS["renderer"]``);
* ``lcm-lora``  — the same shape with ``LCMScheduler``, 4 steps, no guidance (a fused LoRA costs nothing at run time);
* ``sd-turbo``  — SD 2.1 shape (linear-projection attention, head dims 5-10-20-20, OpenCLIP ViT-H text), 1 step,
  no guidance (``RENDERER_PRESETS["distilled"]``);

plus the reward's CLIP ViT-L/14 image embedding of each rendering and the surrogate's cost per sample. Prints ms per
image at each batch size and the hours of the paper's stage 2 image-image reward (``--samples``: 4 subjects x
24,980 training trials x 10 epochs x K = 4 = 3,996,800 sampled captions, every one rendered — the render cache
rarely hits at temperature 1) for each option, and for the surrogate (``--fit-captions`` renders once, then
``--check-fraction`` of the samples).

``--estimate`` measures nothing: it counts each option's floating-point operations per image on the meta device
(``torch.utils.flop_counter``: UNet evaluations, VAE decoding, CLIP image embedding, surrogate) and converts them
to time at the throughput implied by a published measurement (``--calibration-seconds`` for ``--calibration-steps``
guided steps of SD v1.x at 512 px, batch 1; default: 1.604 s for 50 steps on an A100 80 GB with diffusers, torch
2.1, SDPA — github.com/fal-ai/stable-diffusion-benchmarks). Those hours are estimates; the GPU run measures them.

    python benchmarks/gpu_render_costs.py                          # on the GPU (cuda), 512 px, batches 1, 8, 32
    python benchmarks/gpu_render_costs.py --estimate               # no GPU: FLOP counts -> estimated hours
    python benchmarks/gpu_render_costs.py --device cpu --size 128 --batch-sizes 1 --repeats 1   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from fgb2i_hf.core import atomic_write_json

PAPER_SAMPLES = 4 * 24_980 * 10 * 4  # subjects x training trials (37 sessions) x epochs x K
FIT_CAPTIONS = 8_859 * 6  # training images x (5 COCO + 1 fine caption)


def sd_components(kind: str, size: int):
    """(UNet, text-encoder config, VAE) of the published shape, random weights on the current default device:
    'sd1' (SD v1.x) or 'sd2' (SD 2.1 / SD-Turbo)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    if kind == "sd1":
        unet = UNet2DConditionModel(sample_size=size // 8, cross_attention_dim=768, attention_head_dim=8)
        text = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                              hidden_act="quick_gelu", max_position_embeddings=77, vocab_size=49408)
    else:
        unet = UNet2DConditionModel(sample_size=size // 8, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                                    use_linear_projection=True)
        text = CLIPTextConfig(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
                              hidden_act="gelu", max_position_embeddings=77, vocab_size=49408)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                        sample_size=size)
    return unet, text, vae


def sd_pipeline(kind: str, size: int, dtype, device):
    """A random-weight text-to-image pipeline of the published shape (:func:`sd_components`)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    from fgb2i_hf.tiny import tiny_clip_tokenizer

    unet, text, vae = sd_components(kind, size)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1,
                              timestep_spacing="trailing" if kind == "sd2" else "leading")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=CLIPTextModel(text), tokenizer=tiny_clip_tokenizer(),
                                   unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    return pipe.to(device, dtype)


def options_of(render_steps: int) -> dict[str, tuple[str, dict]]:
    """The renderers compared: name -> (shape, TextToImageRenderer settings)."""
    return {
        "renderer": ("sd1", dict(num_inference_steps=render_steps, guidance_scale=7.5)),
        "lcm-lora": ("sd1", dict(num_inference_steps=4, guidance_scale=1.0, scheduler="LCMScheduler")),
        "sd-turbo": ("sd2", dict(num_inference_steps=1, guidance_scale=0.0)),
    }


def unet_evaluations(settings: dict) -> int:
    """UNet evaluations per image: one per step, two with classifier-free guidance (> 1)."""
    return settings["num_inference_steps"] * (2 if settings["guidance_scale"] > 1 else 1)


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def estimate(args) -> dict:
    """FLOPs per image of each option (meta device: nothing is computed) and the hours they give at the throughput
    implied by the calibration measurement."""
    import open_clip

    from fgb2i_hf.models import RenderSurrogate, RenderSurrogateConfig

    latent = args.size // 8
    with torch.device("meta"):
        parts = {kind: sd_components(kind, args.size) for kind in ("sd1", "sd2")}
        clip = open_clip.create_model("ViT-L-14-quickgelu", pretrained=None, device="meta")
        surrogate = RenderSurrogate(RenderSurrogateConfig(text_dim=768, image_dim=768))
        flops = {}
        for kind, (unet, text, vae) in parts.items():
            flops[f"unet {kind}"] = count_flops(lambda: unet(torch.randn(1, 4, latent, latent), torch.tensor([10]),
                                                             torch.randn(1, 77, text.hidden_size)))
        flops["vae decode"] = count_flops(lambda: parts["sd1"][2].decode(torch.randn(1, 4, latent, latent)))
        flops["clip image"] = count_flops(lambda: clip.encode_image(torch.randn(1, 3, 224, 224)))
        flops["surrogate"] = count_flops(lambda: surrogate(torch.randn(1, 768)))
    calibration_flops = args.calibration_steps * 2 * flops["unet sd1"] + flops["vae decode"]
    throughput = calibration_flops / args.calibration_seconds  # FLOP/s achieved in the published measurement
    per_image = {name: unet_evaluations(settings) * flops[f"unet {shape}"] + flops["vae decode"] + flops["clip image"]
                 for name, (shape, settings) in options_of(args.render_steps).items()}
    ms = {name: 1000 * f / throughput for name, f in per_image.items()}
    hours = {name: args.samples * m / 3.6e6 for name, m in ms.items()}
    fit = args.fit_captions * ms["renderer"] / 3.6e6
    check = args.check_fraction * args.samples * ms["renderer"] / 3.6e6
    surrogate_ms = 1000 * flops["surrogate"] / throughput  # its text embedding is clip_text_image's, shared
    hours["surrogate"] = fit + check + args.samples * surrogate_ms / 3.6e6
    result = {"settings": vars(args), "gflops": {k: v / 1e9 for k, v in flops.items()},
              "gflops_per_image": {k: v / 1e9 for k, v in per_image.items()},
              "calibration_tflops_per_s": throughput / 1e12, "estimated_ms_per_image": ms,
              "estimated_stage2_image_reward_hours": hours,
              "surrogate_hours_split": {"fit_renders": fit, "checks": check}}
    print(f"FLOPs per evaluation at {args.size} px (GFLOP): " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in flops.items()))
    print(f"calibration: {args.calibration_steps} guided steps + decode = {calibration_flops / 1e12:.1f} TFLOP in "
          f"{args.calibration_seconds} s -> {throughput / 1e12:.1f} TFLOP/s achieved")
    print(f"\nESTIMATED hours of the paper's stage 2 image-image reward ({args.samples:,} sampled captions, one GPU):")
    for name, h in hours.items():
        cost = f"{per_image[name] / 1e9:7.0f} GFLOP, {ms[name]:6.1f} ms per image" if name in ms else \
            f"{fit:.1f} h fitting renders + {check:.1f} h checks of {args.check_fraction:.0%}"
        print(f"  {name:9s} {h:8.1f} h   ({cost})")
    atomic_write_json(args.output, result)
    return result


def main(argv=None) -> dict:
    import open_clip

    from fgb2i_hf.clip import CLIPScorer
    from fgb2i_hf.models import RenderSurrogate, RenderSurrogateConfig
    from fgb2i_hf.rewards import TextToImageRenderer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--render-steps", type=int, default=4, help="steps of the 'renderer' option (the preset's: 4)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per setting (after one warm-up)")
    p.add_argument("--samples", type=int, default=PAPER_SAMPLES)
    p.add_argument("--fit-captions", type=int, default=FIT_CAPTIONS)
    p.add_argument("--check-fraction", type=float, default=0.01)
    p.add_argument("--output", default="outputs/gpu_render_costs.json")
    p.add_argument("--estimate", action="store_true", help="count FLOPs instead of timing (no GPU needed)")
    p.add_argument("--calibration-seconds", type=float, default=1.604,
                   help="published seconds per image of SD v1.x, 512 px, batch 1, guided (fal-ai benchmark, A100)")
    p.add_argument("--calibration-steps", type=int, default=50)
    args = p.parse_args(argv)
    if args.estimate:
        return estimate(args)
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)

    def timed(fn, batch):
        fn(batch)
        sync()
        start = time.perf_counter()
        for _ in range(args.repeats):
            fn(batch)
        sync()
        return 1000 * (time.perf_counter() - start) / (args.repeats * len(batch))

    clip_model = open_clip.create_model("ViT-L-14-quickgelu", pretrained=None)
    scorer = CLIPScorer(clip_model, open_clip.get_tokenizer("ViT-L-14-quickgelu"), 224).to(device)
    surrogate = RenderSurrogate(RenderSurrogateConfig(text_dim=768, image_dim=768)).to(device).eval()
    options = options_of(args.render_steps)
    prompts = [f"a photo of {i} red buses parked next to a tall building on a rainy street" for i in range(64)]
    result = {"settings": {**vars(args), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
                           else "cpu", "dtype": str(dtype)}, "ms_per_image": {}}
    for name, (shape, settings) in options.items():
        pipe = sd_pipeline(shape, args.size, dtype, device)
        renderer = TextToImageRenderer(pipe, pretrained=f"random {shape}-shaped", height=args.size, width=args.size,
                                       batch_size=max(int(b) for b in args.batch_sizes.split(",")), **settings)
        result["ms_per_image"][name] = {}
        for b in (int(b) for b in args.batch_sizes.split(",")):
            ms = timed(lambda batch, r=renderer: scorer.encode_images(r.render(batch)), prompts[:b])
            result["ms_per_image"][name][b] = ms
            print(f"{name:9s} batch {b:3d}: {ms:8.1f} ms per image (render + CLIP image)", flush=True)
        del pipe, renderer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    b = max(int(b) for b in args.batch_sizes.split(","))
    with torch.no_grad():
        text = scorer.encode_text(prompts[:b])
        surrogate_ms = timed(lambda batch: surrogate(scorer.encode_text(batch)), prompts[:b])
    result["ms_per_sample_surrogate"] = surrogate_ms
    hours = {name: args.samples * ms[b] / 3.6e6 for name, ms in result["ms_per_image"].items()}
    fit = args.fit_captions * result["ms_per_image"]["renderer"][b] / 3.6e6
    check = args.check_fraction * args.samples * result["ms_per_image"]["renderer"][b] / 3.6e6
    hours["surrogate"] = fit + check + args.samples * surrogate_ms / 3.6e6
    result["stage2_image_reward_hours"] = hours
    result["surrogate_hours_split"] = {"fit_renders": fit, "checks": check}
    print(f"\nthe paper's stage 2 image-image reward, {args.samples:,} sampled captions, batch {b}, one device:")
    for name, h in hours.items():
        print(f"  {name:9s} {h:8.1f} h")
    print(f"  (surrogate: {fit:.1f} h fitting renders, {check:.1f} h checks of {args.check_fraction:.0%}; "
          f"{surrogate_ms:.3f} ms per sample; text {tuple(text.shape)})")
    atomic_write_json(args.output, result)
    return result


if __name__ == "__main__":
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(key, "1")
    main(sys.argv[1:])
