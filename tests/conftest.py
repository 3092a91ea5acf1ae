"""Test-wide settings: offline Hugging Face, deterministic CPU threads."""

import os

# Before any HF import: a test must never reach the Hub; a missing weight fails fast.
for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ[_k] = _v

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Small models on a busy shared CPU: one thread is much faster than two, which spin against other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- SimNSD fixtures shared by every part (issue 2) -------------------------------------------------------------

@pytest.fixture(scope="session")
def simnsd_root(tmp_path_factory):
    """A tiny SimNSD (subj01, subj02, subj05, subj07; hdf5 and nii.gz betas), written once per test session."""
    from fgb2i_hf.simnsd import simulate_nsd

    root = tmp_path_factory.mktemp("simnsd") / "nsd"
    simulate_nsd(root, scale="tiny", seed=0, betas_formats=("hdf5", "nii.gz"))
    return str(root)


@pytest.fixture(scope="session")
def nsd_cache_dir(tmp_path_factory):
    """A `datasets` cache folder for the session (never the user's ~/.cache)."""
    return str(tmp_path_factory.mktemp("hf_datasets_cache"))


@pytest.fixture(scope="session")
def simnsd_dataset(simnsd_root, nsd_cache_dir):
    """`load_nsd` of the tiny SimNSD, all four subjects, default options (train single trials, z-scored)."""
    from fgb2i_hf.data import load_nsd

    return load_nsd(simnsd_root, subjects=["subj01", "subj02", "subj05", "subj07"], cache_dir=nsd_cache_dir)
