"""The NSD builder on SimNSD: round trip against the encoding model, splits, averaging, normalisation, layouts."""

import json
import os

import datasets
import nibabel as nib
import numpy as np
import pytest
import scipy.io
import torch

from fgb2i_hf.data import NSD, NSDPaths, NSDStimuli, load_nsd, voxel_stats
from fgb2i_hf.simnsd import load_simnsd_config, noiseless_response
from brain_diffuser_reference import prepare_nsddata

SUBJECTS = ("subj01", "subj02", "subj05", "subj07")


def _betas(ds) -> np.ndarray:
    return np.stack(ds.with_format("numpy", columns=["betas"])["betas"]).astype(np.float32)


def _subset(ds, subject):
    return ds.select(np.flatnonzero(np.array(ds["subject"]) == subject))


def _row_corr(a, b):
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def _design(root, subject):
    mat = scipy.io.loadmat(NSDPaths(root).expdesign)
    mo = mat["masterordering"].ravel().astype(int)
    row = mat["subjectim"][int(subject[4:]) - 1].astype(int)
    return row[mo - 1] - 1, set(mat["sharedix"].ravel().astype(int) - 1)


def test_rows_match_the_noiseless_response(simnsd_dataset, simnsd_root):
    """Each row's betas correlate with the encoding model's noise-free response for its nsd_id, and not with
    its neighbour's: an off-by-one, a transposed volume or a wrong trial -> image map all fail this."""
    for subject in SUBJECTS:
        stats = voxel_stats(simnsd_dataset, subject)
        for split, min_r in (("train", 0.15), ("test", 0.3)):
            ds = _subset(simnsd_dataset[split], subject)
            x = _betas(ds)
            ids = np.array(ds["nsd_id"])
            clean = stats.normalize(noiseless_response(simnsd_root, subject, ids))
            r = _row_corr(x, clean)
            r_shifted = _row_corr(x, np.roll(clean, 1, axis=0))
            assert r.mean() > min_r, (subject, split, r.mean())
            assert abs(r_shifted.mean()) < 0.05, (subject, split, r_shifted.mean())
            assert (r > r_shifted).mean() > 0.8


def test_split_sizes_and_row_contents(simnsd_dataset, simnsd_root):
    cfg = load_simnsd_config(simnsd_root)
    for subject in SUBJECTS:
        ids, shared = _design(simnsd_root, subject)
        train = _subset(simnsd_dataset["train"], subject)
        validation = _subset(simnsd_dataset["validation"], subject)
        test = _subset(simnsd_dataset["test"], subject)
        n_test_trials = sum(i in shared for i in ids)
        assert len(train) + len(validation) == len(ids) - n_test_trials  # single trials, 5% of the images held out
        assert len(test) == cfg["shared_images"]  # one averaged row per shared image
        assert set(test["nsd_id"]) == shared and not set(train["nsd_id"]) & shared
        assert not set(validation["nsd_id"]) & (shared | set(train["nsd_id"]))
        assert len(set(train["nsd_id"]) | set(validation["nsd_id"])) == cfg["images_per_subject"] - cfg["shared_images"]
        assert {len(b) for b in train.with_format("numpy")["betas"][:5]} == {cfg["voxels"][subject]}
        for row in train.select(range(20)):
            assert ids[row["trials"][0]] == row["nsd_id"] and len(row["trials"]) == 1
    # the test images are the same for every subject, in the same (first-trial) order
    orders = [_subset(simnsd_dataset["test"], subj)["nsd_id"] for subj in SUBJECTS]
    assert all(o == orders[0] for o in orders)
    row = simnsd_dataset["test"][0]
    assert row["subject"] == "subj01" and len(row["captions"]) == 5 and len(row["fine_captions"]) == 1
    assert row["objects"] and all(o in row["fine_captions"][0] for o in row["objects"])
    assert simnsd_dataset["train"].features["betas"] == datasets.List(datasets.Value("float16"))


def test_captions_objects_and_coco_ids_come_from_the_annotation_files(simnsd_dataset, simnsd_root):
    p = NSDPaths(simnsd_root)
    caps, objs, cats = {}, {}, {}
    for split in ("train2017", "val2017"):
        for a in json.load(open(p.captions(split)))["annotations"]:
            caps.setdefault(a["image_id"], []).append(a["caption"])
        inst = json.load(open(p.instances(split)))
        cats.update({c["id"]: c["name"] for c in inst["categories"]})
        for a in inst["annotations"]:
            objs.setdefault(a["image_id"], set()).add(cats[a["category_id"]])
    import pandas as pd
    coco_of = pd.read_csv(p.stim_info, index_col=0)["cocoId"]
    fine = {json.loads(line)["nsd_id"]: json.loads(line)["caption"] for line in open(p.fine_captions)}
    for row in simnsd_dataset["test"].select(range(0, 400, 7)):
        assert row["coco_id"] == coco_of[row["nsd_id"]]
        assert row["captions"] == caps[row["coco_id"]]
        assert set(row["objects"]) == objs[row["coco_id"]]
        assert row["fine_captions"] == [fine[row["nsd_id"]]]


def test_repetition_averaging_against_nibabel(simnsd_root, nsd_cache_dir):
    """Test rows (and averaged train rows) are the mean of the image's trials, read here independently the way
    Brain-Diffuser does: nibabel get_fdata on the .nii.gz, mask > 0, transpose."""
    dd = load_nsd(simnsd_root, subjects=["subj02"], cache_dir=nsd_cache_dir, zscore="none", average_train=True,
                  beta_dtype="float32", betas_format="nii.gz")
    p = NSDPaths(simnsd_root)
    mask = nib.load(p.nsdgeneral("subj02")).get_fdata()
    trials = np.concatenate([nib.load(p.betas("subj02", s, "nii.gz")).get_fdata()[mask > 0].T for s in (1, 2, 3)])
    ids, _ = _design(simnsd_root, "subj02")
    for split in ("test", "train"):
        for row in dd[split].select(range(0, len(dd[split]), 37)):
            expected_trials = np.flatnonzero(ids == row["nsd_id"])
            assert sorted(row["trials"]) == expected_trials.tolist() and len(expected_trials) == 3
            np.testing.assert_allclose(row["betas"], trials[expected_trials].mean(0) / 300, rtol=1e-5, atol=1e-5)


def test_hdf5_and_nifti_give_identical_rows(simnsd_root, nsd_cache_dir):
    a = load_nsd(simnsd_root, subjects=["subj05"], cache_dir=nsd_cache_dir, betas_format="hdf5")
    b = load_nsd(simnsd_root, subjects=["subj05"], cache_dir=nsd_cache_dir, betas_format="nii.gz")
    for split in ("train", "test"):
        # exact by construction: the same int16 values on disk, then the same numpy operations in the same order
        assert np.array_equal(_betas(a[split]), _betas(b[split]))
        assert a[split]["nsd_id"] == b[split]["nsd_id"]


def test_train_statistics_zscore_and_reuse_on_new_data(simnsd_dataset, simnsd_root, nsd_cache_dir):
    raw = load_nsd(simnsd_root, subjects=["subj01"], cache_dir=nsd_cache_dir, zscore="none", beta_dtype="float32")
    z = {split: _subset(simnsd_dataset[split], "subj01") for split in ("train", "test")}
    x_train, x_test = _betas(raw["train"]), _betas(raw["test"])
    mean, std = x_train.mean(0), x_train.std(0, ddof=1)
    # the built rows are (x - train mean) / train std, for train and test alike
    np.testing.assert_allclose(_betas(z["train"]), (x_train - mean) / std, atol=4e-3, rtol=2e-3)
    np.testing.assert_allclose(_betas(z["test"]), (x_test - mean) / std, atol=4e-3, rtol=2e-3)
    assert np.abs(_betas(z["train"]).mean(0)).max() < 0.01
    assert np.abs(_betas(z["test"]).mean(0)).max() > 0.05  # test is not normalised by its own statistics
    # the stored statistics are those, and they carry the same transform to new data
    stats = voxel_stats(simnsd_dataset, "subj01")
    assert stats.zscore == "train" and stats.n_rows == len(x_train)
    np.testing.assert_allclose(stats.mean, mean, atol=1e-4)
    np.testing.assert_allclose(stats.std, std, rtol=1e-4)
    np.testing.assert_allclose(stats.normalize(x_test), _betas(z["test"]), atol=4e-3, rtol=2e-3)
    np.testing.assert_allclose(stats.denormalize(stats.normalize(x_test)), x_test, atol=1e-4)
    assert voxel_stats(raw, "subj01").zscore == "none"
    with pytest.raises(FileNotFoundError, match="subj03"):
        voxel_stats(simnsd_dataset, "subj03")


def test_per_session_zscore(simnsd_root, nsd_cache_dir):
    dd = load_nsd(simnsd_root, subjects=["subj07"], cache_dir=nsd_cache_dir, zscore="session", beta_dtype="float32")
    x = _betas(dd["train"])  # each session's statistics are its training trials' (no test, no validation trial)
    session = np.array([t[0] // 750 for t in dd["train"]["trials"]])
    for s in range(3):
        assert np.abs(x[session == s].mean(0)).max() < 1e-3
        np.testing.assert_allclose(x[session == s].std(0, ddof=1), 1.0, atol=1e-3)
    stats = voxel_stats(dd, "subj07")
    assert stats.zscore == "session" and stats.session_mean.shape == (3, 254)
    with pytest.raises(ValueError, match="session"):
        stats.normalize(x[:2])


def test_sessions_option_uses_the_first_sessions(simnsd_root, nsd_cache_dir):
    dd = load_nsd(simnsd_root, subjects=["subj01"], cache_dir=nsd_cache_dir, sessions=2)
    ids, shared = _design(simnsd_root, "subj01")
    first = ids[:1500]
    assert len(dd["train"]) + len(dd["validation"]) == sum(i not in shared for i in first)
    assert set(dd["test"]["nsd_id"]) == {i for i in first if i in shared}
    assert len(dd["test"]) < len(shared)  # like 37 sessions giving 982 of the 1000 shared images
    assert max(max(t) for t in dd["test"]["trials"]) < 1500


def test_brain_diffuser_layout_gives_the_same_matrices(simnsd_root, nsd_cache_dir, tmp_path):
    """Brain-Diffuser's processed files, written by a faithful reimplementation of its prepare_nsddata.py, build
    the same rows as the raw layout with averaged train rows."""
    processed = tmp_path / "processed_data"
    prepare_nsddata(simnsd_root, "subj01", sessions=2, out_dir=processed)
    bd = load_nsd(simnsd_root, subjects=["subj01"], cache_dir=nsd_cache_dir, layout="brain-diffuser",
                  processed_dir=str(processed))
    raw = load_nsd(simnsd_root, subjects=["subj01"], cache_dir=nsd_cache_dir, sessions=2, average_train=True)
    for split in ("train", "test"):
        assert bd[split]["nsd_id"] == raw[split]["nsd_id"]
        assert bd[split]["trials"] == raw[split]["trials"]
        np.testing.assert_allclose(_betas(bd[split]), _betas(raw[split]), atol=3e-3, rtol=2e-3)
        assert bd[split]["objects"] == raw[split]["objects"]
        assert bd[split]["captions"] == raw[split]["captions"]  # Brain-Diffuser's cap files hold COCO's captions
    # the number of sessions the files came from is inferred; a wrong explicit one is an error
    with pytest.raises(ValueError, match="37 sessions"):
        load_nsd(simnsd_root, subjects=["subj01"], cache_dir=nsd_cache_dir, layout="brain-diffuser",
                 processed_dir=str(processed), sessions=3)
    with pytest.raises(ValueError, match="average"):
        load_nsd(simnsd_root, subjects=["subj01"], cache_dir=nsd_cache_dir, layout="brain-diffuser",
                 processed_dir=str(processed), average_train=False)


def test_direct_builder_use_and_cache_reuse(simnsd_root, nsd_cache_dir):
    builder = NSD(config_name="subj05", data_dir=simnsd_root, cache_dir=nsd_cache_dir, sessions=1)
    builder.download_and_prepare()
    dd = builder.as_dataset()
    assert builder.voxel_stats().n_rows == len(dd["train"])
    assert not [f for f in os.listdir(os.path.dirname(dd["train"].cache_files[0]["filename"])) if "scratch" in f]
    again = NSD(config_name=5, data_dir=simnsd_root, cache_dir=nsd_cache_dir, sessions=1)
    assert again.cache_dir == builder.cache_dir  # same options, same source files: reused
    other = NSD(config_name="subj05", data_dir=simnsd_root, cache_dir=nsd_cache_dir, sessions=2)
    assert other.cache_dir != builder.cache_dir


def test_torch_batches_and_stimuli(simnsd_dataset, simnsd_root):
    ds = _subset(simnsd_dataset["train"], "subj02")
    batch = ds.with_format("torch", columns=["betas"], dtype=torch.float16)[:64]["betas"]
    assert batch.shape == (64, 286) and batch.dtype == torch.float16
    stim = NSDStimuli(simnsd_root)
    ids = ds["nsd_id"][:5]
    images = stim.get(ids)
    assert images.shape == (5, 64, 64, 3) and images.dtype == np.uint8
    assert np.array_equal(images[2], stim[ids[2]])
    assert np.array_equal(stim.get([ids[1], ids[0], ids[1]])[2], images[1])  # any order, repeats
    import pickle

    assert np.array_equal(pickle.loads(pickle.dumps(stim))[ids[0]], images[0])  # reopens in workers
    with pytest.raises(IndexError, match="out of range"):
        stim[len(stim)]


def test_betas_tensor_pads_mixed_subjects(simnsd_dataset):
    from fgb2i_hf.data import betas_tensor

    ds = simnsd_dataset["train"].with_format("numpy", columns=["betas", "subject"])
    same = ds[:8]
    x = betas_tensor(same["betas"])
    assert x.shape == (8, 314) and x.dtype == torch.float32
    assert torch.equal(x, torch.tensor(np.stack(same["betas"]).astype(np.float32)))  # exact: float16 -> 32 casts
    n = len(ds)
    mixed = ds.select([0, n - 1])  # subj01 (314 voxels) and subj07 (254)
    rows = mixed["betas"]
    y = betas_tensor(rows, dtype=torch.float16)
    assert y.shape == (2, 314) and y.dtype == torch.float16 and list(mixed["subject"]) == ["subj01", "subj07"]
    assert torch.equal(y[1, :254], torch.from_numpy(np.asarray(rows[1])).half()) and not y[1, 254:].any()
    assert betas_tensor(same["betas"], pad_to=400).shape == (8, 400)
    with pytest.raises(ValueError, match="shorter"):
        betas_tensor(rows, pad_to=300)
