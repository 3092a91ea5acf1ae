"""An independent reimplementation of Brain-Diffuser's data/prepare_nsddata.py (ozcelikfu/brain-diffuser), used
to write its processed layout from a SimNSD root in tests.

It follows the published script step by step: image ids from nsd_expdesign.mat in first-trial order, split by
``masterordering > <number of shared images>`` (the script's constant 1000, scaled to the layout), betas from
``nib.load(...).get_fdata()[mask > 0].T`` of the .nii.gz sessions, every repetition averaged, float64 arrays in raw
units (not / 300), stimuli as float64, five captions per image.
"""

import json
import os

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import scipy.io


def prepare_nsddata(root, subject, sessions, out_dir):
    sub = int(subject[4:])
    design = scipy.io.loadmat(os.path.join(root, "nsddata/experiments/nsd/nsd_expdesign.mat"))
    mo, subjectim = design["masterordering"].ravel().astype(int), design["subjectim"].astype(int)
    n_shared = design["sharedix"].size
    sig_train, sig_test = {}, {}
    for idx in range(sessions * 750):
        nsd_id = subjectim[sub - 1, mo[idx] - 1] - 1
        (sig_train if mo[idx] > n_shared else sig_test).setdefault(nsd_id, []).append(idx)
    mask = nib.load(os.path.join(root, f"nsddata/ppdata/{subject}/func1pt8mm/roi/nsdgeneral.nii.gz")).get_fdata()
    betas_dir = os.path.join(root, f"nsddata_betas/ppdata/{subject}/func1pt8mm/betas_fithrf_GLMdenoise_RR")
    fmri = np.concatenate([nib.load(os.path.join(betas_dir, f"betas_session{i + 1:02d}.nii.gz")).get_fdata()
                           .astype(np.float32)[mask > 0].T for i in range(sessions)])
    with h5py.File(os.path.join(root, "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"), "r") as f:
        stim = f["imgBrick"][:]
    info = pd.read_csv(os.path.join(root, "nsddata/experiments/nsd/nsd_stim_info_merged.csv"), index_col=0)
    captions = {}
    for split in ("train2017", "val2017"):
        path = os.path.join(root, f"nsddata_stimuli/stimuli/nsd/annotations/captions_{split}.json")
        for a in json.load(open(path))["annotations"]:
            captions.setdefault(a["image_id"], []).append(a["caption"])
    folder = os.path.join(out_dir, subject)
    os.makedirs(folder, exist_ok=True)
    for split, sig in (("train", sig_train), ("test", sig_test)):
        ids = list(sig)
        np.save(os.path.join(folder, f"nsd_{split}_fmriavg_nsdgeneral_sub{sub}.npy"),
                np.stack([fmri[sorted(sig[i])].mean(0) for i in ids]).astype(np.float64))
        np.save(os.path.join(folder, f"nsd_{split}_stim_sub{sub}.npy"), stim[ids].astype(np.float64))
        np.save(os.path.join(folder, f"nsd_{split}_cap_sub{sub}.npy"),
                np.array([captions[info.loc[i, "cocoId"]][:5] for i in ids]))
    return folder
