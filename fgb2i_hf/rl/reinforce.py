"""Reinforced co-training of BrainPrefixGPT2 (FgB2I stage 2) on accelerate.

The paper's loss, for a batch of brains with reference captions:

    L = L_CE + α·L_obj + β·L_ti + γ·L_ii,       L_x = −E_{c ~ p(·|brain)} [(r_x(c) − b_x) · log p(c|brain)]

where c are K captions sampled per brain by ``model.generate`` and r_x are rewards (``fgb2i_hf.rewards``;
trl's convention ``reward(completions, **columns)``). Because every reward is scored on the same samples,
the weighted sum of REINFORCE terms is one REINFORCE term with advantage A = Σ_x w_x (r_x − b_x).

Baselines b_x (the paper does not say which; all three are here):

* ``none``: b = 0 — plain REINFORCE (Williams 1992), as the paper describes;
* ``greedy``: b = r_x(greedy caption of the same brain) — self-critical sequence training (Rennie et al. 2017);
* ``leave_one_out``: b = mean of r_x over the other K − 1 samples of the same brain — RLOO (Kool et al. 2019).

Optionally a KL penalty to a frozen copy of the starting (stage-1) model, estimated per sampled token with
Schulman's k3 estimator, keeps the policy near its CE solution.

Why not trl's GRPO/RLOO trainers: they need a text prompt and recompute log-probs from token ids only; a
continuous brain prefix cannot pass through them (hf-gotchas §4). This loop speaks trl's reward convention.

Implementation notes:
* the CE rows and the K·B sampled rows go through ONE forward pass (DDP-safe: one forward, one backward);
* sampling runs on the unwrapped model without gradients; dropout is disabled by default so the sampled
  policy and the scored policy are the same distribution;
* a checkpoint is ``accelerator.save_state`` plus ``trainer_state.json``, written to a temporary folder and
  renamed, so a kill never leaves a half checkpoint; resume restores model, optimiser, scheduler and RNG and
  skips the batches already seen, so a resumed run ends with the parameters of an uninterrupted one, also when
  it crosses into later epochs (the data order is a function of (seed, epoch) only);
* ``log.jsonl`` holds each logged step once: a resumed run first drops the records after its checkpoint's step.
  A run that does not resume refuses an ``output_dir`` that already holds a run (its ``log.jsonl``, checkpoints
  or final model), rather than appending to or mixing with it: resume it, or choose another folder.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from accelerate.utils import gather_object
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from ..core import append_jsonl, atomic_write_json
from ..core.checkpoints import (STATE_NAME, check_random_states, find_checkpoint, list_checkpoints, read_json_state,
                               reading, save_accelerate_checkpoint, truncate_log)
from ..data.collate import CAPTION_COLUMNS, BrainCaptionCollator, check_captions
from ..models.brain_prefix_gpt2 import decode_captions
from ..rewards.registry import call_reward, get_reward

BASELINES = ("none", "greedy", "leave_one_out")
LOG_NAME = "log.jsonl"


@dataclass
class ReinforceConfig:
    """Settings of :class:`ReinforceTrainer`; parsed from YAML + CLI by ``recipes/train_rl.py`` (TrlParser)."""

    output_dir: str = field(default="outputs/rl", metadata={"help": "Where checkpoints, logs and the final model go."})
    rewards: list[str] = field(
        default_factory=lambda: ["object_accuracy", "clip_text_image", "clip_image_image"],
        metadata={"help": "Reward names (fgb2i_hf.rewards registry) or 'package.module:attribute'."})
    reward_weights: list[float] = field(
        default_factory=lambda: [0.01, 0.01, 0.01],
        metadata={"help": "One weight per reward: the paper's α, β, γ (0.01 each)."})
    reward_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Per-reward keyword arguments, {reward name: {kwarg: value}} (JSON on the CLI)."})
    num_samples: int = field(default=4, metadata={"help": "K: captions sampled per brain."})
    baseline: str = field(default="none", metadata={"help": f"Advantage baseline, one of {BASELINES}."})
    ce_weight: float = field(default=1.0, metadata={"help": "Weight of the cross-entropy term on the reference caption."})
    kl_coef: float = field(default=0.0, metadata={"help": "KL penalty to the frozen starting model (0: none)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (log-probs use the same)."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (0: off)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling (1.0: off)."})
    max_new_tokens: int | None = field(default=None, metadata={"help": "Sample length cap; default: model.config.max_caption_tokens."})
    caption_column: str = field(default="fine_captions", metadata={"help": "CE targets: 'fine_captions' or 'captions'."})
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear warm-up steps."})
    lr_scheduler_type: str = field(default="constant_with_warmup", metadata={"help": "transformers scheduler name."})
    num_train_epochs: float = field(default=10, metadata={"help": "Epochs over the training rows (the paper: 10)."})
    max_steps: int = field(default=-1, metadata={"help": "If > 0: total optimiser steps, overriding epochs."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Brains per batch per process."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimiser step."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0: off)."})
    disable_dropout: bool = field(default=True, metadata={"help": "Zero all dropout so sampling and scoring agree."})
    logging_steps: int = field(default=10, metadata={"help": "Log every N optimiser steps."})
    save_steps: int = field(default=0, metadata={"help": "Checkpoint every N optimiser steps (0: only at the end)."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint folder."})
    seed: int = field(default=42, metadata={"help": "Seed of data order, sampling and initialisation."})
    report_to: list[str] = field(default_factory=list, metadata={"help": "accelerate trackers, e.g. ['tensorboard']."})

    def __post_init__(self):
        """Every field is checked here, so a recipe stops at parsing, before any data is built or folder made."""
        if isinstance(self.reward_kwargs, str):
            self.reward_kwargs = json.loads(self.reward_kwargs) if self.reward_kwargs.strip() else None
        self.reward_kwargs = dict(self.reward_kwargs or {})
        # a single value in YAML (`rewards: object_accuracy`) is a list of one, never a list of characters
        for name in ("rewards", "reward_weights", "report_to"):
            value = getattr(self, name)
            if isinstance(value, (str, int, float)):
                setattr(self, name, [value])
        self.report_to = [r for r in self.report_to if str(r).lower() != "none"]
        if not all(isinstance(r, str) and r for r in self.rewards):  # [] is allowed: the CE-only control run
            raise ValueError(f"rewards must be a list of reward names, got {self.rewards!r}")
        if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w)
                   for w in self.reward_weights):
            raise ValueError(f"reward_weights must be finite numbers, got {self.reward_weights!r}")
        if len(self.reward_weights) != len(self.rewards):
            raise ValueError(f"reward_weights has {len(self.reward_weights)} values for {len(self.rewards)} "
                             f"rewards {self.rewards}")
        unknown = set(self.reward_kwargs) - set(self.rewards)
        if unknown:
            raise ValueError(f"reward_kwargs names rewards that are not in rewards={self.rewards}: {sorted(unknown)}")
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}")
        if self.baseline == "leave_one_out" and self.num_samples < 2:
            raise ValueError("baseline='leave_one_out' needs num_samples >= 2")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        self._check_numbers()
        if self.caption_column not in CAPTION_COLUMNS:
            raise ValueError(f"caption_column must be one of {CAPTION_COLUMNS}, got {self.caption_column!r}")
        from transformers import SchedulerType

        schedulers = [s.value for s in SchedulerType]
        if self.lr_scheduler_type not in schedulers:
            raise ValueError(f"lr_scheduler_type must be one of {schedulers}, got {self.lr_scheduler_type!r}")

    def _check_numbers(self) -> None:
        def number(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            return value

        for name in ("learning_rate", "num_train_epochs", "temperature"):
            if not number(name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("weight_decay", "ce_weight", "kl_coef", "max_grad_norm", "warmup_steps", "save_steps", "top_k"):
            if number(name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps", "save_total_limit"):
            if number(name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not 0 < number("top_p") <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if number("max_steps") == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be a positive number of steps, or -1 (use num_train_epochs), "
                             f"got {self.max_steps!r}")
        if self.max_new_tokens is not None and number("max_new_tokens") < 1:
            raise ValueError(f"max_new_tokens must be >= 1 (or None: the model's max_caption_tokens), "
                             f"got {self.max_new_tokens!r}")


class EpochShuffleSampler(Sampler[int]):
    """A permutation of range(n) that depends only on (seed, epoch): the same on every process and after resume."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.n).tolist())

    def __len__(self) -> int:
        return self.n


def sequence_mask(tokens: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 for tokens up to and including the first eos of each row (all tokens if a row has none)."""
    is_eos = tokens == eos_token_id
    after_first_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    return (~after_first_eos).long()


def advantages(rewards: np.ndarray, num_samples: int, baseline: str, greedy: np.ndarray | None = None) -> np.ndarray:
    """Rewards (B·K,) of K consecutive samples per brain -> advantages r − b under the chosen baseline."""
    r = rewards.reshape(-1, num_samples)
    if baseline == "none":
        b = np.zeros_like(r)
    elif baseline == "greedy":
        if greedy is None:
            raise ValueError("the greedy baseline needs the greedy captions' rewards")
        b = np.repeat(greedy.reshape(-1, 1), num_samples, axis=1)
    elif baseline == "leave_one_out":
        b = (r.sum(1, keepdims=True) - r) / (num_samples - 1)
    else:
        raise ValueError(f"unknown baseline {baseline!r}")
    return (r - b).reshape(-1)


def _pad_right(rows: list[torch.Tensor], value: int) -> torch.Tensor:
    length = max(r.shape[0] for r in rows)
    return torch.stack([F.pad(r, (0, length - r.shape[0]), value=value) for r in rows])


class ReinforceTrainer:
    """REINFORCE co-training of a :class:`~fgb2i_hf.BrainPrefixGPT2` with pluggable rewards.

    Args:
        model: the stage-1 (CE-trained) model; trained in place.
        tokenizer: its tokenizer (eos ends captions).
        config: :class:`ReinforceConfig`.
        train_dataset: NSD rows (``fgb2i_hf.data.load_nsd``); every column but ``betas`` reaches the rewards.
        rewards: reward callables in the order of ``config.rewards``; built from the names when omitted,
            with ``reward_kwargs`` and, for the resources each reward declares (its ``needs``: ``clip``,
            ``stimuli``, ``renderer``, ``device``), ``reward_context``: a ``fgb2i_hf.rewards.RewardResources`` or a
            dict of ready values (e.g. ``{"stimuli": NSDStimuli(root), "clip": scorer}``); ``device`` defaults to
            the accelerator's.
        accelerator: an ``accelerate.Accelerator``; a default one is made otherwise.
    """

    def __init__(self, model, tokenizer, config: ReinforceConfig, train_dataset, rewards: Sequence[Callable] | None = None,
                 reward_context=None, accelerator=None):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, set_seed

        self.config = config
        self.tokenizer = tokenizer
        set_seed(config.seed)
        self.accelerator = accelerator or Accelerator(
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with=config.report_to or None, project_dir=config.output_dir,
            # a batch rarely holds every subject: the absent subjects' layers get no gradient
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        check_captions(train_dataset, config.caption_column, "train_dataset")
        self.reward_fns = list(rewards) if rewards is not None else self._build_rewards(reward_context or {})
        if len(self.reward_fns) != len(config.rewards):
            raise ValueError(f"{len(self.reward_fns)} reward callables for {len(config.rewards)} reward names")
        self.reward_weights = np.asarray(config.reward_weights, dtype=np.float64)
        if config.disable_dropout:
            for module in model.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0
        self.reference_model = None
        if config.kl_coef > 0:
            import copy

            self.reference_model = copy.deepcopy(model).eval().requires_grad_(False)
        self.columns = [c for c in train_dataset.column_names if c != "betas"]
        self.collator = BrainCaptionCollator(tokenizer, caption_column=config.caption_column,
                                             max_length=getattr(model.config, "max_caption_tokens", 77),
                                             seed=config.seed, passthrough=tuple(self.columns))
        self.sampler = EpochShuffleSampler(len(train_dataset), config.seed)
        dataloader = DataLoader(train_dataset, batch_size=config.per_device_train_batch_size, sampler=self.sampler,
                                collate_fn=self.collator, drop_last=False,
                                # its own generator: starting an epoch must not draw from the global RNG that
                                # sampling uses, or a resumed run would sample differently
                                generator=torch.Generator().manual_seed(config.seed))
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.steps_per_epoch = math.ceil(len(dataloader) / self.accelerator.num_processes
                                         / config.gradient_accumulation_steps) or 1
        self.total_steps = (config.max_steps if config.max_steps > 0
                            else math.ceil(config.num_train_epochs * self.steps_per_epoch))
        from transformers import get_scheduler

        scheduler = get_scheduler(config.lr_scheduler_type, optimizer, num_warmup_steps=config.warmup_steps,
                                  num_training_steps=self.total_steps)
        self.model, self.optimizer, self.dataloader, self.scheduler = self.accelerator.prepare(
            model, optimizer, dataloader, scheduler)
        if self.reference_model is not None:
            self.reference_model.to(self.accelerator.device)
        self.global_step = 0
        self.history: list[dict[str, float]] = []
        self.timings: dict[str, list[float]] = defaultdict(list)

    # -- rewards ------------------------------------------------------------------------------------------
    def _build_rewards(self, resources) -> list[Callable]:
        """Each configured reward, given the resources it declares (``fgb2i_hf.rewards.reward_needs``) from
        ``resources``, and the trainer's device for those that run models."""
        from ..rewards import RewardResources

        if isinstance(resources, dict):
            resources = RewardResources(values=resources)
        resources.setdefault("device", self.accelerator.device)
        return [get_reward(name, resources=resources, **self.config.reward_kwargs.get(name, {}))
                for name in self.config.rewards]

    def score(self, completions: list[str], columns: dict[str, list], repeats: int) -> dict[str, np.ndarray]:
        """Every reward on ``completions``; ``columns`` hold one value per brain, repeated ``repeats`` times."""
        repeated = {k: [v for v in values for _ in range(repeats)] for k, values in columns.items()}
        out = {}
        for name, fn in zip(self.config.rewards, self.reward_fns):
            start = time.perf_counter()
            out[name] = call_reward(name, fn, completions, **repeated)
            self.timings[f"reward/{name}"].append(time.perf_counter() - start)
        return out

    # -- one step -----------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any]) -> dict[str, float]:
        cfg, acc = self.config, self.accelerator
        policy = acc.unwrap_model(self.model)
        eos = self.tokenizer.eos_token_id
        betas, subjects, k = batch["betas"], batch["subject"], cfg.num_samples
        columns = {c: batch[c] for c in self.columns}
        max_new = cfg.max_new_tokens or getattr(policy.config, "max_caption_tokens", 77)

        start = time.perf_counter()
        with torch.no_grad():
            samples = policy.generate(betas=betas, subject=subjects, do_sample=True, num_return_sequences=k,
                                      max_new_tokens=max_new, temperature=cfg.temperature, top_k=cfg.top_k,
                                      top_p=cfg.top_p, eos_token_id=eos, pad_token_id=eos)
            greedy_tokens = None
            if cfg.baseline == "greedy":
                greedy_tokens = policy.generate(betas=betas, subject=subjects, do_sample=False,
                                                max_new_tokens=max_new, eos_token_id=eos, pad_token_id=eos)
        self.timings["sampling"].append(time.perf_counter() - start)

        completions = decode_captions(samples, self.tokenizer, eos)
        rewards = self.score(completions, columns, k)
        greedy_rewards = self.score(decode_captions(greedy_tokens, self.tokenizer, eos), columns, 1) if greedy_tokens is not None else {}
        advantage = np.zeros(len(completions))
        logs: dict[str, float] = {}
        for w, name in zip(self.reward_weights, cfg.rewards):
            a = advantages(rewards[name], k, cfg.baseline, greedy_rewards.get(name))
            advantage += w * a
            logs[f"reward/{name}"] = float(rewards[name].mean())
            if name in greedy_rewards:
                logs[f"reward/{name}/greedy"] = float(greedy_rewards[name].mean())

        start = time.perf_counter()
        sample_mask = sequence_mask(samples, eos)
        ce_ids, ce_mask = batch["input_ids"], batch["attention_mask"]
        n_ce = ce_ids.shape[0]
        ids = _pad_right(list(ce_ids) + list(samples), eos)
        mask = _pad_right(list(ce_mask) + list(sample_mask), 0)
        all_betas = torch.cat([betas, betas.repeat_interleave(k, dim=0)])
        all_subjects = list(subjects) + [s for s in subjects for _ in range(k)]
        with acc.accumulate(self.model):
            logits = self.model(betas=all_betas, subject=all_subjects, input_ids=ids, attention_mask=mask).logits
            prefix = logits.shape[1] - ids.shape[1]
            token_logits = logits[:, prefix - 1 : prefix - 1 + ids.shape[1]].float()
            ce_logp = torch.log_softmax(token_logits[:n_ce], -1).gather(-1, ids[:n_ce, :, None]).squeeze(-1)
            ce_m = mask[:n_ce].float()
            ce = -(ce_logp * ce_m).sum() / ce_m.sum()
            rl_logp = torch.log_softmax(token_logits[n_ce:] / cfg.temperature, -1)
            rl_logp = rl_logp.gather(-1, ids[n_ce:, :, None]).squeeze(-1)
            rl_m = mask[n_ce:].float()
            seq_logp = (rl_logp * rl_m).sum(1)
            adv = torch.as_tensor(advantage, dtype=seq_logp.dtype, device=seq_logp.device)
            rl = -(adv * seq_logp).mean()
            loss = cfg.ce_weight * ce + rl
            if self.reference_model is not None:
                with torch.no_grad():
                    ref_logits = self.reference_model(betas=all_betas[n_ce:], subject=all_subjects[n_ce:],
                                                      input_ids=ids[n_ce:], attention_mask=mask[n_ce:]).logits
                    ref_logp = torch.log_softmax(
                        ref_logits[:, prefix - 1 : prefix - 1 + ids.shape[1]].float() / cfg.temperature, -1)
                    ref_logp = ref_logp.gather(-1, ids[n_ce:, :, None]).squeeze(-1)
                log_ratio = ref_logp - rl_logp
                kl = ((log_ratio.exp() - log_ratio - 1) * rl_m).sum() / rl_m.sum()
                loss = loss + cfg.kl_coef * kl
                logs["kl"] = float(kl.detach())
            acc.backward(loss)
            if acc.sync_gradients and cfg.max_grad_norm > 0:
                logs["grad_norm"] = float(acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm))
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
        self.timings["backward"].append(time.perf_counter() - start)
        logs.update({"loss": float(loss.detach()), "ce": float(ce.detach()), "rl": float(rl.detach()),
                     "advantage/mean": float(advantage.mean()), "advantage/std": float(advantage.std()),
                     "sample_length": float(sample_mask.sum(1).float().mean()),
                     "lr": float(self.scheduler.get_last_lr()[0])})
        return logs

    # -- loop ---------------------------------------------------------------------------------------------
    def _set_epoch(self, epoch: int) -> None:
        """Data order and caption choice of ``epoch``. accelerate's prepared loader calls ``set_epoch`` with its own
        iteration counter whenever it is iterated (0 in a fresh process, so a resumed run would replay epoch 0's
        order in epoch 1): the epoch goes to that loader, which passes it on to the sampler."""
        if hasattr(self.dataloader, "set_epoch"):
            self.dataloader.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        self.collator.epoch = epoch

    def _previous_run(self) -> str | None:
        """What in ``output_dir`` shows that a run was already written there (None if nothing)."""
        out = self.config.output_dir
        if os.path.exists(os.path.join(out, LOG_NAME)):
            return LOG_NAME
        if self.list_checkpoints():
            return "checkpoints"
        if os.path.isdir(os.path.join(out, "final")):
            return "final"
        return None

    def train(self) -> list[dict[str, float]]:
        cfg, acc = self.config, self.accelerator
        if not cfg.resume_from_checkpoint:
            found = self._previous_run()
            if found:
                raise FileExistsError(
                    f"output_dir {cfg.output_dir} already holds a run ({found}); set resume_from_checkpoint='latest' "
                    "to continue it, or choose another output_dir (a new run would append to its log)")
        if cfg.report_to:
            acc.init_trackers("fgb2i_rl", config={k: v for k, v in asdict(cfg).items()
                                                  if isinstance(v, (int, float, str, bool))})
        if cfg.resume_from_checkpoint:
            self.load_checkpoint(cfg.resume_from_checkpoint)
            self._truncate_log(self.global_step)
        batches_per_epoch = len(self.dataloader)
        start_epoch, skip = divmod(self.global_step * cfg.gradient_accumulation_steps, batches_per_epoch)
        bar = tqdm(total=self.total_steps, initial=self.global_step, desc="REINFORCE",
                   disable=not acc.is_local_main_process)
        epoch = start_epoch
        while self.global_step < self.total_steps:
            self._set_epoch(epoch)  # before skip_first_batches, whose loader copies the prepared loader's epoch
            loader = acc.skip_first_batches(self.dataloader, skip) if skip else self.dataloader
            skip = 0
            window: list[dict[str, float]] = []
            for batch in loader:
                self.model.train()
                window.append(self.training_step(batch))
                if not acc.sync_gradients:
                    continue
                self.global_step += 1
                bar.update(1)
                if self.global_step % cfg.logging_steps == 0 or self.global_step == self.total_steps:
                    logs = {k: float(np.mean([w[k] for w in window if k in w])) for k in window[-1]}
                    if acc.num_processes > 1:  # every process's samples, not rank 0's shard alone
                        shards = gather_object([logs])
                        logs = {k: float(np.mean([shard[k] for shard in shards if k in shard])) for k in logs}
                    logs.update(step=self.global_step, epoch=epoch)
                    self._log(logs)
                    window = []
                if cfg.save_steps and self.global_step % cfg.save_steps == 0:
                    self.save_checkpoint()
                if self.global_step >= self.total_steps:
                    break
            epoch += 1
        bar.close()
        if cfg.report_to:
            acc.end_training()
        return self.history

    def _log(self, logs: dict[str, float]) -> None:
        self.history.append(logs)
        if self.config.report_to:
            self.accelerator.log(logs, step=self.global_step)
        if self.accelerator.is_main_process:
            os.makedirs(self.config.output_dir, exist_ok=True)
            append_jsonl(os.path.join(self.config.output_dir, LOG_NAME), [logs])

    def _truncate_log(self, step: int) -> None:
        """Keep the records of steps <= ``step`` (those the checkpoint has seen): the steps a killed run logged
        after its last checkpoint are trained and logged again by the resumed run."""
        if self.accelerator.is_main_process:
            truncate_log(os.path.join(self.config.output_dir, LOG_NAME), step)
        self.accelerator.wait_for_everyone()

    # -- checkpoints --------------------------------------------------------------------------------------
    def checkpoint_dir(self) -> str:
        return os.path.join(self.config.output_dir, "checkpoints")

    def save_checkpoint(self) -> str:
        """``accelerator.save_state`` + trainer state as ``checkpoint-<step>``, swapped in whole when complete."""
        return save_accelerate_checkpoint(self.accelerator, self.checkpoint_dir(), self.global_step,
                                          {"global_step": self.global_step, "config": asdict(self.config)},
                                          self.config.save_total_limit)

    def list_checkpoints(self) -> list[str]:
        return list_checkpoints(self.checkpoint_dir())

    def load_checkpoint(self, path: str) -> None:
        path = find_checkpoint(path, self.checkpoint_dir())
        state = read_json_state(os.path.join(path, STATE_NAME), "global_step")
        # accelerate restores the random states only if it can, silently: a missing file is said, a damaged one named
        check_random_states(os.path.join(path, f"random_states_{self.accelerator.process_index}.pkl"))
        with reading(path, "checkpoint (model, optimiser, scheduler)"):
            self.accelerator.load_state(path)
        self.global_step = int(state["global_step"])

    def save_model(self, path: str | None = None) -> str:
        """The trained model (``save_pretrained``), its tokenizer and this config, on the main process."""
        path = path or os.path.join(self.config.output_dir, "final")
        acc = self.accelerator
        acc.wait_for_everyone()
        model = acc.unwrap_model(self.model)
        model.save_pretrained(path, is_main_process=acc.is_main_process, save_function=acc.save)
        if acc.is_main_process:
            self.tokenizer.save_pretrained(path)
            atomic_write_json(os.path.join(path, "reinforce_config.json"), asdict(self.config), default=str)
        acc.wait_for_everyone()
        return path
