"""Every bad input gives a clear error naming the file and what was expected, and leaves no dataset in the cache."""

import json
import os
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest

from fgb2i_hf.data import NSD, NSDDataError, NSDMissingFileError, NSDPaths, NSDStimuli, load_nsd
from fgb2i_hf.simnsd import simulate_nsd


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("small") / "nsd"
    simulate_nsd(root, subjects=["subj01"], image_size=32, betas_formats=("hdf5", "nii.gz"), write_responses=False)
    return str(root)


@pytest.fixture
def root(small_root, tmp_path):
    """A private copy of the small SimNSD that a test may damage."""
    dst = tmp_path / "nsd"
    shutil.copytree(small_root, dst)
    return str(dst)


def _assert_nothing_cached(cache):
    left = []
    for folder, dirs, files in os.walk(cache):
        left += [os.path.join(folder, d) for d in dirs if d.endswith(".incomplete")]
        left += [os.path.join(folder, f) for f in files
                 if f.endswith(".arrow") or f == "dataset_info.json" or "scratch" in f or f.startswith("voxel_stats")]
    assert not left, left


def _fails(root, tmp_path, error, match, **options):
    cache = str(tmp_path / "cache")
    with pytest.raises(error, match=match):
        load_nsd(root, subjects=["subj01"], cache_dir=cache, **options)
    _assert_nothing_cached(cache)


def _session_file(root, session, fmt="hdf5"):
    return NSDPaths(root).betas("subj01", session, fmt)


def test_missing_files_name_their_download(root, tmp_path):
    p = NSDPaths(root)
    os.rename(p.expdesign, p.expdesign + ".bak")
    _fails(root, tmp_path, NSDMissingFileError, r"nsd_expdesign\.mat.*'nsddata' download")
    os.rename(p.expdesign + ".bak", p.expdesign)
    os.rename(p.nsdgeneral("subj01"), p.nsdgeneral("subj01") + ".bak")
    _fails(root, tmp_path, NSDMissingFileError, r"nsdgeneral ROI of subj01.*'nsddata' download")
    os.rename(p.nsdgeneral("subj01") + ".bak", p.nsdgeneral("subj01"))
    os.remove(p.captions("val2017"))
    _fails(root, tmp_path, NSDMissingFileError, r"captions_val2017\.json.*COCO 2017 annotations")
    with pytest.raises(NSDMissingFileError, match=r"nsddata_betas.*Brain-Diffuser"):  # subj02 was not simulated
        load_nsd(root, subjects=["subj02"], cache_dir=str(tmp_path / "cache"))
    os.remove(p.stimuli)
    with pytest.raises(NSDMissingFileError, match=r"nsd_stimuli\.hdf5.*'nsddata_stimuli' download"):
        NSDStimuli(root)
    with pytest.raises(NSDMissingFileError, match="does not exist"):
        load_nsd(str(tmp_path / "nowhere"), subjects=["subj01"])


def test_missing_or_too_few_sessions(root, tmp_path):
    _fails(root, tmp_path, NSDMissingFileError, r"asked for 4 sessions.*betas_session04 is missing", sessions=4)
    for fmt in ("hdf5", "nii.gz"):
        os.remove(_session_file(root, 2, fmt))
    _fails(root, tmp_path, NSDMissingFileError, r"gap after session 1.*betas_session02")
    _fails(root, tmp_path, NSDMissingFileError, r"asked for 3 sessions.*betas_session02 is missing", sessions=3)
    load_nsd(root, subjects=["subj01"], cache_dir=str(tmp_path / "ok"), sessions=1)  # session 1 alone is fine


def test_betas_shape_disagreeing_with_the_mask(root, tmp_path):
    path = _session_file(root, 2)
    with h5py.File(path, "r") as f:
        vol = f["betas"][:]
    with h5py.File(path, "w") as f:  # (750, X, Y, Z): someone transposed the volume
        f.create_dataset("betas", data=vol.transpose(0, 3, 2, 1))
    _fails(root, tmp_path, NSDDataError, r"betas_session02\.hdf5: betas have shape .*should be \(750, \d+, \d+, \d+\)")
    import nibabel as nib

    nii = _session_file(root, 3, "nii.gz")
    data = np.asanyarray(nib.load(nii).dataobj)
    nib.Nifti1Image(data[:-1], np.eye(4)).to_filename(nii)
    _fails(root, tmp_path, NSDDataError, r"betas_session03\.nii\.gz: betas have shape .*\(X, Y, Z, 750\)",
           betas_format="nii.gz")


def test_truncated_or_corrupt_betas(root, tmp_path):
    path = _session_file(root, 3)  # the last session: sessions 1-2 are already streamed when it fails
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * 0.6))
    _fails(root, tmp_path, NSDDataError, r"betas_session03\.hdf5: truncated or corrupt HDF5")
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    _fails(root, tmp_path, NSDDataError, r"betas_session03\.hdf5: truncated or corrupt HDF5")
    nii = _session_file(root, 2, "nii.gz")
    with open(nii, "r+b") as f:
        f.truncate(os.path.getsize(nii) // 2)
    _fails(root, tmp_path, NSDDataError, r"betas_session02\.nii\.gz: truncated or corrupt gzipped NIfTI",
           betas_format="nii.gz")


def test_unknown_subject_and_bad_options(root, tmp_path):
    for bad in ("subj09", "subj00", "sub1", 12):
        with pytest.raises(ValueError, match="unknown subject.*subj01, subj02"):
            load_nsd(root, subjects=[bad], cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="unknown subject"):
        NSD(config_name="subj9", data_dir=root)
    with pytest.raises(ValueError, match=r"zscore must be one of \('train', 'session', 'none'\)"):
        NSD(config_name="subj01", data_dir=root, cache_dir=str(tmp_path / "cache"), zscore="voxel")
    with pytest.raises(TypeError, match="unknown NSD option"):
        load_nsd(root, subjects=["subj01"], session=3)
    with pytest.raises(ValueError, match="listed twice"):
        load_nsd(root, subjects=["subj01", 1])
    _assert_nothing_cached(str(tmp_path / "cache"))


def test_stim_info_missing_columns(root, tmp_path):
    p = NSDPaths(root)
    table = pd.read_csv(p.stim_info, index_col=0)
    table.drop(columns=["cocoSplit"]).to_csv(p.stim_info)
    _fails(root, tmp_path, NSDDataError, r"nsd_stim_info_merged\.csv: missing column\(s\) \['cocoSplit'\]")
    table.iloc[:10].to_csv(p.stim_info)  # rows missing
    _fails(root, tmp_path, NSDDataError, r"nsd_stim_info_merged\.csv: no row for nsdId")


def test_corrupt_design_file(root, tmp_path):
    with open(NSDPaths(root).expdesign, "wb") as f:
        f.write(b"MATLAB 5.0 MAT-file" + os.urandom(300))
    _fails(root, tmp_path, NSDDataError, r"nsd_expdesign\.mat: cannot be read as a MATLAB file")


def test_coco_id_without_captions(root, tmp_path):
    """Decision: an error by default (every NSD image is a COCO image with captions, so a gap means a wrong or
    partial annotations folder); on_missing_captions='warn' keeps the row with no captions."""
    p = NSDPaths(root)
    info = pd.read_csv(p.stim_info, index_col=0)
    seen = info[(info.subject1 == 1) & (info.cocoSplit == "train2017")]
    coco_id = int(seen.cocoId.iloc[0])
    caps = json.load(open(p.captions("train2017")))
    caps["annotations"] = [a for a in caps["annotations"] if a["image_id"] != coco_id]
    json.dump(caps, open(p.captions("train2017"), "w"))
    _fails(root, tmp_path, NSDDataError, rf"1 COCO id\(s\) of cocoSplit=train2017 have no caption in .*captions_train2017\.json "
                                         rf"\(first: \[{coco_id}\]\).*on_missing_captions='warn'")
    with pytest.warns(UserWarning, match=rf"first: \[{coco_id}\].*kept with empty captions"):
        dd = load_nsd(root, subjects=["subj01"], cache_dir=str(tmp_path / "warn"), on_missing_captions="warn")
    rows = [r for split in ("train", "test") for r in dd[split] if r["coco_id"] == coco_id]
    assert rows and all(r["captions"] == [] and r["objects"] for r in rows)


def test_fine_captions_file(root, tmp_path):
    path = NSDPaths(root).fine_captions
    dd = load_nsd(root, subjects=["subj01"], cache_dir=str(tmp_path / "c"))
    nsd_id = dd["test"][0]["nsd_id"]
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"nsd_id": nsd_id, "caption": "second opinion", "model": "m"}) + "\n")
        f.write(json.dumps({"nsd_id": nsd_id, "caption": "hallucinated", "flagged": True}) + "\n")
    # the changed source is noticed (no stale cache), both records are collected, flagged ones skipped on request
    again = load_nsd(root, subjects=["subj01"], cache_dir=str(tmp_path / "c"))
    assert again["test"][0]["fine_captions"][1:] == ["second opinion", "hallucinated"]
    skipped = load_nsd(root, subjects=["subj01"], cache_dir=str(tmp_path / "c"), skip_flagged_fine_captions=True)
    assert skipped["test"][0]["fine_captions"][1:] == ["second opinion"]
    none = load_nsd(root, subjects=["subj01"], cache_dir=str(tmp_path / "c"), fine_captions="")
    assert none["test"][0]["fine_captions"] == []
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"nsd_id": 3, "caption": \n')
    _fails(root, tmp_path, NSDDataError, r"fine_captions\.jsonl:\d+: not a JSON object")
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"nsd_id": "7", "caption": "x"}) + "\n")
    _fails(root, tmp_path, NSDDataError, r"fine_captions\.jsonl:1: 'nsd_id' must be a non-negative int")
    _fails(root, tmp_path, FileNotFoundError, r"fine captions file .*elsewhere\.jsonl not found",
           fine_captions=str(tmp_path / "elsewhere.jsonl"))


def test_json_streaming_matches_json_load(tmp_path, small_root):
    from fgb2i_hf.data.jsonstream import iter_json_object

    tricky = {"info": {"s": 'a \\"quoted\\" ] } [ { , : string \u00e9', "n": 12345678901234567890}, "images": [],
              "annotations": [{"id": i, "caption": "x" * (i * 37 % 101) + '"]},{', "v": [1.5e-3, None, True]}
                              for i in range(200)],
              "categories": [{"id": 1, "name": "person"}], "empty": {}, "last": -0.25}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(tricky, indent=1))
    for chunk in (7, 64, 1 << 20):  # buffer refills inside strings, numbers and items
        events = list(iter_json_object(str(path), chunk_size=chunk))
        items = [v for kind, key, v in events if kind == "item"]
        values = {key: v for kind, key, v in events if kind == "value"}
        assert items == tricky["annotations"]
        assert values == {k: v for k, v in tricky.items() if k != "annotations"}
    coco = NSDPaths(small_root).instances("train2017")
    events = list(iter_json_object(coco, chunk_size=1000))
    ref = json.load(open(coco))
    assert [v for kind, key, v in events if key == "annotations"] == ref["annotations"]
    assert [v for kind, key, v in events if key == "categories"][0] == ref["categories"]
    path.write_text(json.dumps(tricky)[:-40])  # truncated
    with pytest.raises(ValueError):
        list(iter_json_object(str(path), chunk_size=64))


def test_corrupt_annotation_file(root, tmp_path):
    p = NSDPaths(root)
    text = open(p.instances("val2017")).read()
    with open(p.instances("val2017"), "w") as f:
        f.write(text[: len(text) // 2])
    _fails(root, tmp_path, NSDDataError, r"instances_val2017\.json: not valid JSON.*COCO instances")


# -- silent wrong results found by probing (issue 13) ---------------------------------------------------------------

def _to_float_percent(root, sessions=(1, 2, 3)):
    """Rewrite hdf5 sessions as float32 % signal change (stored int16 / 300), as a float betas export would be."""
    for session in sessions:
        path = _session_file(root, session)
        with h5py.File(path, "r") as f:
            vol = f["betas"][:].astype(np.float32) / 300
        with h5py.File(path, "w") as f:
            f.create_dataset("betas", data=vol)
    return vol


def test_float_betas_are_taken_as_percent_signal_change(root, tmp_path):
    """NSD's convention follows the stored dtype: int16 holds % signal change x 300 (divided by 300), float files
    hold % signal change already (not divided again)."""
    as_int = load_nsd(root, subjects=["subj01"], cache_dir=str(tmp_path / "int"), zscore="none", beta_dtype="float32")
    _to_float_percent(root)
    as_float = load_nsd(root, subjects=["subj01"], cache_dir=str(tmp_path / "float"), zscore="none",
                        beta_dtype="float32")
    for split in ("train", "test"):
        a = np.stack(as_int[split].with_format("numpy")["betas"])
        b = np.stack(as_float[split].with_format("numpy")["betas"])
        assert np.abs(a).max() > 0.5  # a real signal (a float file divided by 300 again would be ~300x smaller)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)  # float32 rounding of the same values


def test_nan_in_float_betas_is_named_not_built(root, tmp_path):
    _to_float_percent(root)
    with h5py.File(_session_file(root, 2), "r") as f:
        vol = f["betas"][:]
    mask = np.asanyarray(__import__("nibabel").load(NSDPaths(root).nsdgeneral("subj01")).dataobj) > 0
    x, y, z = np.argwhere(mask)[0]
    vol[5, z, y, x] = np.nan
    with h5py.File(_session_file(root, 2), "w") as f:
        f.create_dataset("betas", data=vol)
    _fails(root, tmp_path, NSDDataError, r"betas_session02\.hdf5: 1 non-finite value.*trial 6 of the session")


def test_duplicate_nsd_id_in_the_stimulus_table(root, tmp_path):
    p = NSDPaths(root)
    table = pd.read_csv(p.stim_info, index_col=0)
    seen = int(table[table.subject1 == 1].nsdId.iloc[3])
    other = table[table.nsdId == seen].copy()
    other["cocoId"] = int(table.cocoId.iloc[0])  # another image's COCO id under the same nsdId, listed first
    pd.concat([other, table]).to_csv(p.stim_info)
    _fails(root, tmp_path, NSDDataError, rf"nsd_stim_info_merged\.csv: nsdId {seen} appears on 2 rows \(data rows 1, ")


def test_nan_coco_id_names_the_file_and_row(root, tmp_path):
    p = NSDPaths(root)
    table = pd.read_csv(p.stim_info, index_col=0)
    row = int(np.flatnonzero(table.subject1.to_numpy() == 1)[2])
    nsd_id = int(table.nsdId.iloc[row])
    table.loc[table.index[row], "cocoId"] = np.nan
    table.to_csv(p.stim_info)
    _fails(root, tmp_path, NSDDataError,
           rf"nsd_stim_info_merged\.csv: cocoId of nsdId {nsd_id} \(data row {row + 1}\) is not an integer: nan")


def test_shared_ids_outside_the_subjects_images(root, tmp_path):
    import scipy.io

    p = NSDPaths(root)
    mat = scipy.io.loadmat(p.expdesign)
    never_seen = int(np.setdiff1d(np.arange(1, mat["subjectim"].max() + 2), mat["subjectim"][0])[0])
    mat["sharedix"] = np.append(mat["sharedix"].ravel(), never_seen)[None]
    scipy.io.savemat(p.expdesign, {k: mat[k] for k in ("masterordering", "subjectim", "sharedix")})
    _fails(root, tmp_path, NSDDataError,
           rf"nsd_expdesign\.mat: 1 sharedix id\(s\) are not among subj01's images in subjectim "
           rf"\(first: \[{never_seen}\]")
