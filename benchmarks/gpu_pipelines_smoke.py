"""Device smoke check of the FgB2I pipelines on tiny random models (CUDA when there, else CPU).

Checks what must hold on any device and exits non-zero otherwise:

* LDM ``w = 0`` equals diffusers' ``StableDiffusionImg2ImgPipeline`` bit for bit, in float32 and in half
  precision (float16; CUDA only: half-precision matmuls on a CPU are ~300x slower than float32);
* both fusion modes run with one CUDA generator per image and give finite images on the device;
* a save / ``FgB2IPipeline.from_pretrained`` round trip on the device gives identical images;
* ``enable_model_cpu_offload()`` (CUDA only) gives the same images as the pipeline on the GPU;
* Brain-Diffuser and MindEye (``MindEyeInputs`` on the CPU) run on the device in float32 and (CUDA) float16.

It prints the spread between CPU and device images and, for reference, diffusers' own half-vs-float32
spread on the same random model (random tiny models are far more precision-sensitive than trained ones).

    python benchmarks/gpu_pipelines_smoke.py [--device auto]

Seen on an NVIDIA H100 (torch 2.11, diffusers 0.42.1): all checks pass; LDM CPU vs CUDA max |diff| 7e-4,
MindEye 5e-4; diffusers' fp16 vs fp32 spread on the tiny model 0.86 (ours equals diffusers in fp16 exactly).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

FAILURES = []
CAPTIONS = ["a small brown dog on a bench", "a red bus on a street"]


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"[{'ok' if ok else 'FAIL'}] {name} {detail}", flush=True)
    if not ok:
        FAILURES.append(name)


def gen(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device).manual_seed(seed)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    half = torch.float16 if device == "cuda" else None  # no half precision on a CPU: ~300x slower than float32
    dtypes = (torch.float32, half) if half is not None else (torch.float32,)
    from diffusers import StableDiffusionImg2ImgPipeline

    from fgb2i_hf.pipelines import FgB2ILDMPipeline, FgB2IPipeline, FgB2IVersatileDiffusionPipeline, MindEyeInputs
    from fgb2i_hf.testing import tiny_sd_components, tiny_vd_components

    print(f"device {device} ({torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu'}), torch {torch.__version__}")
    z = torch.randn(2, 4, 16, 16, generator=gen(1))
    c = torch.randn(2, 77, 32, generator=gen(2))
    kwargs = dict(base_latents=z, base_embeds=c, num_inference_steps=10, output_type="np")

    # LDM against diffusers, float32 and half precision
    spread = {}
    for dtype in dtypes:
        components = tiny_sd_components()
        ours = FgB2ILDMPipeline(**components).to(device, dtype)
        reference = StableDiffusionImg2ImgPipeline(**components, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False).to(device, dtype)
        for p in (ours, reference):
            p.set_progress_bar_config(disable=True)
        a = ours(w=0.0, generator=gen(3), **kwargs).images
        b = reference(prompt_embeds=c.to(device, dtype), image=z.to(device, dtype), strength=0.8, guidance_scale=5.0,
                      num_inference_steps=10, generator=gen(3), output_type="np").images
        spread[dtype] = b
        check(f"LDM w=0 equals diffusers img2img ({dtype})", np.array_equal(a, b), f"max|diff| {np.abs(a - b).max():.3g}")
    if half is not None:
        print(f"       diffusers' own {half} vs float32 spread on this random model: "
              f"{np.abs(spread[half] - spread[torch.float32]).max():.3g}")

    pipe = FgB2ILDMPipeline(**tiny_sd_components()).to(device)
    pipe.set_progress_bar_config(disable=True)
    for fusion in ("average", "guidance"):
        out = pipe(w=0.5, fusion=fusion, captions=CAPTIONS, generator=[gen(5, device), gen(6, device)],
                   **{**kwargs, "output_type": "pt"})
        check(f"LDM {fusion} with device generators", bool(torch.isfinite(out.images).all())
              and out.images.device.type == device, f"{tuple(out.images.shape)} on {out.images.device}")
    on_device = pipe(w=0.5, captions=CAPTIONS, generator=gen(3), **kwargs).images
    cpu = FgB2ILDMPipeline(**tiny_sd_components())
    cpu.set_progress_bar_config(disable=True)
    on_cpu = cpu(w=0.5, captions=CAPTIONS, generator=gen(3), **kwargs).images
    check("LDM CPU vs device", np.abs(on_cpu - on_device).max() < 1e-2, f"max|diff| {np.abs(on_cpu - on_device).max():.3g}")
    with tempfile.TemporaryDirectory() as folder:
        pipe.save_pretrained(folder)
        loaded = FgB2IPipeline.from_pretrained(folder).to(device)
        loaded.set_progress_bar_config(disable=True)
        again = loaded(w=0.5, captions=CAPTIONS, generator=gen(3), **kwargs).images
        check("save / FgB2IPipeline.from_pretrained on the device", type(loaded) is FgB2ILDMPipeline
              and np.array_equal(again, on_device))
    if device == "cuda":
        offloaded = FgB2ILDMPipeline(**tiny_sd_components())
        offloaded.set_progress_bar_config(disable=True)
        offloaded.enable_model_cpu_offload()
        o = offloaded(w=0.5, captions=CAPTIONS, generator=gen(3), **kwargs).images
        check("model CPU offload", np.abs(o - on_device).max() < 1e-5, f"max|diff| {np.abs(o - on_device).max():.3g}")

    # Versatile Diffusion bases
    text, vision = torch.randn(2, 77, 32, generator=gen(7)), torch.randn(2, 257, 32, generator=gen(8))
    image = torch.rand(2, 3, 32, 32, generator=gen(9))
    for dtype in dtypes:
        bd = FgB2IVersatileDiffusionPipeline(**tiny_vd_components(), base="brain_diffuser").to(device, dtype)
        bd.set_progress_bar_config(disable=True)
        for w, fusion in ((0.0, "average"), (0.5, "average"), (0.5, "guidance")):
            o = bd(base_text_embeds=text, base_vision_embeds=vision, image=image, w=w, fusion=fusion,
                   captions=CAPTIONS, num_inference_steps=8, generator=gen(3), output_type="np").images
            check(f"Brain-Diffuser {dtype} w={w} {fusion}", bool(np.isfinite(o).all()))
    inputs = MindEyeInputs([10, 20], vision, image, embed_shape=(257, 32))
    results = {}
    for where in ("cpu", device):
        me = FgB2IVersatileDiffusionPipeline(**tiny_vd_components(), base="mindeye").to(where)
        me.set_progress_bar_config(disable=True)
        results[where] = me(mindeye_inputs=inputs, nsd_ids=[10, 20], w=0.0, num_inference_steps=8, generator=gen(3),
                            output_type="np").images
    gap = np.abs(results["cpu"] - results[device]).max()
    check("MindEye (inputs on the CPU) CPU vs device", gap < 1e-2, f"max|diff| {gap:.3g}")
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed: {FAILURES}")
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
