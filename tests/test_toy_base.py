"""A fourth base method defined here alone — its spec, its target extractor, its settings — runs through
fit_decoders -> reconstruct -> compare_bases with no edit anywhere else (the base-spec contract, docs/architecture.md).

The toy base "blurred_ldm" is LDM-shaped (Stable Diffusion backbone, img2img from a ridge-predicted latent) but differs
from LDM everywhere a spec can: its latent target is the VAE posterior mean of a box-blurred stimulus (its own
TargetExtractor), it fits on repetition-averaged rows, it rescales its predictions over the split, its img2img
settings and its label are its own. Mechanics only: tiny random models.
"""

import os

import numpy as np
import pytest
import torch

from fgb2i_hf.decoders.targets import LDMTargetExtractor
from fgb2i_hf.drivers.compare import CompareBasesConfig, compare_bases
from fgb2i_hf.drivers.fit import FitDecodersConfig, fit_decoders
from fgb2i_hf.drivers.reconstruct import ReconstructConfig, reconstruct
from fgb2i_hf.pipelines.bases import STABLE_DIFFUSION, BaseSpec, TargetSource, TargetSpec, register_base, unregister_base

SUBJECT = "subj01"
NAME = "blurred_ldm"


class BlurredLatentExtractor(LDMTargetExtractor):
    """``z``: the VAE posterior mean of the stimulus box-blurred with a 5 px kernel; ``c`` as LDM's."""

    base = NAME

    def encode_images(self, name, images, keys):
        x = torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float()
        x = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
        blurred = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return super().encode_images(name, blurred, keys)


def tiny_blurred_extractor(model_seed=0, **kwargs):
    from fgb2i_hf.tiny import tiny_ldm_extractor

    tiny = tiny_ldm_extractor(model_seed=model_seed, **kwargs)
    return BlurredLatentExtractor(tiny.vae, tiny.tokenizer, tiny.text_encoder, image_size=tiny.image_size,
                                  latent_sampling="mean", seed=tiny.seed, name_or_path=tiny.name_or_path)


TOY = BaseSpec(
    name=NAME,
    label="Blurred LDM",
    reference="a test's toy base",
    backbone=STABLE_DIFFUSION,
    scheduler="ddim",
    targets=(TargetSpec("z", component="z_decoder", argument="base_latents", alphas=(1.0, 100.0)),
             TargetSpec("c", component="c_decoder", argument="base_embeds", alphas=(10.0,))),
    target_sources={"backbone": TargetSource(load=BlurredLatentExtractor.from_pretrained, tiny=tiny_blurred_extractor,
                                             config_fields=("image_size",))},
    average_train=True,
    rescale_predictions=True,
    pipeline_settings={"strength": 0.6, "guidance_scale": 3.0, "num_inference_steps": 5},
)


@pytest.fixture(scope="module")
def toy_base():
    register_base(TOY)
    yield TOY
    unregister_base(NAME)


@pytest.fixture(scope="module")
def toy_decoders(toy_base, simnsd_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("toy_decoders"))
    config = FitDecodersConfig(nsd_root=simnsd_root, output_dir=out, base=NAME, subjects=[SUBJECT],
                               model_name_or_path="tiny-random", image_size=32, seed=0, device="cpu",
                               extraction_batch_size=64, cv=2,
                               cache_dir=str(tmp_path_factory.mktemp("toy_hf_datasets")))
    metrics = fit_decoders(config, progress=False)
    return out, metrics


def test_fit_reads_the_spec(toy_decoders, simnsd_root):
    from fgb2i_hf.data import load_nsd
    from fgb2i_hf.decoders import RidgeDecoder

    out, metrics = toy_decoders
    assert set(metrics[SUBJECT]) == {"z", "c"}
    z = RidgeDecoder.from_pretrained(os.path.join(out, SUBJECT, "z"))
    c = RidgeDecoder.from_pretrained(os.path.join(out, SUBJECT, "c"))
    assert set(z.config.fit_summary["alpha_counts"]) == {"1", "100"}  # the toy's grids, not LDM's
    assert set(c.config.fit_summary["alpha_counts"]) == {"10"}
    # average_train=True: one training row per image (the builder's averaged rows), not one per trial
    averaged = load_nsd(simnsd_root, subjects=[SUBJECT], average_train=True)["train"]
    assert z.config.fit_summary["n_train"] == len(averaged)
    # the toy's own target: the blurred stimulus's latent, not LDM's
    with open(os.path.join(out, "targets", "z.npy.json")) as f:
        assert '"base": "blurred_ldm"' in f.read()


def test_reconstruct_and_compare_run_the_toy_base(toy_decoders, simnsd_root, simnsd_dataset, tmp_path):
    from fgb2i_hf.data import NSDStimuli
    from fgb2i_hf.metrics import load_feature_models
    from fgb2i_hf.testing import tiny_clip_scorer

    decoders, _ = toy_decoders
    common = dict(nsd_root=simnsd_root, subject=SUBJECT, max_samples=3, batch_size=3, brain_model="tiny-random",
                  device="cpu", w=0.5)
    run = ReconstructConfig(output_dir=str(tmp_path / "reconstruct"), base=NAME, diffusion_model="tiny-random",
                            decoders_dir=decoders, encoders_from=os.path.join(decoders, "target_models"), **common)
    summary = reconstruct(run, dataset=simnsd_dataset["test"], progress=False)
    assert summary["images"] == 3 and summary["reconstructed_now"] == 3
    assert sorted(os.listdir(tmp_path / "reconstruct" / "base")) == sorted(f"{i}.png" for i in summary["nsd_ids"])

    config = CompareBasesConfig(output_dir=str(tmp_path / "compare"), bases=[NAME], sd_model="tiny-random",
                                base_options={NAME: {"decoders_dir": decoders,
                                                     "encoders_from": os.path.join(decoders, "target_models")}},
                                feature_models="random", **common)
    models = load_feature_models(pretrained=False, clip=tiny_clip_scorer())
    result = compare_bases(config, dataset=simnsd_dataset["test"], stimuli=NSDStimuli(simnsd_root),
                           feature_models=models, progress=False)
    assert list(result["rows"]) == ["Blurred LDM", "Blurred LDM + FgB2I"]
    assert all(len(values) == 8 for values in result["rows"].values())


def test_the_pipeline_carries_the_toy_settings(toy_base):
    from fgb2i_hf.pipelines import build_pipeline

    pipe = build_pipeline(NAME, "tiny-random", brain_model=None)
    assert pipe.config.base == NAME and pipe.config.settings == TOY.pipeline_settings
    assert pipe.setting("strength") == 0.6 and pipe.setting("strength", 0.9) == 0.9
