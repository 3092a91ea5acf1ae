"""The reconstruction recipes' library code end to end on the tiny SimNSD with tiny random models (mechanics)."""

import json
import os

import numpy as np
import pytest
import torch

from fgb2i_hf.pipelines import MindEyeInputs
from fgb2i_hf.drivers.evaluate_reconstructions import EvaluateReconstructionsConfig, evaluate_reconstructions
from fgb2i_hf.drivers.reconstruct import ReconstructConfig, load_images, reconstruct, save_png

SUBJECT = "subj01"


@pytest.fixture(scope="module")
def test_rows(simnsd_dataset):
    rows = simnsd_dataset["test"].filter(lambda s: s == SUBJECT, input_columns="subject")
    return rows.select(range(4))


@pytest.fixture(scope="module")
def stimuli(simnsd_root):
    from fgb2i_hf.data import NSDStimuli

    return NSDStimuli(simnsd_root)


@pytest.fixture(scope="module")
def feature_models():
    from fgb2i_hf.metrics import load_feature_models
    from fgb2i_hf.testing import tiny_clip_scorer

    return load_feature_models(pretrained=False, clip=tiny_clip_scorer())


@pytest.fixture(scope="module")
def mindeye_run(simnsd_root, simnsd_dataset, test_rows, stimuli, tmp_path_factory):
    out = tmp_path_factory.mktemp("mindeye")
    ids = [int(i) for i in test_rows["nsd_id"]]
    generator = torch.Generator().manual_seed(0)
    inputs_path = str(out / "mindeye_inputs.safetensors")
    MindEyeInputs(ids, torch.randn(4, 257, 32, generator=generator), stimuli.get(ids), embed_shape=None).save(inputs_path)
    config = ReconstructConfig(nsd_root=simnsd_root, output_dir=str(out / "run"), base="mindeye", subject=SUBJECT,
                               max_samples=4, batch_size=3, diffusion_model="tiny-random", brain_model="tiny-random",
                               mindeye_inputs=inputs_path, num_inference_steps=4, w=0.5, device="cpu", grid_rows=3)
    summary = reconstruct(config, dataset=simnsd_dataset["test"], stimuli=stimuli, progress=False)
    return config, summary, ids


def test_reconstruct_writes_images_captions_grid_and_settings(mindeye_run):
    config, summary, ids = mindeye_run
    assert summary["images"] == 4 and summary["reconstructed_now"] == 4 and summary["nsd_ids"] == ids
    base = load_images(os.path.join(config.output_dir, "base"), ids)
    fgb2i = load_images(os.path.join(config.output_dir, "fgb2i"), ids)
    assert base.shape == fgb2i.shape == (4, 32, 32, 3) and not np.array_equal(base, fgb2i)
    with open(os.path.join(config.output_dir, "captions.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["nsd_id"] for r in records] == ids and all(isinstance(r["caption"], str) for r in records)
    assert os.path.getsize(os.path.join(config.output_dir, "grid.png")) > 0
    import yaml

    with open(os.path.join(config.output_dir, "reconstruct.yaml")) as f:
        settings = yaml.safe_load(f)
    assert settings["config"]["base"] == "mindeye" and "diffusers" in settings["versions"]


def test_reconstruct_resumes_with_the_same_images(mindeye_run, simnsd_dataset, test_rows, stimuli):
    from fgb2i_hf.data import betas_tensor
    from fgb2i_hf.testing import tiny_brain_prefix_gpt2
    from greedy_helpers import assert_greedy_is_decisive

    config, _, ids = mindeye_run
    folder = os.path.join(config.output_dir, "fgb2i")
    before = load_images(folder, [ids[2]])
    os.remove(os.path.join(folder, f"{ids[2]}.png"))  # as if the run had been killed before this image
    summary = reconstruct(config, dataset=simnsd_dataset["test"], stimuli=stimuli, progress=False)
    assert summary["reconstructed_now"] == 1  # the other three were skipped
    # Rerun alone, not in its batch of 3: other kernels, so floats agree to rounding. The caption (the run's
    # tiny-random brain model) is the same on any CPU as its greedy decoding has no near-tie; the PNG's pixels then
    # differ by at most one level (a value within rounding of a level boundary).
    betas = betas_tensor(test_rows.with_format("numpy", columns=["betas"])[2:3]["betas"])
    brain, tokenizer = tiny_brain_prefix_gpt2({SUBJECT: betas.shape[1]}, seed=config.seed)
    assert_greedy_is_decisive(brain, betas, SUBJECT, tokenizer.eos_token_id)
    again = load_images(folder, [ids[2]])
    assert np.abs(again.astype(int) - before.astype(int)).max() <= 1


def test_reconstruct_needs_mindeye_inputs_and_known_ids(mindeye_run, simnsd_dataset, stimuli, tmp_path):
    config, _, ids = mindeye_run
    from dataclasses import replace

    with pytest.raises(ValueError, match="needs its CLIP-image embeddings"):
        reconstruct(replace(config, mindeye_inputs=None, output_dir=str(tmp_path / "a")),
                    dataset=simnsd_dataset["test"], stimuli=stimuli, progress=False)
    partial = str(tmp_path / "partial.safetensors")
    MindEyeInputs(ids[:2], torch.zeros(2, 257, 32), embed_shape=None).save(partial)
    with pytest.raises(KeyError, match=f"partial.safetensors has no entry for nsd_id {ids[2]} "):  # first batch
        reconstruct(replace(config, mindeye_inputs=partial, output_dir=str(tmp_path / "b")),
                    dataset=simnsd_dataset["test"], stimuli=stimuli, progress=False)


def test_evaluate_reconstructions_table_with_a_perfect_control(mindeye_run, simnsd_root, stimuli, feature_models,
                                                               tmp_path):
    config, _, ids = mindeye_run
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    import PIL.Image

    for i, image in zip(ids, stimuli.get(ids)):
        save_png(PIL.Image.fromarray(image), str(gt_dir / f"{i}.png"))
    output = str(tmp_path / "table")
    rows = evaluate_reconstructions(EvaluateReconstructionsConfig(
        nsd_root=simnsd_root, output=output, baseline="MindEye", feature_models="random",
        reconstructions=[f"MindEye={config.output_dir}/base", f"MindEye + FgB2I={config.output_dir}/fgb2i",
                         f"GT={gt_dir}"]), stimuli=stimuli, feature_models=feature_models, progress=False)
    assert list(rows) == ["MindEye", "MindEye + FgB2I", "GT"] and len(rows["GT"]) == 8
    assert rows["GT"]["PixCorr"] == pytest.approx(1.0) and rows["GT"]["SSIM"] == pytest.approx(1.0)
    assert rows["GT"]["AlexNet(2)"] == 1.0 and rows["GT"]["EffNet-B"] == pytest.approx(0.0, abs=1e-6)
    with open(output + ".json") as f:
        table = json.load(f)
    assert table["baseline"] == "MindEye"
    assert table["deltas"]["GT"]["PixCorr"] == pytest.approx(1.0 - rows["MindEye"]["PixCorr"])
    with open(output + ".md") as f:
        assert f.read().count("\n") == 5  # header, rule, three rows
