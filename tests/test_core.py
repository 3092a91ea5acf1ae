"""``fgb2i_hf.core``: ``as_betas`` / ``betas_tensor``, the one conversion and validation of betas (known answers, and
every error naming what is wrong); the deprecated aliases of moved names."""

import importlib
import warnings

import numpy as np
import pytest
import torch

from fgb2i_hf.core import as_betas, betas_tensor

COUNTS = {"subj01": 3, "subj02": 5}


def test_rows_of_different_lengths_are_zero_padded_for_mixed_subjects():
    betas, subject = as_betas([np.ones(3, np.float16), np.arange(5.0)], ["subj01", "subj02"],
                              voxel_counts=COUNTS)
    assert betas.dtype == torch.float32 and subject == ["subj01", "subj02"]
    assert betas.tolist() == [[1, 1, 1, 0, 0], [0, 1, 2, 3, 4]]
    # the same through the fast path of a datasets batch
    assert torch.equal(betas_tensor([np.ones(3, np.float16), np.arange(5.0)]), betas)
    assert betas_tensor(np.ones((2, 3)), pad_to=5).tolist() == [[1, 1, 1, 0, 0]] * 2


def test_one_subject_keeps_a_str_and_needs_its_exact_width():
    betas, subject = as_betas(np.ones((2, 3)), "subj01", voxel_counts=COUNTS, dtype=torch.float64)
    assert subject == "subj01" and betas.dtype == torch.float64 and betas.shape == (2, 3)
    with pytest.raises(ValueError, match=r"subj01 have 4 voxels per row, expected 3 \(subj01 has 3 voxels"):
        as_betas(torch.ones(2, 4), "subj01", voxel_counts=COUNTS)
    with pytest.raises(ValueError, match=r"different lengths \[3, 5\] but one subject 'subj01'.*one name per row"):
        as_betas([np.ones(3), np.ones(5)], "subj01")


def test_padded_rows_with_one_name_per_row():
    padded = torch.zeros(2, 5)
    padded[:, :3] = 1.0
    betas, subject = as_betas(padded, ["subj01", "subj01"], voxel_counts=COUNTS)  # padding is allowed per row
    assert torch.equal(betas, padded) and subject == ["subj01", "subj01"]
    padded[1, 4] = 2.0
    with pytest.raises(ValueError, match=r"row 1 \(subj01\) has non-zero values after its 3 voxels"):
        as_betas(padded, ["subj01", "subj01"], voxel_counts=COUNTS)
    with pytest.raises(ValueError, match=r"4 columns but subj02 needs 5 voxels"):
        as_betas(torch.zeros(2, 4), ["subj01", "subj02"], voxel_counts=COUNTS)


def test_subjects_are_checked():
    with pytest.raises(ValueError, match=r"unknown subject 'subj09'; this model knows \['subj01', 'subj02'\]"):
        as_betas(torch.zeros(1, 3), "subj09", voxel_counts=COUNTS)
    with pytest.raises(ValueError, match=r"2 names for 3 rows of betas"):
        as_betas(torch.zeros(3, 3), ["subj01", "subj01"])
    with pytest.raises(ValueError, match=r"`subject` must be a subject name"):
        as_betas(torch.zeros(1, 3), 1)


def test_shapes_and_dtypes():
    assert as_betas(torch.ones(3), "subj01")[0].shape == (1, 3)  # one row
    with pytest.raises(ValueError, match=r"2-D tensor"):
        as_betas(torch.ones(3), "subj01", allow_1d=False)
    with pytest.raises(ValueError, match=r"2-D tensor"):
        as_betas(torch.ones(1, 2, 3), "subj01")
    with pytest.raises(ValueError, match=r"floating point"):
        as_betas(torch.ones(1, 3, dtype=torch.long), "subj01")
    with pytest.raises(ValueError, match=r"no rows"):
        as_betas(torch.ones(0, 3), "subj01")
    with pytest.raises(ValueError, match=r"non-empty sequence of rows; got str"):
        as_betas("betas", "subj01")


def test_non_finite_rows_are_named_and_an_overflowing_cast_is_told_apart():
    betas = torch.zeros(3, 5)
    betas[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf in rows \[2\] \(subject\(s\) \['subj02'\]\)$"):
        as_betas(betas, ["subj01", "subj01", "subj02"], voxel_counts=COUNTS)
    huge = torch.full((1, 3), 1e39, dtype=torch.float64)  # finite in float64, inf in float32
    with pytest.raises(ValueError, match=r"rows \[0\].*after the cast to the model's dtype torch\.float32"):
        as_betas(huge, "subj01")
    # control: the same values stay finite when kept in float64
    assert torch.equal(as_betas(huge, "subj01", dtype=torch.float64)[0], huge)


@pytest.mark.parametrize("old, name, new", [("fgb2i_hf.data", "simulate_nsd", "fgb2i_hf.simnsd"),
                                            ("fgb2i_hf.training", "run_ce", "fgb2i_hf.drivers.ce"),
                                            ("fgb2i_hf.decoders", "fit_decoders", "fgb2i_hf.drivers.fit"),
                                            ("fgb2i_hf.captions", "enhance_nsd", "fgb2i_hf.drivers.captions")])
def test_moved_names_still_resolve_with_a_warning_at_the_caller(old, name, new):
    module = importlib.import_module(old)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), name)
    (warning,) = caught
    assert warning.category is DeprecationWarning and warning.filename == __file__
    assert str(warning.message).startswith(f"{old}.{name} moved to {new}.{name}")
    with pytest.raises(AttributeError, match=f"module '{old}' has no attribute 'no_such_name'"):
        getattr(module, "no_such_name")
