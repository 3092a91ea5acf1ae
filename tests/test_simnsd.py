"""SimNSD is written in NSD's raw layout, its scenes and captions agree, and its encoding model is what it says."""

import hashlib
import json
import os

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.io
from safetensors.numpy import load_file

from fgb2i_hf.captions.objects import caption_objects
from fgb2i_hf.data import NSDPaths
from fgb2i_hf.simnsd import load_scenes, load_simnsd_config, noiseless_response, simulate_nsd
from fgb2i_hf.data.coco import COCO_CATEGORIES
from fgb2i_hf.simnsd.scenes import COLOURS, VOCABULARY, Scene, SceneObject, draw_scene

SUBJECTS = ("subj01", "subj02", "subj05", "subj07")


def test_raw_layout_files_and_shapes(simnsd_root):
    p = NSDPaths(simnsd_root)
    cfg = load_simnsd_config(simnsd_root)
    mat = scipy.io.loadmat(p.expdesign)
    n_img, n_shared = cfg["images_per_subject"], cfg["shared_images"]
    assert mat["masterordering"].shape == (1, cfg["sessions"] * 750)
    assert mat["subjectim"].shape == (8, n_img)
    assert mat["sharedix"].shape == (1, n_shared)
    mo, sim, shared = mat["masterordering"].ravel().astype(int), mat["subjectim"].astype(int), mat["sharedix"].ravel().astype(int)
    assert mo.min() == 1 and mo.max() == n_img  # 1-based
    assert np.bincount(mo)[1:].tolist() == [3] * n_img  # every image 3 times
    for s in SUBJECTS:
        row = sim[int(s[4:]) - 1]
        assert row.min() >= 1 and np.array_equal(row[:n_shared], shared)  # first columns = shared images
    assert not sim[2].any()  # subj03 is not simulated
    assert shared.max() > n_shared  # shared ids are scattered, not the first ids

    with h5py.File(p.stimuli) as f:
        brick = f["imgBrick"]
        assert brick.dtype == np.uint8 and brick.shape == (cfg["n_stimuli"], 64, 64, 3)
    for s in SUBJECTS:
        labels = np.asanyarray(nib.load(p.nsdgeneral(s)).dataobj)
        assert set(np.unique(labels)) == {-1, 0, 1}
        assert (labels > 0).sum() == cfg["voxels"][s]
        with h5py.File(p.betas(s, 1, "hdf5")) as f:
            assert f["betas"].dtype == np.int16
            assert f["betas"].shape == (750, *labels.shape[::-1])  # (750, Z, Y, X)
        img = nib.load(p.betas(s, 1, "nii.gz"))
        assert img.shape == (*labels.shape, 750) and img.get_data_dtype() == np.int16
    # voxel counts differ between subjects, and grids are not cubes (a transpose would show)
    assert len({cfg["voxels"][s] for s in SUBJECTS}) == 4
    assert len(set(np.asanyarray(nib.load(p.nsdgeneral("subj01")).dataobj).shape)) > 1


def test_stim_info_csv_matches_design(simnsd_root):
    p = NSDPaths(simnsd_root)
    table = pd.read_csv(p.stim_info, index_col=0)
    expected = (["cocoId", "cocoSplit", "cropBox", "loss", "nsdId", "flagged", "BOLD5000", "shared1000"]
                + [f"subject{i}" for i in range(1, 9)] + [f"subject{i}_rep{k}" for i in range(1, 9) for k in range(3)])
    assert list(table.columns) == expected
    assert (table["nsdId"].to_numpy() == np.arange(len(table))).all()
    mat = scipy.io.loadmat(p.expdesign)
    mo, row = mat["masterordering"].ravel().astype(int), mat["subjectim"][0].astype(int)
    trial_ids = row[mo - 1] - 1
    # subject1_rep0..2 are the 1-based trial numbers of each repetition
    for nsd_id in trial_ids[:50]:
        reps = table.loc[nsd_id, ["subject1_rep0", "subject1_rep1", "subject1_rep2"]].to_numpy()
        assert (reps == np.flatnonzero(trial_ids == nsd_id)[:3] + 1).all()
    assert table["shared1000"].sum() == mat["sharedix"].size
    assert set(table["cocoSplit"]) == {"train2017", "val2017"}
    assert table["cocoId"].is_unique


def test_responses_tsv_follows_design(simnsd_root):
    p = NSDPaths(simnsd_root)
    resp = pd.read_csv(p.responses("subj02"), sep="\t")
    mat = scipy.io.loadmat(p.expdesign)
    mo, row = mat["masterordering"].ravel().astype(int), mat["subjectim"][1].astype(int)
    assert (resp["10KID"].to_numpy() == mo).all() and (resp["73KID"].to_numpy() == row[mo - 1]).all()
    assert resp.groupby("SESSION").size().tolist() == [750, 750, 750]
    assert resp[resp.SESSION == 1].groupby("RUN").size().tolist() == [63, 62] * 6


def test_coco_annotations_and_captions_agree(simnsd_root):
    p = NSDPaths(simnsd_root)
    scenes = load_scenes(simnsd_root)
    by_coco = {s["coco_id"]: s for s in scenes}
    n_images = 0
    for split in ("train2017", "val2017"):
        caps = json.load(open(p.captions(split)))
        inst = json.load(open(p.instances(split)))
        assert [(c["id"], c["name"]) for c in inst["categories"]] == [(i, n) for i, n, _ in COCO_CATEGORIES]
        names = {c["id"]: c["name"] for c in inst["categories"]}
        per_image_caps, per_image_objs = {}, {}
        for a in caps["annotations"]:
            per_image_caps.setdefault(a["image_id"], []).append(a["caption"])
        for a in inst["annotations"]:
            per_image_objs.setdefault(a["image_id"], set()).add(names[a["category_id"]])
            x, y, w, h = a["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 64.01 and y + h <= 64.01
        for image in caps["images"][:300]:  # CHAIR matching is slow-ish: a sample of each split
            cid = image["id"]
            objects = per_image_objs[cid]
            assert objects == {o["category"] for o in by_coco[cid]["objects"]}
            assert len(per_image_caps[cid]) == 5
            for text in per_image_caps[cid]:  # a caption never names an object that is not in the image
                assert set(caption_objects(text)) <= objects, (text, objects)
            fine = by_coco[cid]["fine_caption"]
            assert set(caption_objects(fine)) == objects  # the fine caption names every object
            for o in by_coco[cid]["objects"]:
                assert o["colour"] in fine and o["size"] in fine
            n_images += 1
    assert n_images >= 500  # both splits checked
    # captions use synonyms and scenery words, so they are not one template
    all_caps = [a["caption"] for a in json.load(open(p.captions("train2017")))["annotations"]]
    assert any("puppy" in c for c in all_caps) and any("tree" in c for c in all_caps)
    assert len(set(all_caps)) > 0.5 * len(all_caps)


def test_fine_captions_jsonl_format(simnsd_root):
    lines = open(os.path.join(simnsd_root, "fine_captions.jsonl"), encoding="utf-8").read().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["nsd_id"] for r in records] == list(range(len(load_scenes(simnsd_root))))
    assert all(r["model"] == "simnsd/oracle" and isinstance(r["caption"], str) and r["truncated"] is False for r in records)
    assert {"revision", "settings_hash"} <= set(records[0])


def test_glyphs_have_distinct_silhouettes():
    masks = {}
    for cat in VOCABULARY:
        img = draw_scene(Scene("indoor", [SceneObject(cat, "red", "large", "centre", (8.0, 8.0, 48.0, 48.0))]), 64)
        plain = draw_scene(Scene("indoor", []), 64)
        masks[cat] = np.abs(img.astype(int) - plain.astype(int)).sum(-1) > 30
    for i, a in enumerate(VOCABULARY):
        for b in VOCABULARY[i + 1:]:
            iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
            assert iou < 0.75, (a, b, iou)
    # colour is drawn: a red and a blue car differ in the car's pixels
    red = draw_scene(Scene("street", [SceneObject("car", "red", "large", "centre", (8.0, 8.0, 48.0, 48.0))]), 64)
    blue = draw_scene(Scene("street", [SceneObject("car", "blue", "large", "centre", (8.0, 8.0, 48.0, 48.0))]), 64)
    m = masks["car"]
    assert red[m][:, 0].mean() > blue[m][:, 0].mean() + 40 and blue[m][:, 2].mean() > red[m][:, 2].mean() + 40
    assert set(COLOURS) >= {"red", "blue"}


def test_betas_follow_the_encoding_model_at_the_set_snr(simnsd_root):
    """Planted signal: trial betas = noiseless response + session drift + noise with variance signal/snr."""
    p = NSDPaths(simnsd_root)
    cfg = load_simnsd_config(simnsd_root)
    mat = scipy.io.loadmat(p.expdesign)
    mo, row = mat["masterordering"].ravel().astype(int), mat["subjectim"][4].astype(int)  # subj05
    ids = row[mo - 1] - 1
    labels = np.asanyarray(nib.load(p.nsdgeneral("subj05")).dataobj)
    with h5py.File(p.betas("subj05", 2, "hdf5")) as f:
        vol = f["betas"][:]  # (750, Z, Y, X)
    betas = vol.transpose(0, 3, 2, 1)[:, labels > 0] / 300.0  # (750, V), C order of (X, Y, Z)
    clean = noiseless_response(simnsd_root, "subj05", ids[750:1500])
    resid = betas - clean
    resid -= resid.mean(0)  # removes the session's drift
    snr = clean.var(0) / resid.var(0)
    assert abs(np.median(snr) / cfg["snr"] - 1) < 0.2
    # the wrong trial -> image map leaves only the shared part (offsets), no image-specific signal
    wrong = noiseless_response(simnsd_root, "subj05", ids[751:1501])
    r_right = np.mean([np.corrcoef(betas[:, v], clean[:, v])[0, 1] for v in range(50)])
    r_wrong = np.mean([np.corrcoef(betas[:, v], wrong[:, v])[0, 1] for v in range(50)])
    assert r_right > 0.2 and abs(r_wrong) < 0.05
    # non-ROI brain voxels hold values, outside-brain voxels are zero
    assert (vol.transpose(0, 3, 2, 1)[:, labels == -1] == 0).all()
    assert (vol.transpose(0, 3, 2, 1)[:, labels == 0] != 0).any()


def _digest(root):
    """Hash of the contents, not the bytes (.mat headers carry a creation time)."""
    p = NSDPaths(root)
    h = hashlib.sha256()
    mat = scipy.io.loadmat(p.expdesign)
    for key in ("masterordering", "subjectim", "sharedix"):
        h.update(np.ascontiguousarray(mat[key]).tobytes())
    with h5py.File(p.betas("subj01", 1, "hdf5")) as f:
        h.update(f["betas"][:].tobytes())
    with h5py.File(p.stimuli) as f:
        h.update(f["imgBrick"][:].tobytes())
    for rel in ("simnsd/features.safetensors", "simnsd/subj01_encoding.safetensors"):
        tensors = load_file(os.path.join(root, rel))  # safetensors' header order is not fixed
        for key in sorted(tensors):
            h.update(tensors[key].tobytes())
    h.update(open(os.path.join(root, "fine_captions.jsonl"), "rb").read())
    return h.hexdigest()


def test_seeded_and_reproducible(tmp_path):
    kwargs = dict(subjects=["subj01"], image_size=32, write_responses=False, sessions=1, shared_images=20)
    simulate_nsd(tmp_path / "a", seed=3, **kwargs)
    simulate_nsd(tmp_path / "b", seed=3, **kwargs)
    simulate_nsd(tmp_path / "c", seed=4, **kwargs)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")
    assert not os.path.exists(str(tmp_path / "a") + ".incomplete")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        simulate_nsd(tmp_path / "a", seed=3, **kwargs)
    with pytest.raises(TypeError, match="unknown SimNSD option"):
        simulate_nsd(tmp_path / "d", voxel=3)
    with pytest.raises(ValueError, match="unknown SimNSD scale"):
        simulate_nsd(tmp_path / "d", scale="huge")


def _auc(scores, labels):
    """Area under the ROC curve by the rank-sum formula."""
    order = np.argsort(scores)
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    pos = labels.astype(bool)
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return (ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def test_a_linear_decoder_recovers_objects_but_not_every_detail(simnsd_dataset, simnsd_root):
    """The SNR is set so that SimNSD is learnable yet not solved: ridge regression from subj01's single-trial train
    betas reads out which objects are present almost perfectly, colour-position bindings much less well, while the
    same decoder on the noise-free responses reaches the ceiling."""
    from fgb2i_hf.data import voxel_stats
    from fgb2i_hf.simnsd import scene_features_of

    cfg = load_simnsd_config(simnsd_root)
    subj = {s: np.array(simnsd_dataset[s]["subject"]) == "subj01" for s in ("train", "test")}
    x = {s: np.stack(simnsd_dataset[s].select(np.flatnonzero(subj[s])).with_format("numpy")["betas"]).astype(np.float64)
         for s in ("train", "test")}
    ids = {s: np.array(simnsd_dataset[s]["nsd_id"])[subj[s]] for s in ("train", "test")}
    feats = {s: scene_features_of(simnsd_root, ids[s]) > 0 for s in ("train", "test")}
    stats = voxel_stats(simnsd_dataset, "subj01")
    clean = {s: stats.normalize(noiseless_response(simnsd_root, "subj01", ids[s])).astype(np.float64) for s in x}
    blocks, start = {}, 0
    for name, size in cfg["feature_blocks"]:
        blocks[name] = slice(start, start + size)
        start += size

    def decode(train_x, test_x, alpha):
        w = np.linalg.solve(train_x.T @ train_x + alpha * np.eye(train_x.shape[1]), train_x.T @ feats["train"])
        pred = test_x @ w
        out = {}
        for name in ("object", "colour_position"):
            cols = [c for c in range(blocks[name].start, blocks[name].stop) if 0 < feats["test"][:, c].sum() < len(pred)]
            out[name] = np.mean([_auc(pred[:, c], feats["test"][:, c]) for c in cols])
        return out

    noisy = decode(x["train"], x["test"], alpha=1000.0)
    ceiling = decode(clean["train"], clean["test"], alpha=1.0)
    assert noisy["object"] > 0.95 and ceiling["object"] > 0.99
    assert 0.6 < noisy["colour_position"] < 0.9 < ceiling["colour_position"]
