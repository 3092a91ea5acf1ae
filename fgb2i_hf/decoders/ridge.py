"""Ridge regression from fMRI betas to a base method's feature targets (the "base" of each FgB2I pipeline).

``RidgeDecoder`` maps betas ``(N, V)`` to targets ``(N, *target_shape)`` — the SD VAE latent z and CLIP text
embedding c of Takagi & Nishimoto's LDM base, the CLIP-text / CLIP-vision embeddings of Brain-Diffuser — as
the field does it:

* betas are standardised with the training mean and standard deviation (Takagi's ``StandardScaler``,
  Brain-Diffuser's z-scoring); targets are optionally centred (the intercept);
* the ridge penalty is chosen by K-fold cross-validation over a grid, per target column or shared
  (``alpha_per_target``), with himalaya's solvers — the same folds, loss and selection rule as the
  ``himalaya.ridge.RidgeCV`` Takagi's code calls: on the linear kernel (``himalaya.kernel_ridge``, the form
  himalaya recommends when there are fewer rows than voxels, e.g. NSD's 8,859 averaged images) or on the
  betas (``himalaya.ridge``, e.g. ~25,000 single trials); torch backend, on the GPU when there is one;
* the refit on all rows diagonalises one float64 Gram matrix, so every target column gets its own alpha at
  the cost of one product. With fewer rows than voxels, ``K = Xs Xsᵀ = Q Λ Qᵀ`` and ``W = B C`` with
  ``B = Xsᵀ Q Λ^-1/2`` (V × k, orthonormal columns), ``C[j, t] = √λ_j / (λ_j + α_t) · (Qᵀ Y)[j, t]``; when
  ``k (V + T) < V T`` the decoder stores ``B`` and ``C`` instead of ``W`` (smaller, and faster to apply).
  Otherwise ``Xsᵀ Xs = P Λ Pᵀ`` and ``W[:, t] = P (Λ + α_t)^-1 Pᵀ Xsᵀ Y[:, t]``.

It is a diffusers ``ModelMixin`` + ``ConfigMixin`` so that a ``DiffusionPipeline`` can hold it as a component:
``pipe.save_pretrained`` calls ``RidgeDecoder.save_pretrained`` (``config.json`` + ``model.safetensors``) and
``from_pretrained`` finds the class through this module (import ``fgb2i_hf.decoders`` before loading, see
hf-gotchas §6).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import uuid
import warnings
from typing import Sequence

import numpy as np
import torch
from diffusers import ConfigMixin, ModelMixin  # noqa: F401  (ModelMixin must be a name in this module: see below)
from diffusers.configuration_utils import register_to_config
from safetensors import safe_open
from tqdm.auto import tqdm

from ..core import atomic_write_text, resolve_pretrained, save_safetensors_atomic, versions

# diffusers' pipeline loader looks the component's base classes up *in the component's module*
# (pipeline_loading_utils.get_class_obj_and_candidates: getattr(module, "ModelMixin")), so ModelMixin has to be
# importable from here under that name for `DiffusionPipeline.from_pretrained` to find the load method.

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

# Takagi & Nishimoto's two grids (codes/utils/ridge.py): 1e-6..1 for z and c on ROI single-trial betas, and
# 1e4..4e4 "with much larger number of voxels". Our rows are image-averaged nsdgeneral betas, so the default
# grid holds both.
TAKAGI_ALPHAS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 1e4, 2e4, 4e4)

# The pipeline loader passes these to every ModelMixin's from_pretrained; a ridge decoder has no use for them.
_IGNORED_LOADER_KWARGS = {
    "max_memory", "offload_folder", "offload_state_dict", "low_cpu_mem_usage", "disable_mmap", "use_flashpack",
    "use_safetensors", "variant", "provider", "sess_options", "provider_options", "quantization_config",
}


def _resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextlib.contextmanager
def himalaya_backend(device: torch.device):
    """Set himalaya's (global) backend to torch on ``device`` and restore the previous one afterwards."""
    from himalaya.backend import get_backend, set_backend

    previous = get_backend()
    use_cuda = device.type == "cuda"
    cuda_device = torch.cuda.device(device) if use_cuda else contextlib.nullcontext()
    with cuda_device:
        backend = set_backend("torch_cuda" if use_cuda else "torch")
        try:
            yield backend
        finally:
            set_backend(previous)


def _as_float32_matrix(array, name: str) -> np.ndarray | torch.Tensor:
    """A 2-D float32 view (no copy when possible) of a numpy array, memmap or tensor."""
    if isinstance(array, torch.Tensor):
        if array.ndim != 2:
            raise ValueError(f"{name} must be 2-D (rows, columns), got shape {tuple(array.shape)}")
        return array.detach().to(torch.float32)
    array = np.asarray(array) if not isinstance(array, np.ndarray) else array
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, columns), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must hold numbers, got dtype {array.dtype}")
    return array if array.dtype == np.float32 else array.astype(np.float32)


def _column_blocks(n_columns: int, block: int):
    for start in range(0, n_columns, block):
        yield slice(start, min(start + block, n_columns))


def _check_finite_rows(array, name: str, block_rows: int = 1024):
    """Raise naming the first rows with NaN/inf; works on memmaps without loading them whole."""
    for start in range(0, array.shape[0], block_rows):
        finite = torch.isfinite(torch.as_tensor(array[start : start + block_rows])).all(1)
        if not finite.all():
            rows = (torch.nonzero(~finite).flatten()[:5] + start).tolist()
            raise ValueError(f"{name} contain NaN or inf values (first bad rows: {rows}); drop or impute them first")


class RidgeDecoder(ModelMixin, ConfigMixin):
    """Cross-validated ridge regression from betas ``(N, num_voxels)`` to targets ``(N, *target_shape)``.

    Args:
        num_voxels: V, the number of voxels of the subject's betas (15,724 for NSD subj01 nsdgeneral).
        target_shape: the shape of one target, e.g. ``(4, 40, 40)`` for Takagi's z, ``(77, 768)`` for c.
        alphas: the ridge penalties to cross-validate over (one value = no cross-validation).
        cv: number of K-fold splits (unshuffled, as himalaya's and scikit-learn's default).
        alpha_per_target: choose alpha per target column (Takagi: himalaya's ``local_alpha``) or one for all.
        scale_betas: divide betas by their training standard deviation after centring (z-scoring).
        center_targets: fit an intercept (the training mean of each target column). Takagi's call did not
            (himalaya ``RidgeCV(fit_intercept=False)`` on uncentred targets); Brain-Diffuser did.
        subject: the subject the decoder was fitted on; ``predict(..., subject=)`` checks it.
        target_name: what the targets are (``"z"``, ``"c"``, ``"clip_text"``, ``"clip_vision"``).
        rank, fit_id, fit_summary: written by ``fit``; ``rank`` is the number of kernel eigen-directions
            kept when the weights are stored factorised (None: stored as one V × T matrix).
    """

    config_name = CONFIG_NAME

    @register_to_config
    def __init__(
        self,
        num_voxels: int,
        target_shape: Sequence[int],
        alphas: Sequence[float] = TAKAGI_ALPHAS,
        cv: int = 5,
        alpha_per_target: bool = True,
        scale_betas: bool = True,
        center_targets: bool = True,
        subject: str | None = None,
        target_name: str | None = None,
        rank: int | None = None,
        fit_id: str | None = None,
        fit_summary: dict | None = None,
    ):
        super().__init__()
        if int(num_voxels) <= 0:
            raise ValueError(f"num_voxels must be positive, got {num_voxels}")
        target_shape = tuple(int(d) for d in target_shape)
        if not target_shape or any(d <= 0 for d in target_shape):
            raise ValueError(f"target_shape must be a non-empty tuple of positive sizes, got {target_shape}")
        alphas = [float(a) for a in alphas]
        if not alphas or not all(math.isfinite(a) and a > 0 for a in alphas):
            raise ValueError(f"alphas must be a non-empty list of positive finite numbers, got {alphas}")
        if len(alphas) > 1 and int(cv) < 2:
            raise ValueError(f"cv must be at least 2 folds to choose among {len(alphas)} alphas, got {cv}")
        # Buffers get their real shapes when the decoder is fitted or loaded (from_pretrained builds the module
        # on the meta device and assigns the stored tensors), never a V x T block of zeros up front.
        self._register_buffers({name: torch.empty(shape if fit_id is not None else (0,))
                                for name, shape in self._buffer_shapes().items()})

    # -- shapes ------------------------------------------------------------------------------------------------
    @property
    def target_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.config.target_shape)

    @property
    def num_targets(self) -> int:
        return math.prod(self.target_shape)

    @property
    def is_fitted(self) -> bool:
        return self.config.fit_id is not None

    def _buffer_shapes(self) -> dict[str, tuple[int, ...]]:
        V, T, k = int(self.config.num_voxels), self.num_targets, self.config.rank
        shapes = {"beta_mean": (V,), "beta_scale": (V,)}
        if k is not None:
            shapes["basis"] = (V, int(k))
        shapes.update({"coef": (V if k is None else int(k), T), "intercept": (T,), "target_mean": (T,),
                       "target_std": (T,), "alpha": (T,), "cv_r2": (T,)})
        return shapes

    def _register_buffers(self, tensors: dict[str, torch.Tensor]):
        for name, tensor in tensors.items():
            self.register_buffer(name, tensor)
        if "basis" not in tensors:  # weights stored as one V x T matrix
            self.register_buffer("basis", None)

    # -- fitting -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def fit(self, betas, targets, *, device=None, progress: bool = True, block_bytes: int = 2**28) -> "RidgeDecoder":
        """Standardise, cross-validate alpha, refit on all rows. Returns ``self`` (float32, on ``device``).

        Args:
            betas: ``(N, num_voxels)`` array or tensor (any float dtype; a memmap is read, not copied whole).
            targets: ``(N, *target_shape)`` or ``(N, prod(target_shape))``; a float32 memmap is read in column
                blocks, so the targets need not fit in memory next to their centred copy.
            device: where to compute (default: CUDA when available, else CPU).
            block_bytes: size of the largest temporary per block of target columns.
        """
        start_time = time.perf_counter()
        device = _resolve_device(device)
        X = _as_float32_matrix(betas, "betas")
        N, V = X.shape
        if V != self.config.num_voxels:
            raise ValueError(f"betas have {V} voxels per row but the decoder was configured for "
                             f"num_voxels={self.config.num_voxels} ({self._who()})")
        T = self.num_targets
        targets = targets if hasattr(targets, "shape") else np.asarray(targets)
        Y = targets.reshape(targets.shape[0], -1)
        if Y.shape[0] != N:
            raise ValueError(f"betas have {N} rows but targets have {Y.shape[0]}: they must be the same stimuli, "
                             "in the same order")
        if Y.shape[1] != T:
            raise ValueError(f"each target must have shape {self.target_shape} ({T} values), got "
                             f"{tuple(targets.shape[1:])} ({Y.shape[1]} values)")
        Y = _as_float32_matrix(Y, "targets")
        alphas = sorted(float(a) for a in self.config.alphas)
        folds = int(self.config.cv)
        if len(alphas) > 1 and N < 2 * folds:
            raise ValueError(f"{N} training rows are too few for {folds}-fold cross-validation")
        if N < 2:
            raise ValueError(f"a ridge fit needs at least 2 training rows, got {N}")
        _check_finite_rows(X, "betas")

        stages = ["standardise", "gram", "cross-validate", "refit"]
        bar = tqdm(total=len(stages), desc=f"ridge {self._who()}: {N}x{V} -> {T}", disable=not progress, leave=False)
        with himalaya_backend(device) as backend:
            # 1. standardise betas with training statistics (float64 sums), centre targets
            bar.set_postfix_str(stages[0])
            Xs = torch.as_tensor(X).to(device, copy=True)
            beta_mean = torch.empty(V, dtype=torch.float64, device=device)
            beta_scale = torch.ones(V, dtype=torch.float64, device=device)
            for block in _column_blocks(V, max(1, block_bytes // (8 * N))):
                Xb = Xs[:, block].double()
                beta_mean[block] = Xb.mean(0)
                if self.config.scale_betas:
                    beta_scale[block] = Xb.std(0, correction=0)
            beta_scale[beta_scale == 0] = 1.0  # constant voxels (as StandardScaler does)
            Xs.sub_(beta_mean.float()).div_(beta_scale.float())
            target_mean, target_var, Yc = self._target_statistics(Y, device, block_bytes)
            bar.update(1)

            # 2. the Gram matrix in float64: the linear kernel Xs Xsᵀ (N x N) when there are fewer rows than
            #    voxels (NSD's 8,859 averaged images), else the covariance Xsᵀ Xs (V x V; single trials)
            bar.set_postfix_str(stages[1])
            dual = N <= V
            gram = _gram(Xs, dual, block_bytes)
            bar.update(1)

            # 3. alpha by K-fold cross-validation (himalaya), or the single alpha given
            bar.set_postfix_str(stages[2])
            alpha, cv_mse = self._cross_validate(backend, gram if dual else Xs, dual, Yc, alphas, folds, device,
                                                 block_bytes)
            bar.update(1)

            # 4. refit on all rows: one float64 eigendecomposition serves every alpha
            bar.set_postfix_str(stages[3])
            lam, vectors = _eigh_numerical_rank(gram)
            del gram
            # a centred copy of the targets is ours: its storage takes the coefficients, block by block
            out = Yc if self.config.center_targets else None
            refit = _refit_dual if dual else _refit_primal
            basis, coef = refit(lam, vectors, Xs, Yc, alpha, block_bytes, out=out)
            del Yc, out, vectors
            if coef.untyped_storage().nbytes() > 1.05 * coef.numel() * coef.element_size():
                coef = coef.clone()  # W in the first V of N >> V rows: keep only those
            bar.update(1)
        bar.close()

        intercept = target_mean if self.config.center_targets else torch.zeros_like(target_mean)
        cv_r2 = 1.0 - cv_mse.double() / target_var
        cv_r2[target_var == 0] = float("nan")
        rank = None if basis is None else int(basis.shape[1])
        tensors = {"beta_mean": beta_mean, "beta_scale": beta_scale, "basis": basis, "coef": coef,
                   "intercept": intercept, "target_mean": target_mean, "target_std": target_var.sqrt(),
                   "alpha": alpha, "cv_r2": cv_r2}
        self.register_to_config(rank=rank, fit_id=uuid.uuid4().hex,
                                fit_summary=self._summary(N, alphas, alpha, cv_r2, device, start_time))
        self._register_buffers({name: tensors[name].to(device=device, dtype=torch.float32).contiguous()
                                for name in self._buffer_shapes()})
        return self

    def _target_statistics(self, Y, device, block_bytes):
        """Column means and variances (float64), and the float32 targets to regress (a centred copy, or ``Y``)."""
        N, T = Y.shape
        mean = torch.empty(T, dtype=torch.float64, device=device)
        var = torch.empty(T, dtype=torch.float64, device=device)
        if self.config.center_targets:
            Yc = torch.empty(N, T, dtype=torch.float32)
        else:  # regress Y itself; a read-only memmap is shared, never written
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                Yc = torch.as_tensor(Y)
        for cols in _column_blocks(T, max(1, block_bytes // (4 * N))):
            block = Y[:, cols]
            Yb = (block if isinstance(block, torch.Tensor) else torch.from_numpy(np.array(block))).to(
                device=device, dtype=torch.float64)
            bad_rows = torch.nonzero(~torch.isfinite(Yb).all(1)).flatten()
            if bad_rows.numel():
                raise ValueError(f"targets contain NaN or inf values (first bad rows: {bad_rows[:5].tolist()})")
            mean[cols], var[cols] = Yb.mean(0), Yb.var(0, correction=0)
            if self.config.center_targets:
                Yc[:, cols] = (Yb - mean[cols]).float().cpu()
        return mean, var, Yc

    def _cross_validate(self, backend, features, dual, Yc, alphas, folds, device, block_bytes):
        """Per-target (or shared) alpha and its cross-validated mean squared error.

        himalaya's random-search solvers with one kernel / one feature space of weight 1 are plain ridge CV
        (the same KFold, l2 loss and argmax as ``himalaya.ridge.RidgeCV``); asked for no weights they skip
        their refit, which ``_refit_dual`` / ``_refit_primal`` do once for all alphas.
        """
        T = Yc.shape[1]
        if len(alphas) == 1:
            return torch.full((T,), alphas[0], dtype=torch.float64), torch.full((T,), float("nan"))
        from himalaya.kernel_ridge import solve_multiple_kernel_ridge_random_search
        from himalaya.ridge import solve_group_ridge_random_search

        n_rows = features.shape[0]
        n_test, n_train = math.ceil(n_rows / folds), n_rows - n_rows // folds
        # himalaya's temporaries per alpha of a batch: the eigenvector weighting (n_train x n_train [kernel],
        # V x n_train [primal]) and the resolution matrices (n_test [+ V, primal] x n_train); per target column
        # of a batch: the predictions and squared errors (3 x alphas x n_test) and the train/test copies (N)
        k = n_train if dual else min(n_train, features.shape[1])
        per_alpha = 4 * n_train * (k + n_test + (0 if dual else features.shape[1]))
        n_alphas_batch = int(min(len(alphas), max(1, block_bytes // per_alpha)))
        n_targets_batch = max(1, block_bytes // (4 * (3 * n_alphas_batch * n_test + n_rows)))
        y_in_cpu = device.type == "cuda" and Yc.numel() * 4 > 0.5 * torch.cuda.mem_get_info(device)[0]
        common = dict(n_iter=torch.ones(1, 1, device=device), cv=folds, fit_intercept=False,
                      alphas=backend.asarray(np.asarray(alphas, dtype=np.float32)),
                      local_alpha=bool(self.config.alpha_per_target), n_targets_batch=n_targets_batch,
                      n_alphas_batch=n_alphas_batch, progress_bar=False, Y_in_cpu=y_in_cpu)
        Y = Yc if y_in_cpu else Yc.to(device)
        if dual:
            _, _, cv_scores, best = solve_multiple_kernel_ridge_random_search(
                features.float()[None], Y, return_weights=None, return_alphas=True, **common)
        else:
            deltas, _, cv_scores = solve_group_ridge_random_search(
                [features], Y, return_weights=False, warn=False, **common)
            best = torch.exp(-deltas[0])  # deltas = log(weight / alpha), weight 1
        # himalaya works in float32: snap its alphas back onto the exact grid values
        grid = torch.tensor(alphas, dtype=torch.float64)
        index = (grid.log()[None] - best.detach().cpu().double().log()[:, None]).abs().argmin(1)
        return grid[index], -torch.as_tensor(cv_scores).reshape(-1).cpu()

    def _summary(self, N, alphas, alpha, cv_r2, device, start_time) -> dict:
        chosen = alpha.double().cpu().numpy()
        counts = {f"{a:g}": int(np.sum(np.isclose(chosen, a))) for a in alphas}
        r2 = cv_r2.cpu().numpy()
        edge = None
        if len(alphas) > 1:
            at_edge = float(np.mean(np.isclose(chosen, alphas[0]) | np.isclose(chosen, alphas[-1])))
            edge = round(at_edge, 4)
        return {
            "n_train": int(N), "alpha_counts": counts, "fraction_alpha_at_grid_edge": edge,
            "cv_r2_mean": None if np.all(np.isnan(r2)) else float(np.nanmean(r2)),
            "seconds": round(time.perf_counter() - start_time, 2), "device": str(device),
            "versions": versions(),
        }

    def _who(self) -> str:
        parts = [p for p in (self.config.subject, self.config.target_name) if p]
        return "/".join(parts) if parts else "ridge decoder"

    # -- prediction --------------------------------------------------------------------------------------------
    def forward(self, betas, subject: str | None = None) -> torch.Tensor:
        return self.predict(betas, subject=subject)

    @torch.no_grad()
    def predict(self, betas, *, subject: str | None = None, rescale: bool = False) -> torch.Tensor:
        """Predicted targets ``(N, *target_shape)`` on the decoder's device and dtype.

        Args:
            betas: ``(N, num_voxels)`` float array or tensor, the same preprocessing as the training betas.
            subject: if given, must be the subject the decoder was fitted on.
            rescale: Brain-Diffuser's post-hoc step (scripts/cliptext_regression.py): z-score each predicted
                column over this batch, then give it the training targets' mean and std. It uses the batch's own
                statistics, so predict the whole test split in one call (Brain-Diffuser used 982 images).
        """
        if not self.is_fitted:
            raise RuntimeError(f"{self._who()} is not fitted: call fit(betas, targets) or from_pretrained(path)")
        if subject is not None and self.config.subject is not None and subject != self.config.subject:
            raise ValueError(f"this decoder was fitted on {self.config.subject}, not {subject}")
        V = int(self.config.num_voxels)
        x = torch.as_tensor(betas)
        if x.ndim != 2 or x.shape[1] != V:
            raise ValueError(f"betas for {self._who()} must have shape (N, {V}) — {V} voxels, as in training — "
                             f"got {tuple(x.shape)}" + (" (use betas[None] for one row)" if x.ndim == 1 else ""))
        if not torch.isfinite(x).all():
            bad = torch.nonzero(~torch.isfinite(x).all(1)).flatten()[:5].tolist()
            raise ValueError(f"betas contain NaN or inf values (first bad rows: {bad})")
        dtype = self.coef.dtype
        x = (x.to(self.coef.device, dtype) - self.beta_mean) / self.beta_scale
        if self.basis is not None:
            x = x @ self.basis
        y = x @ self.coef + self.intercept
        if rescale:
            if y.shape[0] < 2:
                raise ValueError("rescale=True standardises predictions over the batch: it needs at least 2 rows")
            std = y.std(0, correction=0)
            z = (y - y.mean(0)) / torch.where(std > 0, std, torch.ones_like(std))
            y = z * self.target_std + self.target_mean
        return y.to(dtype).reshape(y.shape[0], *self.target_shape)

    # -- saving and loading ------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs):
        """Write ``config.json`` and ``model.safetensors`` (each atomically).

        diffusers' ``DiffusionPipeline.save_pretrained`` calls this for the component's subfolder; keyword
        arguments it may pass (``safe_serialization``, ``variant``, ...) do not apply and are ignored.
        """
        if not self.is_fitted:
            raise RuntimeError(f"{self._who()} is not fitted; there is nothing to save")
        os.makedirs(save_directory, exist_ok=True)
        tensors = {name: buf.detach().to("cpu").contiguous() for name, buf in self.named_buffers()}
        weights_path = os.path.join(save_directory, WEIGHTS_NAME)
        save_safetensors_atomic(tensors, weights_path, metadata={"format": "pt", "fit_id": self.config.fit_id})
        atomic_write_text(os.path.join(save_directory, CONFIG_NAME), self.to_json_string())

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, subfolder: str | None = None,
                        revision: str | None = None, dtype: torch.dtype | None = None,
                        torch_dtype: torch.dtype | None = None, device=None, device_map=None, **kwargs):
        """Load a decoder saved by ``save_pretrained``: a folder, ``simnsd/<name>``, or a Hub repo id.

        ``torch_dtype``/``device_map`` and the other loader arguments diffusers passes are accepted so that
        ``DiffusionPipeline.from_pretrained`` can load the decoder as a component.
        """
        unknown = set(kwargs) - _IGNORED_LOADER_KWARGS
        if unknown:
            raise TypeError(f"RidgeDecoder.from_pretrained got unexpected arguments {sorted(unknown)}")
        if kwargs.get("quantization_config") is not None:
            raise ValueError("ridge decoders cannot be quantized")
        if isinstance(device_map, dict):
            raise ValueError("a ridge decoder is one block of weights: pass device_map as one device, not a dict")
        folder = _local_folder(resolve_pretrained(str(pretrained_model_name_or_path)), subfolder, revision)
        config_path, weights_path = os.path.join(folder, CONFIG_NAME), os.path.join(folder, WEIGHTS_NAME)
        for path in (config_path, weights_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{folder}: no {os.path.basename(path)} — not a saved RidgeDecoder")
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        if config.get("_class_name") != cls.__name__:
            raise ValueError(f"{config_path} describes a {config.get('_class_name')!r}, not a {cls.__name__}")
        init_kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
        if init_kwargs.get("fit_id") is None:
            raise ValueError(f"{config_path} has no fit_id: it does not describe a fitted decoder")
        with torch.device("meta"):
            model = cls(**init_kwargs)
        with safe_open(weights_path, framework="pt") as f:
            stored_id = (f.metadata() or {}).get("fit_id")
            state = {name: f.get_tensor(name) for name in f.keys()}
        if stored_id != init_kwargs["fit_id"]:
            raise ValueError(f"{folder}: config.json (fit {init_kwargs['fit_id']}) and model.safetensors "
                             f"(fit {stored_id}) come from different fits")
        expected = model._buffer_shapes()
        if set(state) != set(expected):
            raise ValueError(f"{weights_path} holds tensors {sorted(state)}, expected {sorted(expected)}")
        for name, shape in expected.items():
            if tuple(state[name].shape) != shape:
                raise ValueError(f"{weights_path}: {name} has shape {tuple(state[name].shape)}, the config says {shape}")
        model.load_state_dict(state, assign=True)
        target_device = device if device is not None else (device_map if device_map not in (None, "auto") else None)
        if target_device is not None:
            model.to(target_device)
        if (dtype or torch_dtype) is not None:
            model.to(dtype or torch_dtype)
        return model.eval()


def _gram(Xs: torch.Tensor, dual: bool, block_bytes: int) -> torch.Tensor:
    """``Xs Xsᵀ`` (dual) or ``Xsᵀ Xs`` in float64, accumulated over blocks of voxels or of rows."""
    N, V = Xs.shape
    size = N if dual else V
    gram = torch.zeros(size, size, dtype=torch.float64, device=Xs.device)
    step = max(1, block_bytes // (8 * size))
    for start in range(0, V if dual else N, step):
        block = (Xs[:, start : start + step] if dual else Xs[start : start + step].T).double()
        gram.addmm_(block, block.T)
    return gram


def _eigh_numerical_rank(gram: torch.Tensor):
    """Eigenpairs of a float64 Gram matrix above its numerical rank threshold.

    Centring makes one direction of the kernel exactly null, and round-off gives it an eigenvalue of
    ~1e-16 λ_max that 1 / (λ + α) must not amplify when α is tiny (Takagi's grid starts at 1e-6).
    """
    lam, vectors = torch.linalg.eigh(gram)
    keep = lam > lam.max() * gram.shape[0] * torch.finfo(torch.float64).eps
    return lam[keep], vectors[:, keep]


def _refit_dual(lam, Q, Xs, Yc, alpha, block_bytes, out=None):
    """N <= V, ``Xs Xsᵀ = Q Λ Qᵀ``: ``W = B C``, ``B = Xsᵀ Q Λ^-1/2`` (V x k, orthonormal columns) and
    ``C[j, t] = √λ_j / (λ_j + α_t) (Qᵀ Y)[j, t]``. Returns ``(B, C)``, or ``(None, W)`` when V x T is smaller.

    ``out`` (N x T, may be ``Yc`` itself: each block of columns is read before it is written) holds C."""
    N, V = Xs.shape
    T = Yc.shape[1]
    k = lam.shape[0]
    Q, sqrt_lam, alpha = Q.float(), lam.sqrt(), alpha.to(lam.device)
    basis = (Xs.T @ Q) / sqrt_lam.float()
    coef = out[:k] if out is not None else torch.empty(k, T, dtype=torch.float32)
    for cols in _column_blocks(T, max(1, block_bytes // (4 * N))):
        QtY = (Q.T @ Yc[:, cols].to(Q.device)).double()
        coef[:, cols] = (QtY * (sqrt_lam[:, None] / (lam[:, None] + alpha[None, cols]))).float().cpu()
    if k * (V + T) < V * T:
        return basis, coef
    weights = torch.empty(V, T, dtype=torch.float32)
    for cols in _column_blocks(T, max(1, block_bytes // (4 * V))):
        weights[:, cols] = (basis @ coef[:, cols].to(basis.device)).cpu()
    return None, weights


def _refit_primal(lam, P, Xs, Yc, alpha, block_bytes, out=None):
    """N > V, ``Xsᵀ Xs = P Λ Pᵀ``: ``W[:, t] = P diag(1 / (λ + α_t)) Pᵀ Xsᵀ Y[:, t]``. Returns ``(None, W)``;
    ``out`` (N x T, may be ``Yc``) holds W in its first V rows."""
    N, V = Xs.shape
    T = Yc.shape[1]
    P, alpha = P.float(), alpha.to(lam.device)
    weights = out[:V] if out is not None else torch.empty(V, T, dtype=torch.float32)
    for cols in _column_blocks(T, max(1, block_bytes // (4 * N))):
        PtXtY = (P.T @ (Xs.T @ Yc[:, cols].to(P.device))).double()
        weights[:, cols] = (P @ (PtXtY / (lam[:, None] + alpha[None, cols])).float()).cpu()
    return None, weights


def _local_folder(name_or_path: str, subfolder: str | None, revision: str | None) -> str:
    if os.path.isdir(name_or_path):
        return os.path.join(name_or_path, subfolder) if subfolder else name_or_path
    from huggingface_hub import snapshot_download

    pattern = f"{subfolder}/*" if subfolder else "*"
    try:
        root = snapshot_download(name_or_path, revision=revision, allow_patterns=[pattern])
    except Exception as error:  # offline, missing repo, bad id: say what was looked for
        raise OSError(f"{name_or_path!r} is neither a local folder nor a downloadable Hub repository "
                      f"({type(error).__name__}: {error})") from error
    return os.path.join(root, subfolder) if subfolder else root

