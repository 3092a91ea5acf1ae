"""The data contract: the validation split's rule, the contract every build and artifact carries, and the checks
that keep a chain of steps from silently mixing data settings (docs/data.md, fgb2i_hf/data/contract.py)."""

import dataclasses

import numpy as np
import pytest

from fgb2i_hf.data import ContractError, DataContract, data_contract, load_nsd
from fgb2i_hf.data.contract import SHARED_FIELDS, is_validation_image


def test_validation_images_follow_the_rule_and_touch_no_test_image(simnsd_root, nsd_cache_dir, simnsd_dataset):
    dd = simnsd_dataset
    validation, train, test = (set(dd[s]["nsd_id"]) for s in ("validation", "train", "test"))
    assert validation and not validation & train and not validation & test  # held-out training images only
    fraction = dd.data_contract.validation_fraction
    # the rule alone decides, whatever the subject: every held-out image passes it, no training image does
    assert all(is_validation_image(i, fraction) for i in validation)
    assert not any(is_validation_image(i, fraction) for i in train)
    assert 0.5 * fraction < len(validation) / (len(validation) + len(train)) < 2 * fraction  # ~5% of the images
    # a subject's validation rows are its own training images: the same image is held out for every subject
    none = load_nsd(simnsd_root, subjects=["subj01"], cache_dir=nsd_cache_dir, validation_fraction=0.0)
    assert set(none) == {"train", "test"} and none.data_contract.validation_fraction == 0.0
    sub = dd["train"].filter(lambda s: s == "subj01", input_columns="subject")
    assert len(none["train"]) == len(sub) + sum(dd["validation"]["subject"][i] == "subj01"
                                                 for i in range(len(dd["validation"])))


def test_every_build_carries_its_contract(simnsd_dataset, simnsd_root, nsd_cache_dir):
    contract = data_contract(simnsd_dataset["test"].select([0, 1]))
    assert contract.subjects == ("subj01",) and contract.average_train is False and contract.zscore == "train"
    averaged = load_nsd(simnsd_root, subjects=["subj01"], cache_dir=nsd_cache_dir, average_train=True)
    other = averaged.data_contract
    # the same voxels and test split; other training rows, so other z-scoring statistics
    assert not contract.differences(other, SHARED_FIELDS)
    assert set(contract.differences(other, SHARED_FIELDS + ("average_train", "stats"))) == {"average_train", "stats"}
    assert DataContract.from_dict(other.to_dict()) == other


def test_artifacts_with_other_data_settings_are_refused_naming_both(tmp_path, simnsd_dataset):
    from fgb2i_hf.drivers.reconstruct import ReconstructConfig, upstream_contracts

    contract = simnsd_dataset.data_contract
    brain, decoders = tmp_path / "brain", tmp_path / "decoders"
    brain.mkdir(), decoders.mkdir()
    contract.save(str(brain))
    dataclasses.replace(contract, sessions=contract.sessions - 1).save(str(decoders))
    config = ReconstructConfig(nsd_root="unused", output_dir=str(tmp_path / "out"), base="ldm",
                               brain_model=str(brain), decoders_dir=str(decoders))
    with pytest.raises(ContractError, match=r"the brain model .*brain and the ldm decoders .*decoders .*sessions"):
        upstream_contracts(config)
    # averaging is allowed to differ (each artifact gets rows built its own way), the voxels are not
    dataclasses.replace(contract, average_train=True, stats={s: "other" for s in contract.subjects}).save(str(decoders))
    assert set(upstream_contracts(config)) == {"captions", "base"}
    dataclasses.replace(contract, voxel_mask={s: "other" for s in contract.subjects}).save(str(decoders))
    with pytest.raises(ContractError, match="voxel_mask"):
        upstream_contracts(config)


def test_decoders_fit_on_averaged_rows_get_averaged_row_normalisation(simnsd_root, nsd_cache_dir, simnsd_dataset,
                                                                      tmp_path):
    """Brain-Diffuser's decoders are fit on repetition-averaged rows, z-scored with those rows' statistics: their
    test inputs must be z-scored the same way, by construction (rows rebuilt under their contract), not rescaled."""
    from fgb2i_hf.drivers.reconstruct import ReconstructConfig, rows_under

    averaged = load_nsd(simnsd_root, subjects=["subj01"], cache_dir=nsd_cache_dir, average_train=True)
    config = ReconstructConfig(nsd_root=simnsd_root, output_dir=str(tmp_path), cache_dir=nsd_cache_dir)
    single_rows = simnsd_dataset["test"].filter(lambda s: s == "subj01", input_columns="subject")
    rows = rows_under(config, averaged.data_contract, single_rows)
    assert data_contract(rows).stats == averaged.data_contract.stats  # not the single-trial statistics
    a = np.stack(rows.with_format("numpy")["betas"][:5]).astype(np.float32)
    b = np.stack(single_rows.with_format("numpy")["betas"][:5]).astype(np.float32)
    assert rows["nsd_id"][:5] == single_rows["nsd_id"][:5] and np.abs(a - b).mean() > 0.05  # other statistics
    # the same rows in % signal change (float16 storage: ~1e-3 relative), read back from the two normalisations
    stats_a = averaged["train"].with_format("numpy")["betas"]
    assert len(stats_a) == len(set(averaged["train"]["nsd_id"]))  # one row per training image


def test_monitoring_never_reads_the_test_split():
    from fgb2i_hf.drivers.ce import CEScriptArguments
    from fgb2i_hf.drivers.fit import FitDecodersConfig

    with pytest.raises(ValueError, match="test split is read only by the final evaluation"):
        CEScriptArguments(nsd_root="x", eval_split="test")
    with pytest.raises(ValueError, match="test split is read only by the final evaluation"):
        FitDecodersConfig(nsd_root="x", output_dir="y", score_split="test")


def test_stage_two_takes_its_data_settings_from_the_stage_one_model(simnsd_dataset):
    from fgb2i_hf.drivers.rl import RLScriptArguments, data_options

    contract = simnsd_dataset.data_contract
    args = RLScriptArguments(model_name_or_path="stage1", nsd_root="x", subjects=["subj01"])
    assert data_options(args, contract)["sessions"] == contract.sessions
    other = contract.sessions - 1
    with pytest.raises(ContractError, match=rf"sessions={other} \(stage 2's config\) but the stage-1 model stage1"):
        data_options(dataclasses.replace(args, sessions=other), contract)
