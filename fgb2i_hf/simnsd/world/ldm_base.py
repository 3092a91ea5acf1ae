"""``simnsd/ldm_base``: Takagi & Nishimoto's ridge base for the SimNSD subjects, in the world's latent spaces.

Per subject, ``fgb2i_hf.drivers.fit.fit_decoders`` (the code ``recipes/fit_decoders.py`` runs) fits a
``RidgeDecoder`` from single-trial betas to

* ``z`` — the ``simnsd/diffusion`` VAE latent of the stimulus (posterior sample x ``scaling_factor``, 4 x 16 x 16),
* ``c`` — the ``simnsd/diffusion`` text encoder's last hidden state of each COCO caption of the image, averaged
  over the captions (40 x 32),

with Takagi's alpha grid, cross-validated per target column. The folder has fit_decoders' layout —
``<subject>/<target>/`` (``RidgeDecoder.from_pretrained``), ``metrics.json``, ``fit_decoders.yaml`` and the
``data_contract.json`` the decoders were fitted under — without
the cached targets, so pipelines load it as a real fit: ``RidgeDecoder.from_pretrained("simnsd/ldm_base/subj01/z")``.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, field

from ...data import load_nsd
from ...data.contract import CONTRACT_NAME
from ...decoders.ridge import TAKAGI_ALPHAS
from ...drivers.fit import FitDecodersConfig, fit_decoders
from .data import SIMNSD_SUBJECTS


@dataclass
class LDMBaseConfig:
    """The LDM base's fit (the rest is ``FitDecodersConfig``'s defaults for the ldm base)."""

    ldm_subjects: list[str] = field(default_factory=lambda: list(SIMNSD_SUBJECTS), metadata={
        "help": "Subjects to fit decoders for."})
    ldm_alphas: list[float] = field(default_factory=lambda: list(TAKAGI_ALPHAS), metadata={
        "help": "Ridge grid for z and c (default: Takagi's)."})
    ldm_latent_sampling: str = field(default="sample", metadata={
        "help": "z: a posterior sample (Takagi) or the posterior mean.", "choices": ["sample", "mean"]})
    ldm_max_train_rows: int | None = field(default=None, metadata={"help": "Fit on the first N train rows (tests)."})


def fit_ldm_base(config: LDMBaseConfig, nsd_root: str, diffusion_model: str, output_folder: str, work_dir: str,
                 seed: int = 0, device: str = "cpu", progress: bool = True, cache_dir: str | None = None) -> dict:
    """Fit and write the decoders to ``output_folder`` (targets cached under ``work_dir``); returns the record.

    ``diffusion_model``: ``simnsd/diffusion`` or a folder in the diffusers layout (the targets' VAE and text
    encoder); it is recorded in ``fit_decoders.yaml`` as given.
    """
    start = time.time()
    fit_dir = os.path.join(work_dir, "ldm_base_fit")
    fit_config = FitDecodersConfig(
        nsd_root=nsd_root, output_dir=fit_dir, base="ldm", subjects=list(config.ldm_subjects),
        model_name_or_path=diffusion_model, image_size=64, latent_sampling=config.ldm_latent_sampling,
        seed=seed, extraction_batch_size=64, device=device, z_alphas=list(config.ldm_alphas),
        c_alphas=list(config.ldm_alphas), max_train_rows=config.ldm_max_train_rows)
    rows = load_nsd(nsd_root, subjects=list(config.ldm_subjects), average_train=fit_config.spec.average_train,
                    cache_dir=cache_dir)
    metrics = fit_decoders(fit_config, dataset=rows, progress=progress)
    os.makedirs(output_folder, exist_ok=True)
    for subject in config.ldm_subjects:
        shutil.copytree(os.path.join(fit_dir, subject), os.path.join(output_folder, subject))
    for name in ("metrics.json", "fit_decoders.yaml", CONTRACT_NAME):
        shutil.copy2(os.path.join(fit_dir, name), os.path.join(output_folder, name))
    summary = {subject: {target: {"validation_column_r": round(s["validation"]["column_r"], 4),
                                  "validation_image_r": round(s["validation"]["image_r"], 4),
                                  "validation_column_r2": round(s["validation"]["column_r2"], 4)}
                         for target, s in by_target.items()} for subject, by_target in metrics.items()}
    return {"config": asdict(config), "seed": seed, "diffusion_model": diffusion_model,
            "train_seconds": round(time.time() - start, 1), "metrics": {"validation": summary}}
