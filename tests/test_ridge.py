"""RidgeDecoder: planted linear maps, alpha selection, agreement with himalaya / scikit-learn, save/load, errors."""

import json
import os

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from fgb2i_hf.decoders import RidgeDecoder

ALPHAS = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6]


def planted(n=300, v=500, t=40, latent=8, noise=None, seed=0):
    """Betas and targets that share a latent scene code: X = Z A + e, Y = Z B + noise (known ceiling)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, latent))
    x = z @ rng.standard_normal((latent, v)) + 2.0 * rng.standard_normal((n, v))
    signal = z @ rng.standard_normal((latent, t))
    noise = np.full(t, 1.0) if noise is None else np.asarray(noise, float)
    y = signal + noise * rng.standard_normal((n, t)) + 3.0  # a non-zero mean: the intercept matters
    return x.astype(np.float32), y.astype(np.float32), signal.astype(np.float32)


def column_corr(a, b):
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))


def fit(x, y, **kwargs):
    kwargs.setdefault("alphas", ALPHAS)
    return RidgeDecoder(num_voxels=x.shape[1], target_shape=y.shape[1:], **kwargs).fit(x, y, progress=False)


def test_recovers_planted_linear_map_near_noise_ceiling():
    x, y, signal = planted(n=600, noise=np.linspace(0.5, 3.0, 40))
    train, test = slice(0, 400), slice(400, 600)
    decoder = fit(x[train], y[train].reshape(-1, 5, 8))
    pred = decoder.predict(x[test])
    assert pred.shape == (200, 5, 8) and pred.dtype == torch.float32
    pred = pred.reshape(200, -1).numpy()
    # the ceiling: how well the noiseless signal itself correlates with the noisy held-out targets
    ceiling = column_corr(signal[test], y[test])
    achieved = column_corr(pred, y[test])
    assert np.all(achieved > 0.85 * ceiling), (achieved / ceiling).min()
    assert column_corr(pred, signal[test]).mean() > 0.93
    # chance control: the same decoder on shuffled held-out rows predicts nothing
    shuffled = column_corr(pred[np.random.default_rng(1).permutation(200)], y[test])
    assert abs(shuffled.mean()) < 0.1


def test_cross_validation_picks_larger_alpha_for_noisier_targets():
    noise = np.repeat([0.2, 1.0, 5.0, 25.0], 10)
    x, y, _ = planted(noise=noise)
    decoder = fit(x, y)
    log_alpha = np.log10(decoder.alpha.numpy())
    medians = [np.median(log_alpha[i : i + 10]) for i in range(0, 40, 10)]
    assert medians == sorted(medians) and medians[-1] >= medians[0] + 2, medians
    # the summary counts every target once and the CV R^2 falls with the noise
    assert sum(decoder.config.fit_summary["alpha_counts"].values()) == 40
    r2 = decoder.cv_r2.numpy()
    assert r2[:10].mean() > 0.8 > r2[30:].mean()


@pytest.mark.parametrize("n, v", [(200, 320), (320, 120)])  # kernel path (N <= V) and primal path (N > V)
def test_per_target_alphas_match_himalaya_ridgecv_and_shared_alpha_is_one_value(n, v):
    """The exact call Takagi's code makes — StandardScaler then himalaya RidgeCV — gives the same alphas."""
    from himalaya.backend import set_backend
    from himalaya.ridge import RidgeCV

    x, y, _ = planted(n=n, v=v, noise=np.repeat([0.3, 3.0, 30.0], [14, 13, 13]))
    per_target = fit(x, y, alpha_per_target=True)
    shared = fit(x, y, alpha_per_target=False)
    xs = (x - x.mean(0)) / x.std(0)
    yc = y - y.mean(0)
    previous = set_backend("torch")
    try:
        for decoder, local in ((per_target, True), (shared, False)):
            ref = RidgeCV(alphas=np.float32(ALPHAS), solver_params=dict(local_alpha=local, warn=False))
            ref.fit(torch.from_numpy(xs), torch.from_numpy(yc))
            np.testing.assert_allclose(decoder.alpha.numpy(), ref.best_alphas_.numpy(), rtol=1e-5)
            ref_pred = ref.predict(torch.from_numpy(xs)).numpy() + y.mean(0)
            np.testing.assert_allclose(decoder.predict(x).numpy(), ref_pred, atol=2e-4 * np.abs(ref_pred).max())
    finally:
        set_backend(previous)
    assert len(np.unique(shared.alpha.numpy())) == 1
    assert len(np.unique(per_target.alpha.numpy())) > 1
    # per target, the chosen alpha is the best on the same folds: never worse than the shared one
    assert np.all(per_target.cv_r2.numpy() >= shared.cv_r2.numpy() - 1e-6)


def test_single_alpha_equals_scikit_learn_ridge_with_intercept():
    """One alpha, no CV: Brain-Diffuser's call (sklearn Ridge(alpha, fit_intercept=True) on z-scored betas)."""
    from sklearn.linear_model import Ridge

    x, y, _ = planted(n=200, v=300, t=12)
    decoder = fit(x, y, alphas=[6e4])
    xs = (x - x.mean(0)) / x.std(0)
    ref = Ridge(alpha=6e4, fit_intercept=True).fit(xs.astype(np.float64), y.astype(np.float64))
    x_new = planted(n=50, v=300, t=12, seed=3)[0]
    ref_pred = ref.predict((x_new - x.mean(0)) / x.std(0))
    np.testing.assert_allclose(decoder.predict(x_new).numpy(), ref_pred, rtol=1e-4, atol=1e-4)
    assert torch.all(decoder.alpha == 6e4) and torch.isnan(decoder.cv_r2).all()


def test_more_rows_than_voxels_stores_one_weight_matrix_and_uncentred_mode():
    """N > V: primal storage. center_targets=False is Takagi's fit_intercept=False: no intercept at all."""
    x, y, signal = planted(n=400, v=60, t=10)
    y_before = y.copy()
    decoder = fit(x, y, center_targets=False)
    np.testing.assert_array_equal(y, y_before)  # the caller's targets are regressed, never overwritten
    assert decoder.config.rank is None and decoder.basis is None and decoder.coef.shape == (60, 10)
    assert torch.all(decoder.intercept == 0)
    # centred betas cannot produce the targets' mean of 3 without an intercept
    assert abs(decoder.predict(x).mean().item()) < 1e-3
    assert fit(x, y).predict(x).mean().item() == pytest.approx(float(y.mean()), abs=1e-3)


def test_brain_diffuser_rescale_matches_training_statistics():
    x, y, _ = planted(n=300, v=200, t=6)
    decoder = fit(x[:200], y[:200], alphas=[1e5])
    plain = decoder.predict(x[200:])
    rescaled = decoder.predict(x[200:], rescale=True)
    np.testing.assert_allclose(rescaled.mean(0).numpy(), y[:200].mean(0), atol=1e-4)
    np.testing.assert_allclose(rescaled.std(0, correction=0).numpy(), y[:200].std(0), rtol=1e-4)
    # a per-column affine map of the plain predictions: correlations unchanged
    np.testing.assert_allclose(column_corr(rescaled.numpy(), plain.numpy()), 1.0, atol=1e-5)
    assert plain.std(0).mean() < 0.8 * rescaled.std(0).mean()  # ridge shrinks; the rescale undoes it
    with pytest.raises(ValueError, match="at least 2 rows"):
        decoder.predict(x[:1], rescale=True)


def test_memmapped_targets_fit_like_in_memory(tmp_path):
    x, y, _ = planted(n=150, v=200, t=30)
    path = tmp_path / "y.npy"
    np.save(path, y.reshape(150, 3, 10))
    from_disk = RidgeDecoder(num_voxels=200, target_shape=(3, 10), alphas=ALPHAS).fit(
        x, np.load(path, mmap_mode="r"), progress=False, block_bytes=150 * 4 * 7)  # 7-column blocks
    in_memory = fit(x, y.reshape(150, 3, 10))
    # a choice on a grid a decade apart: here the best and next alpha's CV errors differ by >= 4 % (float64), far
    # beyond the rounding of other block sizes, so the choice is exact
    assert torch.equal(from_disk.alpha, in_memory.alpha)
    torch.testing.assert_close(from_disk.predict(x), in_memory.predict(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n, v, t", [(40, 300, 400), (300, 30, 24)])
def test_save_load_round_trip_identical_predictions(tmp_path, n, v, t):
    x, y, _ = planted(n=n, v=v, t=t)
    decoder = fit(x, y.reshape(n, 4, -1), subject="subj01", target_name="c", cv=3)
    # storage: B (V x k) and C (k x T) when k (V + T) < V T (NSD: k = 8,859 images < V), else one V x T matrix
    assert (decoder.config.rank is not None) == (n * (v + t) < v * t)
    decoder.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    loaded = RidgeDecoder.from_pretrained(str(tmp_path))
    # bit-identical weights, but reloaded at other memory alignments, so BLAS may pick other kernels: to rounding
    torch.testing.assert_close(loaded.predict(x), decoder.predict(x), rtol=1e-5, atol=1e-5)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(json.loads(decoder.to_json_string()))
    assert loaded.config.subject == "subj01" and loaded.config.rank == decoder.config.rank


def test_diffusers_pipeline_round_trip(tmp_path):
    """A DiffusionPipeline holding a RidgeDecoder saves it into a subfolder and reloads it by class."""

    class DecodePipeline(DiffusionPipeline):
        def __init__(self, decoder: RidgeDecoder):
            super().__init__()
            self.register_modules(decoder=decoder)

        def __call__(self, betas):
            return self.decoder(betas)

    x, y, _ = planted(n=80, v=120, t=8)
    pipe = DecodePipeline(fit(x, y.reshape(80, 2, 4), cv=3))
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["decoder"] == ["fgb2i_hf.decoders.ridge", "RidgeDecoder"]
    assert (tmp_path / "decoder" / "model.safetensors").is_file()
    loaded = DecodePipeline.from_pretrained(tmp_path)
    assert isinstance(loaded.decoder, RidgeDecoder)
    torch.testing.assert_close(loaded(x), pipe(x), rtol=1e-5, atol=1e-5)  # reloaded weights: equal to rounding
    as_double = DecodePipeline.from_pretrained(tmp_path, dtype=torch.float64)
    assert as_double.decoder.coef.dtype == torch.float64
    torch.testing.assert_close(as_double(x).float(), pipe(x), rtol=1e-4, atol=1e-4)


def test_himalaya_backend_is_restored_even_after_an_error():
    from himalaya.backend import get_backend, set_backend

    previous = set_backend("numpy")
    try:
        x, y, _ = planted(n=60, v=40, t=3)
        fit(x, y, cv=3)
        assert get_backend().name == "numpy"
        y[5, 1] = np.nan
        with pytest.raises(ValueError, match=r"targets contain NaN.*\[5\]"):
            fit(x, y, cv=3)
        assert get_backend().name == "numpy"
    finally:
        set_backend(previous)


def test_bad_input_gives_clear_errors(tmp_path):
    x, y, _ = planted(n=60, v=40, t=6)
    decoder = RidgeDecoder(num_voxels=40, target_shape=(2, 3), alphas=ALPHAS, cv=3, subject="subj02")
    with pytest.raises(RuntimeError, match="not fitted"):
        decoder.predict(x)
    with pytest.raises(ValueError, match="60 rows but targets have 59"):
        decoder.fit(x, y[:59], progress=False)
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        decoder.fit(x, y[:, :5], progress=False)
    with pytest.raises(ValueError, match="configured for num_voxels=40"):
        decoder.fit(x[:, :39], y, progress=False)
    bad = x.copy()
    bad[[3, 7], 2] = np.nan
    with pytest.raises(ValueError, match=r"betas contain NaN.*\[3, 7\]"):
        decoder.fit(bad, y, progress=False)
    with pytest.raises(ValueError, match="too few"):
        decoder.fit(x[:5], y[:5], progress=False)
    with pytest.raises(ValueError, match="positive"):
        RidgeDecoder(num_voxels=40, target_shape=(6,), alphas=[0.0, 1.0])

    decoder.fit(x, y, progress=False)
    with pytest.raises(ValueError, match=r"subj02 must have shape \(N, 40\).*got \(60, 39\)"):
        decoder.predict(x[:, :39])
    with pytest.raises(ValueError, match=r"betas\[None\]"):
        decoder.predict(x[0])
    with pytest.raises(ValueError, match=r"NaN or inf.*\[3, 7\]"):
        decoder.predict(bad)
    with pytest.raises(ValueError, match="fitted on subj02, not subj01"):
        decoder.predict(x, subject="subj01")

    # files from two different fits, or missing, are refused
    decoder.save_pretrained(tmp_path / "a")
    fit(x, y.reshape(60, 2, 3), cv=3).save_pretrained(tmp_path / "b")
    os.replace(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    with pytest.raises(ValueError, match="different fits"):
        RidgeDecoder.from_pretrained(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        RidgeDecoder.from_pretrained(tmp_path / "b")
    with pytest.raises(OSError, match="neither a local folder"):
        RidgeDecoder.from_pretrained("nobody/no-such-decoder")
    with pytest.raises(TypeError, match="unexpected"):
        RidgeDecoder.from_pretrained(tmp_path / "a", colour="blue")
