"""Training of :class:`~fgb2i_hf.models.mindeye.MindEyeModel` on accelerate, with MindEye1's schedule.

The schedule (Scotti et al. 2023; MindEye1 ``src/Train_MindEye.py``, commit 6b30ea5):

* 240 epochs of batches of 32 (l.89, l.125), one step per batch, partial batches dropped (``num_train //
  batch_size`` steps per epoch, l.368); each epoch sees every training image once, with one of its repetitions
  (``voxel[:, train_i % 3]``, l.589; here the repetition is drawn per image and epoch);
* AdamW, weight decay 1e-2 on every parameter whose name does not contain "bias" (l.351-358: MindEye's no-decay
  list also names ``LayerNorm.weight``, but its modules are called ``lin0.1`` etc., so in effect only biases are
  exempt; the same holds here);
* OneCycleLR to max lr 3e-4, ``pct_start = 2 / epochs``, ``final_div_factor = 1000`` (l.367-375; torch's defaults
  for the rest, momentum cycling included);
* loss = contrastive + 30 * prior MSE (l.632); the contrastive term is BiMixCo (temperature 0.006) for the first
  ``int(0.33 * epochs)`` epochs, then SoftCLIP with a per-epoch temperature from 0.004 to 0.0075 (l.519, l.598-627);
* plus, ours, the low-level head's L1 loss (MindEye1 trained it in a separate run: batch 8, 120 epochs, max lr 5e-4;
  its weights are disjoint from the rest, so only the shared batches and schedule differ).

Not reproduced: MindEye1's image augmentation before CLIP (kornia crops, flips, colour jitter; ``use_image_aug``,
l.201-211): targets are computed once and cached (``fgb2i_hf.decoders.targets``), so they do not change per epoch.

Reproducibility: the data order is a function of (seed, epoch) only (:class:`ImageEpochSampler`, whose epoch this
trainer sets before every pass, so accelerate's own epoch counter cannot shift it), and the random draws of step s
(dropout, MixCo, prior timesteps/noise/condition dropout) come from a generator seeded with (seed, s, process):
a resumed run, even one resumed in another epoch than it stopped in, ends bit-identical to an uninterrupted run.
Checkpoints are ``accelerator.save_state`` written to ``checkpoint-<step>.tmp`` and renamed; ``log.jsonl`` holds
each logged step once (a resume drops lines written after its checkpoint).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from ..core import append_jsonl, atomic_write_json, publish_folder, scratch_folder, versions
from ..core.checkpoints import STATE_NAME, find_checkpoint, list_checkpoints, save_accelerate_checkpoint, truncate_log
from ..models.mindeye.losses import (bimixco_epochs, bimixco_loss, low_level_loss, mixco, soft_clip_loss,
                                     softclip_temperature)
from ..models.mindeye.retrieval import top1_identification

LOG_NAME = "log.jsonl"
CONFIG_NAME = "mindeye_training_config.json"
REPEATS = ("one_per_image", "all_trials")


@dataclass
class MindEyeTrainingConfig:
    """Settings of :class:`MindEyeTrainer` (defaults: MindEye1, ``src/Train_MindEye.py``); parsed by trl's
    ``TrlParser`` from YAML + CLI."""

    output_dir: str = field(default="outputs/mindeye", metadata={"help": "Checkpoints, log.jsonl and final/ go here."})
    num_train_epochs: int = field(default=240, metadata={"help": "Epochs (MindEye1: 240)."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Batch size per process (MindEye1: 32)."})
    max_lr: float = field(default=3e-4, metadata={"help": "Peak learning rate (MindEye1: 3e-4)."})
    lr_scheduler_type: str = field(default="cycle", metadata={
        "help": "'cycle' = OneCycleLR (MindEye1) or 'linear' = MindEye1's LinearLR option.",
        "choices": ["cycle", "linear"]})
    pct_start: float | None = field(default=None, metadata={
        "help": "OneCycleLR warm-up fraction (default 2 / num_train_epochs, MindEye1)."})
    final_div_factor: float = field(default=1000.0, metadata={"help": "OneCycleLR final_div_factor (MindEye1: 1000)."})
    weight_decay: float = field(default=1e-2, metadata={"help": "AdamW weight decay, not on biases (MindEye1: 1e-2)."})
    mixup_pct: float = field(default=0.33, metadata={
        "help": "Fraction of epochs trained with BiMixCo before SoftCLIP (MindEye1: 0.33)."})
    bimixco_temperature: float = field(default=0.006, metadata={"help": "BiMixCo temperature (MindEye1: 0.006)."})
    softclip_temperature_start: float = field(default=0.004, metadata={
        "help": "SoftCLIP temperature of its first epoch (MindEye1: 0.004)."})
    softclip_temperature_end: float = field(default=0.0075, metadata={
        "help": "SoftCLIP temperature of the last epoch, cosine in between (MindEye1: 0.0075)."})
    mixco_beta: float = field(default=0.15, metadata={"help": "MixCo lambda ~ Beta(b, b) (MindEye1: 0.15)."})
    mixco_select_prob: float = field(default=0.5, metadata={"help": "Fraction of rows MixCo mixes (MindEye1: 0.5)."})
    prior_loss_weight: float = field(default=30.0, metadata={"help": "Weight of the prior MSE (MindEye1: 30)."})
    low_level_loss_weight: float = field(default=1.0, metadata={
        "help": "Weight of the low-level L1 / 0.18215 loss (ours; MindEye1 trained it alone)."})
    repeats: str = field(default="one_per_image", metadata={
        "help": "'one_per_image': each epoch visits every (subject, image) once with one of its trials (MindEye1); "
                "'all_trials': every row once.", "choices": list(REPEATS)})
    max_grad_norm: float = field(default=0.0, metadata={"help": "Gradient clipping (0: none, as MindEye1)."})
    mixed_precision: str = field(default="no", metadata={
        "help": "accelerate mixed precision (MindEye1: fp16 on GPU; 'no' on CPU).", "choices": ["no", "fp16", "bf16"]})
    max_steps: int = field(default=-1, metadata={
        "help": "If > 0, stop after this many steps; the schedule still spans num_train_epochs (for short or split runs)."})
    logging_steps: int = field(default=1, metadata={"help": "Write log.jsonl every N steps."})
    save_steps: int = field(default=0, metadata={"help": "Checkpoint every N steps (0: only at the end)."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint folder."})
    seed: int = field(default=42, metadata={"help": "Seed of initialisation, data order and every random draw (MindEye1: 42)."})
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bar."})

    def __post_init__(self):
        if self.repeats not in REPEATS:
            raise ValueError(f"repeats must be one of {REPEATS}, got {self.repeats!r}")
        if self.num_train_epochs < 1 or self.per_device_train_batch_size < 2:
            raise ValueError("num_train_epochs must be >= 1 and per_device_train_batch_size >= 2 (contrastive losses)")
        if not 0.0 <= self.mixup_pct <= 1.0:
            raise ValueError(f"mixup_pct must lie in [0, 1], got {self.mixup_pct}")


@dataclass
class MindEyeTrainData:
    """Training rows and their cached targets.

    Attributes:
        betas: (R, V_max) float array, rows zero-padded on the right to the widest subject.
        subjects: R subject names.
        image_index: (R,) row of each sample's image in the target arrays.
        clip_targets: (N, T, D) CLIP image tokens per image (e.g. a memmap of a cached ``.npy``).
        latent_targets: (N, C, L, L) SD VAE latents per image, or None (no low-level training).
    """

    betas: np.ndarray
    subjects: list[str]
    image_index: np.ndarray
    clip_targets: np.ndarray
    latent_targets: np.ndarray | None = None

    def __post_init__(self):
        r = len(self.betas)
        if len(self.subjects) != r or len(self.image_index) != r:
            raise ValueError(f"{r} rows of betas, {len(self.subjects)} subjects, {len(self.image_index)} image indices")
        n = len(self.clip_targets)
        if r and (self.image_index.min() < 0 or self.image_index.max() >= n):
            raise ValueError(f"image_index must lie in [0, {n}) (the rows of clip_targets)")
        if self.latent_targets is not None and len(self.latent_targets) != n:
            raise ValueError(f"{len(self.latent_targets)} latent targets for {n} CLIP targets")

    def groups(self) -> list[np.ndarray]:
        """Rows grouped by (subject, image): the repetitions of one image for one subject."""
        keys: dict = {}
        for row, key in enumerate(zip(self.subjects, self.image_index.tolist())):
            keys.setdefault(key, []).append(row)
        return [np.asarray(rows) for rows in keys.values()]


class MindEyeBatches(Dataset):
    """Batches of :class:`MindEyeTrainData` rows as tensors (``__getitems__``: one gather per batch)."""

    def __init__(self, data: MindEyeTrainData):
        self.data = data

    def __len__(self):
        return len(self.data.betas)

    def __getitem__(self, row):
        return self.__getitems__([row])

    def __getitems__(self, rows):
        d = self.data
        rows = np.asarray(rows)
        images = d.image_index[rows]
        batch = {"betas": torch.from_numpy(np.asarray(d.betas[rows], dtype=np.float32)),
                 "subject": [d.subjects[r] for r in rows.tolist()],
                 "clip_targets": torch.from_numpy(np.asarray(d.clip_targets[images], dtype=np.float32))}
        if d.latent_targets is not None:
            batch["latent_targets"] = torch.from_numpy(np.asarray(d.latent_targets[images], dtype=np.float32))
        return batch


def _as_batch(batch):
    return batch


class ImageEpochSampler(Sampler[int]):
    """Row order of an epoch as a function of (seed, epoch) only.

    ``one_per_image``: the (subject, image) groups in a random order, each represented by one of its rows (MindEye1
    visits each image once per epoch with one repetition); ``all_trials``: a permutation of all rows.
    """

    def __init__(self, groups: list[np.ndarray], seed: int, repeats: str = "one_per_image"):
        self.groups, self.seed, self.repeats, self.epoch = groups, int(seed), repeats, 0
        self.n_rows = int(sum(len(g) for g in groups))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int) -> list[int]:
        rng = np.random.default_rng([self.seed, int(epoch)])
        if self.repeats == "all_trials":
            return rng.permutation(np.concatenate(self.groups)).tolist()
        picks = [g[rng.integers(len(g))] for g in self.groups]
        return [int(picks[i]) for i in rng.permutation(len(self.groups))]

    def __iter__(self):
        return iter(self.order(self.epoch))

    def __len__(self) -> int:
        return self.n_rows if self.repeats == "all_trials" else len(self.groups)


def step_seed(seed: int, step: int, process: int = 0) -> int:
    """The seed of step ``step``'s random draws on process ``process``."""
    return int(np.random.SeedSequence([int(seed), int(step), int(process)]).generate_state(1, np.uint64)[0] >> 1)


def run_exists(output_dir: str) -> list[str]:
    """What in ``output_dir`` marks an earlier run (log, checkpoints, final model); empty if none."""
    found = []
    for name in (LOG_NAME, "final"):
        if os.path.exists(os.path.join(output_dir, name)):
            found.append(name)
    checkpoints = os.path.join(output_dir, "checkpoints")
    if os.path.isdir(checkpoints) and os.listdir(checkpoints):
        found.append("checkpoints/")
    return found


class MindEyeTrainer:
    """MindEye1's training loop on accelerate (module docstring: schedule, losses, reproducibility).

    Args:
        model: a :class:`~fgb2i_hf.models.mindeye.MindEyeModel` (trained in place).
        config: :class:`MindEyeTrainingConfig`.
        train_data: :class:`MindEyeTrainData` (rows, subjects, cached targets).
        accelerator: an ``accelerate.Accelerator``; a default one is made otherwise.
    """

    def __init__(self, model, config: MindEyeTrainingConfig, train_data: MindEyeTrainData, accelerator=None):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        self.config = config
        if not config.resume_from_checkpoint:
            found = run_exists(config.output_dir)
            if found:
                raise FileExistsError(
                    f"{config.output_dir} already holds a run ({', '.join(found)}); resume it with "
                    "resume_from_checkpoint='latest', or choose another output_dir")
        self.accelerator = accelerator or Accelerator(
            mixed_precision=config.mixed_precision,
            # a mixed batch rarely holds every subject: the absent subjects' layers get no gradient under DDP
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        self.has_latents = train_data.latent_targets is not None and getattr(model, "low_level", None) is not None
        self.sampler = ImageEpochSampler(train_data.groups(), config.seed, config.repeats)
        dataloader = DataLoader(MindEyeBatches(train_data), batch_size=config.per_device_train_batch_size,
                                sampler=self.sampler, collate_fn=_as_batch, drop_last=True,
                                # its own generator: starting an epoch must not draw from the global RNG
                                generator=torch.Generator().manual_seed(config.seed))
        if len(dataloader) == 0:
            raise ValueError(f"{len(self.sampler)} samples per epoch make no full batch of "
                             f"{config.per_device_train_batch_size}")
        decay = [p for n, p in model.named_parameters() if p.requires_grad and "bias" not in n]
        no_decay = [p for n, p in model.named_parameters() if p.requires_grad and "bias" in n]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=config.max_lr)
        self.model, self.optimizer, self.dataloader = self.accelerator.prepare(model, optimizer, dataloader)
        self.steps_per_epoch = len(self.dataloader)
        self.total_steps = config.num_train_epochs * self.steps_per_epoch
        self.stop_step = min(config.max_steps, self.total_steps) if config.max_steps > 0 else self.total_steps
        if config.lr_scheduler_type == "cycle":
            pct = config.pct_start if config.pct_start is not None else 2 / config.num_train_epochs
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer, max_lr=config.max_lr, total_steps=self.total_steps,
                final_div_factor=config.final_div_factor, pct_start=pct)
        else:
            self.scheduler = torch.optim.lr_scheduler.LinearLR(self.optimizer, total_iters=self.total_steps)
        # stepped once per optimiser step by this loop (not by accelerate, which steps it once per process)
        self.accelerator.register_for_checkpointing(self.scheduler)
        self.bimixco_epochs = bimixco_epochs(config.num_train_epochs, config.mixup_pct)
        self.global_step = 0
        self.history: list[dict] = []

    # -- one step -------------------------------------------------------------------------------------------
    def temperature(self, epoch: int) -> float | None:
        """SoftCLIP temperature of ``epoch`` (None in the BiMixCo epochs)."""
        cfg = self.config
        if epoch < self.bimixco_epochs:
            return None
        return softclip_temperature(epoch, cfg.num_train_epochs, cfg.mixup_pct, cfg.softclip_temperature_start,
                                    cfg.softclip_temperature_end)

    def compute_loss(self, batch: dict, epoch: int) -> tuple[torch.Tensor, dict]:
        cfg = self.config
        betas, subjects, targets = batch["betas"], batch["subject"], batch["clip_targets"]
        perm = lambdas = None
        inputs = betas
        if epoch < self.bimixco_epochs:
            inputs, perm, lambdas, _ = mixco(betas, cfg.mixco_beta, cfg.mixco_select_prob, groups=subjects)
        out = self.model(inputs, subjects, clip_image_embeds=targets, low_level_betas=betas)
        brain = F.normalize(out.retrieval_embeds.flatten(1).float(), dim=-1)
        image = F.normalize(targets.flatten(1).float(), dim=-1)
        temperature = self.temperature(epoch)
        if temperature is None:
            contrastive = bimixco_loss(brain, image, cfg.bimixco_temperature, perm, lambdas)
        else:
            contrastive = soft_clip_loss(brain, image, temperature)
        loss = contrastive
        logs = {"loss_contrastive": float(contrastive.detach()),
                "temperature": temperature if temperature is not None else cfg.bimixco_temperature,
                "phase": "bimixco" if temperature is None else "softclip"}
        if out.prior_loss is not None:
            loss = loss + cfg.prior_loss_weight * out.prior_loss
            logs["loss_prior"] = float(out.prior_loss.detach())
        if self.has_latents and out.blurry_latents is not None:
            low = low_level_loss(out.blurry_latents.float(), batch["latent_targets"])
            loss = loss + cfg.low_level_loss_weight * low
            logs["loss_low_level"] = float(low.detach())
        with torch.no_grad():
            image_top1, brain_top1 = top1_identification(brain, image)
        logs.update(loss=float(loss.detach()), train_image_retrieval=image_top1, train_brain_retrieval=brain_top1)
        return loss, logs

    def training_step(self, batch: dict, epoch: int) -> dict:
        acc = self.accelerator
        torch.manual_seed(step_seed(self.config.seed, self.global_step, acc.process_index))
        self.model.train()
        loss, logs = self.compute_loss(batch, epoch)
        acc.backward(loss)
        if self.config.max_grad_norm > 0:
            logs["grad_norm"] = float(acc.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm))
        logs["lr"] = float(self.scheduler.get_last_lr()[0])
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return logs

    # -- loop -----------------------------------------------------------------------------------------------
    def epoch_batches(self, epoch: int, skip: int = 0):
        """The prepared dataloader's batches of ``epoch``, the first ``skip`` left out. The epoch is set on the
        prepared loader (which passes it to the sampler) before iterating, so the order never follows accelerate's
        own iteration counter, which a fresh process (a resume) would restart at 0."""
        self.dataloader.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        loader = self.accelerator.skip_first_batches(self.dataloader, skip) if skip else self.dataloader
        return loader

    def train(self) -> list[dict]:
        cfg, acc = self.config, self.accelerator
        if cfg.resume_from_checkpoint:
            self.load_checkpoint(cfg.resume_from_checkpoint)
        elif acc.is_main_process:
            atomic_write_json(os.path.join(cfg.output_dir, CONFIG_NAME), {"training": asdict(cfg), "versions": versions()},
                              default=str)
        epoch, skip = divmod(self.global_step, self.steps_per_epoch)
        bar = tqdm(total=self.stop_step, initial=self.global_step, desc="MindEye",
                   disable=cfg.disable_tqdm or not acc.is_local_main_process)
        while self.global_step < self.stop_step:
            for batch in self.epoch_batches(epoch, skip):
                logs = self.training_step(batch, epoch)
                self.global_step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.4g}", phase=logs["phase"])
                if self.global_step % cfg.logging_steps == 0 or self.global_step == self.stop_step:
                    self._log({"step": self.global_step, "epoch": epoch, **logs})
                if cfg.save_steps and self.global_step % cfg.save_steps == 0:
                    self.save_checkpoint()
                if self.global_step >= self.stop_step:
                    break
            epoch, skip = epoch + 1, 0
        bar.close()
        if not (cfg.save_steps and self.global_step % cfg.save_steps == 0):
            self.save_checkpoint()
        return self.history

    def _log(self, logs: dict) -> None:
        self.history.append(logs)
        if self.accelerator.is_main_process:
            append_jsonl(os.path.join(self.config.output_dir, LOG_NAME), [logs])

    # -- checkpoints ----------------------------------------------------------------------------------------
    def checkpoint_dir(self) -> str:
        return os.path.join(self.config.output_dir, "checkpoints")

    def list_checkpoints(self) -> list[str]:
        return list_checkpoints(self.checkpoint_dir())

    def save_checkpoint(self) -> str:
        """``accelerator.save_state`` + ``trainer_state.json`` as ``checkpoint-<step>``, swapped in whole when
        complete."""
        state = {"global_step": self.global_step, "steps_per_epoch": self.steps_per_epoch, "config": asdict(self.config)}
        return save_accelerate_checkpoint(self.accelerator, self.checkpoint_dir(), self.global_step, state,
                                          self.config.save_total_limit)

    def load_checkpoint(self, path: str) -> None:
        path = find_checkpoint(path, self.checkpoint_dir())
        with open(os.path.join(path, STATE_NAME), encoding="utf-8") as f:
            state = json.load(f)
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise ValueError(f"{path} was written with {state['steps_per_epoch']} steps per epoch, this run has "
                             f"{self.steps_per_epoch}: the data or batch size changed")
        self.accelerator.load_state(path)
        self.global_step = int(state["global_step"])
        if self.accelerator.is_main_process:
            truncate_log(os.path.join(self.config.output_dir, LOG_NAME), self.global_step)
        self.accelerator.wait_for_everyone()


    def save_model(self, path: str | None = None, extra_config: dict | None = None) -> str:
        """``save_pretrained`` to ``path`` (default ``<output_dir>/final``) with the training config and versions,
        written to a scratch folder and swapped in whole."""
        acc = self.accelerator
        path = path or os.path.join(self.config.output_dir, "final")
        acc.wait_for_everyone()
        if acc.is_main_process:
            scratch = scratch_folder(path)
            acc.unwrap_model(self.model).save_pretrained(scratch)
            atomic_write_json(os.path.join(scratch, CONFIG_NAME),
                              {"training": asdict(self.config), **(extra_config or {}), "global_step": self.global_step,
                               "versions": versions()}, default=str)
            publish_folder(scratch, path)
        acc.wait_for_everyone()
        return path


__all__ = ["ImageEpochSampler", "MindEyeBatches", "MindEyeTrainData", "MindEyeTrainer", "MindEyeTrainingConfig",
           "run_exists", "step_seed"]
