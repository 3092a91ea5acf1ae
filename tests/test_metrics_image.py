"""Image-reconstruction metrics: MindEye's definitions, known answers, random-weight networks, bad input."""

import numpy as np
import pytest
import scipy.stats
import torch
from torchvision import transforms

from fgb2i_hf.clip import CLIPScorer
from fgb2i_hf.metrics import (load_feature_models, load_swav_state_dict, mean_correlation_distance, pixcorr,
                              reconstruction_metrics, ssim, two_way_identification)
from fgb2i_hf.metrics.feature_models import swav_resnet50
from fgb2i_hf.metrics.image import to_256

TINY_CLIP = dict(embed_dim=16, vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
                 text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))


def images(n, size=48, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32))


# -- PixCorr / SSIM ---------------------------------------------------------------------------------------
def test_identical_images_score_pixcorr_and_ssim_one():
    x = images(3)
    assert pixcorr(x, x) == pytest.approx(1.0, abs=1e-12)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-6)


def test_pixcorr_and_ssim_follow_mindeye_code():
    """A direct transcription of MindEye's evaluation steps (transforms.Resize objects, np.corrcoef per image)."""
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity

    gt, rec = images(3, 64, seed=1), images(3, 40, seed=2) * 0.5 + 0.25
    gt256 = transforms.Resize((256, 256), antialias=False)(gt).float()
    rec256 = transforms.Resize((256, 256), antialias=False)(rec).float()
    resize425 = transforms.Resize(425, interpolation=transforms.InterpolationMode.BILINEAR, antialias=False)
    gt_flat, rec_flat = resize425(gt256).reshape(3, -1), resize425(rec256).reshape(3, -1)
    expected_pix = np.mean([np.corrcoef(gt_flat[i], rec_flat[i])[0][1] for i in range(3)])
    gt_gray = rgb2gray(resize425(gt256).permute((0, 2, 3, 1)).numpy())
    rec_gray = rgb2gray(resize425(rec256).permute((0, 2, 3, 1)).numpy())
    expected_ssim = np.mean([structural_similarity(r, g, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                                   data_range=1.0, channel_axis=None)
                             for g, r in zip(gt_gray, rec_gray)])
    assert pixcorr(gt, rec) == pytest.approx(expected_pix, abs=1e-9)
    assert ssim(gt, rec) == pytest.approx(expected_ssim, abs=1e-9)
    # Anticorrelated images: PixCorr -1.
    assert pixcorr(gt, 1 - gt) == pytest.approx(-1.0, abs=1e-9)


def test_image_formats_agree():
    from PIL import Image

    u8 = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    as_float = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255
    pil = [Image.fromarray(a) for a in u8]
    assert pixcorr(u8, pil) == pytest.approx(1.0) and pixcorr(as_float, u8) == pytest.approx(1.0)


@pytest.mark.parametrize("gt, pred, message", [
    (images(2), images(3), "2 ground-truth images but 3 reconstructions"),
    (images(2).permute(0, 2, 3, 1), images(2), r"gt_images: float images must be \(N, 3, H, W\)"),
    (images(2), images(2) * 255, r"pred_images: float images must lie in \[0, 1\]"),
    (images(2), torch.full((2, 3, 8, 8), float("nan")), "pred_images holds NaN"),
    (images(2), torch.zeros(2, 3, 8, 8, dtype=torch.int64), "expected float images"),
    (images(2), torch.zeros(2, 3, 8, 8, dtype=torch.uint8), r"uint8 images must be \(N, H, W, 3\)"),
    ("x", images(2), "gt_images must be a float"),
])
def test_bad_image_input(gt, pred, message):
    with pytest.raises(ValueError, match=message):
        pixcorr(gt, pred)


# -- two-way identification and correlation distance --------------------------------------------------------
def two_way_loop(gt, pred):
    """The formula written out: recon i beats distractor j != i when r(gt_j, pred_i) < r(gt_i, pred_i)."""
    n = len(gt)
    r = [[scipy.stats.pearsonr(gt[j], pred[i])[0] for i in range(n)] for j in range(n)]
    beaten = [sum(r[j][i] < r[i][i] for j in range(n) if j != i) for i in range(n)]
    return sum(beaten) / n / (n - 1)


def test_two_way_equals_the_loop_formula_on_random_features():
    rng = np.random.default_rng(4)
    gt = rng.normal(size=(9, 30))
    pred = gt + rng.normal(scale=4.0, size=gt.shape)
    score = two_way_identification(gt, pred)
    assert score == pytest.approx(two_way_loop(gt, pred), abs=1e-12)
    assert 0.5 < score < 1.0  # signal, but not perfect
    # Features of any shape are flattened per image; torch tensors work too.
    assert two_way_identification(torch.from_numpy(gt.reshape(9, 5, 6)), pred.reshape(9, 3, 10)) == score


def test_two_way_planted_ordering_gives_known_score():
    """Orthonormal zero-mean gt features e_k (so Pearson r = cosine); recon i = e_i + 2 * sum_{k in B_i} e_k makes
    exactly the |B_i| distractors in B_i correlate better than the truth: recon i beats N - 1 - |B_i|."""
    n, d = 6, 40
    rng = np.random.default_rng(5)
    raw = rng.normal(size=(d, n))
    raw -= raw.mean(axis=0, keepdims=True)  # columns orthogonal to the all-ones vector ...
    e = np.linalg.qr(raw)[0].T  # ... so the orthonormal basis of their span has zero-mean rows
    blockers = {0: [], 1: [0], 2: [0, 1, 3], 3: [], 4: [5, 0, 1, 2, 3], 5: [2]}
    pred = np.stack([e[i] + 2 * sum((e[k] for k in blockers[i]), np.zeros(d)) for i in range(n)])
    expected = np.mean([n - 1 - len(blockers[i]) for i in range(n)]) / (n - 1)
    assert two_way_identification(e, pred) == pytest.approx(expected)
    assert expected == pytest.approx(2 / 3)  # (5 + 4 + 2 + 5 + 0 + 4) / 6 / 5
    assert two_way_identification(e, e) == 1.0
    everyone_blocks = np.stack([e[i] + 2 * (e.sum(axis=0) - e[i]) for i in range(n)])
    assert two_way_identification(e, everyone_blocks) == 0.0


def test_mean_correlation_distance_is_one_minus_r():
    rng = np.random.default_rng(6)
    gt, pred = rng.normal(size=(4, 12)), rng.normal(size=(4, 12))
    expected = np.mean([1 - scipy.stats.pearsonr(g, p)[0] for g, p in zip(gt, pred)])
    assert mean_correlation_distance(gt, pred) == pytest.approx(expected, abs=1e-12)
    assert mean_correlation_distance(gt, 3 * gt + 1) == pytest.approx(0.0, abs=1e-12)
    assert mean_correlation_distance(gt, -gt) == pytest.approx(2.0, abs=1e-12)


def test_bad_feature_input():
    with pytest.raises(ValueError, match="same shape"):
        two_way_identification(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="at least 2 images"):
        two_way_identification(np.ones((1, 4)), np.ones((1, 4)))
    with pytest.raises(ValueError, match="one row per image"):
        mean_correlation_distance(np.zeros(4), np.zeros(4))


# -- reconstruction_metrics with random-weight networks ---------------------------------------------------------
@pytest.fixture(scope="module")
def random_models():
    torch.manual_seed(0)
    return load_feature_models(pretrained=False, clip=CLIPScorer.from_config(TINY_CLIP))


def test_identical_sets_score_perfectly(random_models):
    x = images(2, 32, seed=7)  # few, small images: random-weight InceptionV3 at 342 px is slow on CPU
    out = reconstruction_metrics(x, x.clone(), random_models, progress=False)
    assert list(out) == ["PixCorr", "SSIM", "AlexNet(2)", "AlexNet(5)", "InceptionV3", "CLIP", "EffNet-B", "SwAV"]
    assert out["PixCorr"] == pytest.approx(1.0) and out["SSIM"] == pytest.approx(1.0, abs=1e-6)
    for column in ("AlexNet(2)", "AlexNet(5)", "InceptionV3", "CLIP"):
        assert out[column] == 1.0, column
    assert out["EffNet-B"] == pytest.approx(0.0, abs=1e-6) and out["SwAV"] == pytest.approx(0.0, abs=1e-6)


def test_feature_columns_equal_direct_computation_and_batching(random_models):
    gt, pred = images(3, 32, seed=8), images(3, 48, seed=9)
    chosen = ["AlexNet(5)", "CLIP", "SwAV", "PixCorr"]
    out = reconstruction_metrics(gt, pred, random_models, metrics=chosen, batch_size=2, progress=False)
    assert list(out) == ["PixCorr", "AlexNet(5)", "CLIP", "SwAV"]
    gt256, pred256 = to_256(gt), to_256(pred)
    alex_g, alex_p = random_models["alexnet"](gt256), random_models["alexnet"](pred256)
    clip_g, clip_p = random_models["clip"](gt256)[None], random_models["clip"](pred256)[None]
    swav_g, swav_p = random_models["swav"](gt256)["avgpool"], random_models["swav"](pred256)["avgpool"]
    assert alex_g["features.11"].shape == (3, 256 * 15 * 15) and swav_g.shape == (3, 2048)
    assert out["AlexNet(5)"] == pytest.approx(two_way_identification(alex_g["features.11"], alex_p["features.11"]))
    assert out["CLIP"] == pytest.approx(two_way_identification(clip_g, clip_p))
    assert out["SwAV"] == pytest.approx(mean_correlation_distance(swav_g, swav_p), abs=1e-5)
    assert out["PixCorr"] == pytest.approx(pixcorr(gt, pred))


def test_reconstruction_metrics_bad_arguments(random_models):
    x = images(2, 16)
    with pytest.raises(ValueError, match=r"lacks \['inception'\]"):
        reconstruction_metrics(x, x, {"alexnet": random_models["alexnet"]}, metrics=["AlexNet(2)", "InceptionV3"])
    with pytest.raises(ValueError, match="unknown or no reconstruction metrics"):
        reconstruction_metrics(x, x, random_models, metrics=["FID"])
    with pytest.raises(ValueError, match="at least 2 images"):
        reconstruction_metrics(x[:1], x[:1], random_models, metrics=["CLIP"])
    with pytest.raises(ValueError, match="pretrained=False needs a CLIPScorer"):
        load_feature_models(["clip"], pretrained=False)


# -- SwAV weights from local files ----------------------------------------------------------------------------
def test_swav_weights_load_from_safetensors_and_torch_files(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    source = swav_resnet50(pretrained=False).state_dict()
    # SwAV's checkpoint layout: DataParallel "module." prefixes, its projection head and prototypes, no fc.
    checkpoint = {f"module.{k}": v for k, v in source.items() if not k.startswith("fc.")}
    checkpoint["module.projection_head.0.weight"] = torch.zeros(8, 2048)
    checkpoint["module.prototypes.weight"] = torch.zeros(3, 8)
    save_file(checkpoint, str(tmp_path / "swav.safetensors"))
    torch.save(checkpoint, tmp_path / "swav_800ep_pretrain.pth.tar")
    for name in ("swav.safetensors", "swav_800ep_pretrain.pth.tar"):
        loaded = swav_resnet50(str(tmp_path / name)).state_dict()
        # exact: stored bits read back
        differing = [k for k, v in loaded.items() if not k.startswith("fc.") and not torch.equal(v, source[k])]
        assert not differing, f"{name}: {differing[:3]}"
    assert "conv1.weight" in load_swav_state_dict(str(tmp_path / "swav.safetensors"))

    del checkpoint["module.layer4.2.conv3.weight"]
    save_file(checkpoint, str(tmp_path / "broken.safetensors"))
    with pytest.raises(ValueError, match=r"broken.safetensors: not a SwAV ResNet-50 checkpoint: 1 backbone"):
        swav_resnet50(str(tmp_path / "broken.safetensors"))


class Payload:
    """An arbitrary Python object inside a checkpoint: loading it would need unpickling."""


def test_swav_loader_never_unpickles_objects(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1), "extra": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_swav_state_dict(str(tmp_path / "evil.pth"))
    with pytest.raises(FileNotFoundError, match="SwAV weights not found"):
        load_swav_state_dict(str(tmp_path / "missing.pth"))
