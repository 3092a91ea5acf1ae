"""compare_bases end to end on the tiny SimNSD: ridge decoders fitted on tiny random target models, all three
bases computing every input from betas (Brain-Diffuser's VDVAE stage, MindEye's model), base vs FgB2I, one table
(mechanics only: random models everywhere)."""

import json
import os
from dataclasses import replace

import pytest

from fgb2i_hf.drivers.compare import CompareBasesConfig, compare_bases

SUBJECT = "subj01"


@pytest.fixture(scope="module")
def decoders(simnsd_root, simnsd_dataset, tmp_path_factory):
    from fgb2i_hf.drivers.fit import FitDecodersConfig, fit_decoders

    out = tmp_path_factory.mktemp("decoders")
    dirs = {}
    for base in ("ldm", "brain_diffuser"):
        config = FitDecodersConfig(nsd_root=simnsd_root, output_dir=str(out / base), base=base, subjects=[SUBJECT],
                                   model_name_or_path="tiny-random", image_size=32, seed=0, device="cpu",
                                   extraction_batch_size=64, max_train_rows=300, cv=2,
                                   **{f"{t}_alphas": [1.0, 100.0] for t in ("z", "c", "clip_text", "clip_vision")})
        fit_decoders(config, dataset=simnsd_dataset, progress=False)
        dirs[base] = str(out / base)
    return dirs


@pytest.fixture(scope="module")
def comparison(simnsd_root, simnsd_dataset, decoders, tmp_path_factory):
    from fgb2i_hf.data import NSDStimuli
    from fgb2i_hf.metrics import load_feature_models
    from fgb2i_hf.testing import tiny_clip_scorer

    config = CompareBasesConfig(
        nsd_root=simnsd_root, output_dir=str(tmp_path_factory.mktemp("compare")), subject=SUBJECT, max_samples=4,
        batch_size=4, brain_model="tiny-random", sd_model="tiny-random", vd_model="tiny-random",
        ldm_decoders_dir=decoders["ldm"], ldm_encoders_from=os.path.join(decoders["ldm"], "target_models"),
        brain_diffuser_decoders_dir=decoders["brain_diffuser"],
        brain_diffuser_encoders_from=os.path.join(decoders["brain_diffuser"], "target_models"),
        mindeye_model="tiny-random", num_inference_steps=4, w=0.5, device="cpu", feature_models="random")
    models = load_feature_models(pretrained=False, clip=tiny_clip_scorer())
    result = compare_bases(config, dataset=simnsd_dataset["test"], stimuli=NSDStimuli(simnsd_root),
                           feature_models=models, progress=False)
    return config, result


def test_one_table_of_eight_metrics_for_three_bases_with_and_without_fgb2i(comparison):
    config, result = comparison
    names = ["LDM", "LDM + FgB2I", "Brain-Diffuser", "Brain-Diffuser + FgB2I", "MindEye", "MindEye + FgB2I"]
    assert list(result["rows"]) == names
    assert all(len(values) == 8 for values in result["rows"].values())
    for base in ("LDM", "Brain-Diffuser", "MindEye"):
        delta = result["deltas"][f"{base} + FgB2I"]
        assert delta["SSIM"] == pytest.approx(result["rows"][f"{base} + FgB2I"]["SSIM"] - result["rows"][base]["SSIM"])
    lines = result["table"].splitlines()
    assert len(lines) == 2 + 6 and lines[3].startswith("| LDM + FgB2I |") and "(" in lines[3] and "(" not in lines[2]
    with open(os.path.join(config.output_dir, "comparison.md")) as f:
        text = f.read()
    assert "random weights" in text
    with open(os.path.join(config.output_dir, "comparison.json")) as f:
        record = json.load(f)
    assert record["pairs"]["MindEye + FgB2I"] == "MindEye"
    assert all(record["images"][b] == 4 for b in ("ldm", "brain_diffuser", "mindeye"))


def test_the_bases_compute_their_low_level_images_from_betas(comparison):
    """Brain-Diffuser decodes its ridge-predicted VDVAE latents (the tiny VDVAE: 16 px), MindEye its model's blurry
    latents (the tiny VAE: 8 px); both are saved beside the reconstructions; LDM has no low-level stage."""
    from fgb2i_hf.drivers.reconstruct import load_images

    config, result = comparison
    ids = result["summaries"]["ldm"]["nsd_ids"]
    assert load_images(os.path.join(config.output_dir, "brain_diffuser", "low_level"), ids).shape == (4, 16, 16, 3)
    assert load_images(os.path.join(config.output_dir, "mindeye", "low_level"), ids).shape == (4, 8, 8, 3)
    assert not os.path.exists(os.path.join(config.output_dir, "ldm", "low_level"))


def test_mindeye_without_its_model_or_inputs_is_refused(comparison, simnsd_dataset):
    config, _ = comparison
    with pytest.raises(ValueError, match="mindeye base needs its CLIP-image embeddings"):
        compare_bases(replace(config, bases=["mindeye"], mindeye_model=None, output_dir=config.output_dir + "_no_me"),
                      dataset=simnsd_dataset["test"], progress=False)

def test_a_saved_pipeline_with_ridge_decoders_loads_in_a_fresh_process(decoders, simnsd_dataset, tmp_path):
    """FgB2IPipeline.from_pretrained imports the RidgeDecoder module named in model_index.json (diffusers won't)."""
    import subprocess
    import sys

    import numpy as np
    import torch

    from fgb2i_hf.pipelines import build_pipeline

    rows = simnsd_dataset["test"].filter(lambda s: s == SUBJECT, input_columns="subject").select(range(2))
    betas = np.stack([np.asarray(b, np.float32) for b in rows.with_format("numpy")["betas"]])
    np.save(tmp_path / "betas.npy", betas)
    d = decoders["ldm"]
    pipe = build_pipeline("ldm", "tiny-random", brain_model="tiny-random", voxel_counts={SUBJECT: betas.shape[1]},
                          decoders={"z_decoder": f"{d}/{SUBJECT}/z", "c_decoder": f"{d}/{SUBJECT}/c"},
                          encoders_from=f"{d}/target_models")
    pipe.set_progress_bar_config(disable=True)
    call = dict(w=0.5, num_inference_steps=3, output_type="np")
    out = pipe(torch.from_numpy(betas), SUBJECT, generator=torch.Generator().manual_seed(0), **call)
    assert out.base_embeds.shape == (2, 77, 32)
    pipe.save_pretrained(tmp_path / "pipe")
    np.save(tmp_path / "images.npy", out.images)
    code = f"""
import sys, numpy as np, torch
from fgb2i_hf.pipelines import FgB2IPipeline
pipe = FgB2IPipeline.from_pretrained({str(tmp_path / 'pipe')!r})
pipe.set_progress_bar_config(disable=True)
out = pipe(torch.from_numpy(np.load({str(tmp_path / 'betas.npy')!r})), {SUBJECT!r}, w=0.5, num_inference_steps=3,
           output_type="np", generator=torch.Generator().manual_seed(0))
print(type(pipe.z_decoder).__name__, float(np.abs(out.images - np.load({str(tmp_path / 'images.npy')!r})).max()))
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": root})
    assert result.returncode == 0, result.stderr[-2000:]
    name, difference = result.stdout.split()[-2:]
    # another process with reloaded weights (other alignment, so maybe other kernels): the same images to rounding
    assert name == "RidgeDecoder" and float(difference) <= 1e-4, result.stdout[-500:]
