"""fit_decoders (what recipes/fit_decoders.py runs) on NSD-format rows with tiny random target models."""

import json
import os

import datasets
import numpy as np
import pytest
import torch

from fgb2i_hf.data import DataContract

from fgb2i_hf.decoders import RidgeDecoder
from fgb2i_hf.drivers.fit import FitDecodersConfig, betas_matrix, fit_decoders, load_extractor
from fgb2i_hf.decoders.targets import LDMTargetExtractor

WORDS = ["cat", "dog", "bus", "kite", "tree", "car", "boat", "bird"]


class Stimuli:
    def __init__(self, images):
        self.images, self.reads = images, 0

    def get(self, ids):
        self.reads += 1
        return self.images[np.asarray(ids)]


def nsd_rows(images, voxels={"subj01": 70, "subj02": 50}, seed=0):
    """The agreed row format: two subjects, single-trial train rows (repeats), averaged held-out (validation) rows,
    and a data contract as load_nsd attaches one."""
    rng = np.random.default_rng(seed)
    n = len(images)
    shared, own = np.arange(6), {"subj01": np.arange(6, 20), "subj02": np.arange(14, n)}
    features = images.reshape(n, -1)[:, :200].astype(np.float32) / 255
    splits = {"train": [], "validation": []}
    for subject, v in voxels.items():
        encoding = rng.standard_normal((200, v)).astype(np.float32)
        for split, ids in (("train", np.repeat(own[subject], 2)), ("validation", shared)):
            for nsd_id in ids:
                betas = features[nsd_id] @ encoding + 0.5 * rng.standard_normal(v)
                splits[split].append({"subject": subject, "nsd_id": int(nsd_id), "coco_id": 1000 + int(nsd_id),
                                      "betas": betas.astype(np.float16).tolist(),
                                      "captions": [f"a {WORDS[nsd_id % 8]} near a {WORDS[(nsd_id // 8) % 8]}",
                                                   f"the {WORDS[nsd_id % 8]}"],
                                      "fine_captions": [], "objects": [WORDS[nsd_id % 8]], "trials": [int(nsd_id)]})
    features_spec = datasets.Features({
        "subject": datasets.Value("string"), "nsd_id": datasets.Value("int32"), "coco_id": datasets.Value("int64"),
        "betas": datasets.List(datasets.Value("float16")), "captions": datasets.List(datasets.Value("string")),
        "fine_captions": datasets.List(datasets.Value("string")), "objects": datasets.List(datasets.Value("string")),
        "trials": datasets.List(datasets.Value("int32"))})
    dd = datasets.DatasetDict({split: datasets.Dataset.from_list(r, features=features_spec)
                               for split, r in splits.items()})
    dd.data_contract = DataContract(subjects=tuple(voxels), sessions=1, average_train=False, zscore="train",
                                    validation_fraction=0.05, voxel_mask={s: f"synthetic-{v}" for s, v in voxels.items()},
                                    stats={s: "synthetic" for s in voxels})
    return dd


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).integers(0, 256, (26, 40, 40, 3), dtype=np.uint8)


def config(tmp_path, **overrides):
    settings = dict(nsd_root="unused", output_dir=str(tmp_path / "out"), model_name_or_path="tiny-random",
                    image_size=32, seed=0, device="cpu", subjects=["subj01", "subj02"], cv=3,
                    z_alphas=[1e-1, 1e1, 1e3, 1e5], c_alphas=[1e-1, 1e1, 1e3, 1e5])
    return FitDecodersConfig(**(settings | overrides))


def test_fit_decoders_fits_saves_and_scores_every_subject_and_target(tmp_path, images):
    rows = nsd_rows(images)
    cfg = config(tmp_path)
    stimuli = Stimuli(images)
    metrics = fit_decoders(cfg, dataset=rows, stimuli=stimuli, progress=False)
    out = tmp_path / "out"
    assert set(metrics) == {"subj01", "subj02"} and set(metrics["subj01"]) == {"z", "c"}
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert (out / "fit_decoders.yaml").is_file() and (out / "targets" / "z.npy").is_file()

    # an independent path: the saved tiny models, the known images of each row, a direct fit
    extractor = LDMTargetExtractor.from_pretrained(str(out / "target_models"), device="cpu")
    for subject, v in (("subj01", 70), ("subj02", 50)):
        train = rows["train"].filter(lambda r: r["subject"] == subject)
        test = rows["validation"].filter(lambda r: r["subject"] == subject)
        # the sampled posterior is seeded by nsd_id, so read the images by id
        z_train = extractor.extract("z", images=Stimuli(images), ids=train["nsd_id"], progress=False)
        direct = RidgeDecoder(num_voxels=v, target_shape=z_train.shape[1:], alphas=cfg.z_alphas, cv=3).fit(
            betas_matrix(train), z_train, progress=False)
        saved = RidgeDecoder.from_pretrained(str(out / subject / "z"))
        assert saved.config.subject == subject and saved.config.target_name == "z"
        test_betas = betas_matrix(test)
        torch.testing.assert_close(saved.predict(test_betas), direct.predict(test_betas), rtol=1e-4, atol=1e-4)
        c = RidgeDecoder.from_pretrained(str(out / subject / "c"))
        assert c.target_shape == (77, 32)
        assert metrics[subject]["z"]["validation"]["n_test"] == 6


def test_targets_are_extracted_once_and_reused(tmp_path, images):
    rows = nsd_rows(images)
    stimuli = Stimuli(images)
    fit_decoders(config(tmp_path, targets=["z"]), dataset=rows, stimuli=stimuli, progress=False)
    # all 26 images of both subjects (6 shared) in batches of 16: 2 reads
    assert stimuli.reads == 2
    cached = np.load(tmp_path / "out" / "targets" / "z.npy")
    assert cached.shape == (26, 4, 16, 16)
    fit_decoders(config(tmp_path, targets=["z"], cv=4), dataset=rows, stimuli=stimuli, progress=False)
    assert stimuli.reads == 2  # same ids and models: the cache is reused


def test_brain_diffuser_base_single_alpha_and_bad_requests(tmp_path, images):
    rows = nsd_rows(images)
    cfg = config(tmp_path, base="brain_diffuser", subjects=["subj02"], clip_text_alphas=[1e5])
    metrics = fit_decoders(cfg, dataset=rows, stimuli=Stimuli(images), progress=False)
    text = RidgeDecoder.from_pretrained(str(tmp_path / "out" / "subj02" / "clip_text"))
    assert text.target_shape == (77, 32) and torch.all(text.alpha == 1e5)
    vision = RidgeDecoder.from_pretrained(str(tmp_path / "out" / "subj02" / "clip_vision"))
    assert vision.target_shape == (65, 32)
    # Brain-Diffuser's rescale gives the predictions the training targets' spread: it changes the R2, not the r
    test = metrics["subj02"]["clip_vision"]
    assert test["validation_rescaled"]["column_r"] == pytest.approx(test["validation"]["column_r"], abs=1e-4)

    with pytest.raises(ValueError, match="not 'z'"):
        fit_decoders(config(tmp_path, base="brain_diffuser", targets=["z"]), dataset=rows,
                     stimuli=Stimuli(images), progress=False)
    with pytest.raises(ValueError, match="no train rows for subj03"):
        fit_decoders(config(tmp_path, subjects=["subj03"]), dataset=rows, stimuli=Stimuli(images), progress=False)


def test_recipe_parses_yaml_and_cli(tmp_path):
    from trl import TrlParser

    for name in ("decoders_ldm_nsd.yaml", "decoders_brain_diffuser_nsd.yaml", "decoders_sim_tiny.yaml"):
        path = os.path.join(os.path.dirname(__file__), "..", "recipes", "configs", name)
        (cfg,) = TrlParser((FitDecodersConfig,)).parse_args_and_config(
            ["--config", path, "--output_dir", str(tmp_path), "--cv", "4"])
        assert cfg.output_dir == str(tmp_path) and cfg.cv == 4
        assert cfg.spec.targets and all(isinstance(a, float) for target in cfg.spec.targets
                                        for a in cfg.alphas_for(target.name))
    assert cfg.model_name_or_path == "tiny-random"
    assert isinstance(load_extractor(cfg), LDMTargetExtractor)


@pytest.mark.slow
def test_recipe_on_simnsd_end_to_end(simnsd_root, nsd_cache_dir, tmp_path, capsys):
    """recipes/fit_decoders.py with the SimNSD config: load_nsd, NSDStimuli, tiny models, two targets."""
    import importlib.util

    from fgb2i_hf.data import NSDStimuli, load_nsd

    spec = importlib.util.spec_from_file_location(
        "fit_decoders_recipe", os.path.join(os.path.dirname(__file__), "..", "recipes", "fit_decoders.py"))
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    config_path = os.path.join(os.path.dirname(__file__), "..", "recipes", "configs", "decoders_sim_tiny.yaml")
    out = tmp_path / "decoders"
    recipe.main(["--config", config_path, "--nsd_root", simnsd_root, "--output_dir", str(out),
                 "--cache_dir", nsd_cache_dir, "--subjects", "subj01", "--max_train_rows", "300"])
    assert "subj01   z" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    rows = load_nsd(simnsd_root, subjects=["subj01"], cache_dir=nsd_cache_dir)
    rows["train"] = rows["train"].select(range(300))
    for target in ("z", "c"):
        decoder = RidgeDecoder.from_pretrained(str(out / "subj01" / target))
        assert decoder.config.num_voxels == len(rows["train"][0]["betas"])
        assert metrics["subj01"][target]["validation"]["n_test"] == len(rows["validation"])
        assert metrics["subj01"][target]["fit"]["n_train"] == 300
    # the cached z targets are the tiny VAE's latents of the very images NSDStimuli serves
    ids = np.load(out / "targets" / "z.npy", mmap_mode="r").shape[0]
    assert ids == len(set(rows["train"]["nsd_id"]) | set(rows["validation"]["nsd_id"]))
    extractor = LDMTargetExtractor.from_pretrained(str(out / "target_models"), device="cpu")
    first = sorted(set(rows["train"]["nsd_id"]) | set(rows["validation"]["nsd_id"]))[:2]
    np.testing.assert_allclose(np.load(out / "targets" / "z.npy")[:2],
                               extractor.extract("z", images=NSDStimuli(simnsd_root), ids=first, progress=False),
                               atol=1e-5)
