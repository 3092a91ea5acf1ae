"""Stage 1 of FgB2I: cross-entropy training of ``BrainPrefixGPT2`` with transformers' ``Trainer``.

* :class:`CaptionEpochCallback` sets the collator's epoch at the start of every epoch (also the epoch a resumed run
  starts in), so the caption a row is trained on is a function of (row, epoch) and a resumed run sees the targets
  of an uninterrupted one.
* :class:`BrainCaptionTrainer` adds caption evaluation to ``Trainer``'s: at every evaluation it decodes the eval
  split (greedy by default) and logs caption metrics and object P/R/F1 beside the eval loss
  (``eval_BLEU-4``, ``eval_object_F1``...; usable as ``metric_for_best_model``). Its eval loss uses a collator of
  its own, fixed at epoch 0, so the loss curve does not jump with the caption choice. On resume, a damaged
  checkpoint file (weights, ``trainer_state.json``, optimiser, RNG state) raises ``CheckpointError`` naming it;
  a missing RNG state resumes with a warning that the run will not reproduce the uninterrupted one.
* :func:`run_ce` is the whole recipe: data, checks, model, training, ``<output_dir>/final`` (model + tokenizer +
  the run's config), the test table beside the shuffled-brain control, and the Hub.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from typing import Any

import numpy as np
import torch
from transformers import Trainer, TrainerCallback

from ..checkpoints import check_random_states, damaged_random_states, read_json_state, reading
from ..data.collate import BrainCaptionCollator
from ..caption_evaluation import write_predictions
from ..evaluation import caption_report, decode_dataset, evaluate_with_control
from .arguments import CEScriptArguments
from .build import build_model_and_tokenizer, load_ce_data, prepare_ce_data, voxel_counts_of

FINAL_DIR = "final"
CONFIG_NAME = "train_ce_config.json"


class CaptionEpochCallback(TrainerCallback):
    """Tell a :class:`BrainCaptionCollator` the current epoch at every epoch start.

    ``state.epoch`` at an epoch's start is the epoch index, or (after resuming mid-epoch) the index plus the
    fraction already done, so its floor is the epoch the coming batches belong to.
    """

    def __init__(self, collator: BrainCaptionCollator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int(math.floor((state.epoch or 0.0) + 1e-6))


def _metric_key(name: str) -> str:
    return name.replace(" ", "_")


class BrainCaptionTrainer(Trainer):
    """``Trainer`` that also scores decoded captions at every evaluation.

    Args (beyond ``Trainer``'s):
        eval_collator: collator of the eval-loss batches (default: a copy of ``data_collator`` at epoch 0).
        caption_metrics: caption metric names computed at each evaluation (empty: object P/R/F1 only).
        caption_references: column of the references (``fine_captions`` or ``captions``).
        generation_kwargs: decoding settings (default greedy, ``model.config.max_caption_tokens``).
        decode_batch_size: brains per ``generate`` call.
        meteor: an open ``fgb2i_hf.metrics.MeteorScorer`` reused across evaluations (METEOR only).
    """

    def __init__(self, *args, eval_collator=None, caption_metrics=(), caption_references: str = "fine_captions",
                 generation_kwargs: dict | None = None, decode_batch_size: int = 64, meteor=None, **kwargs):
        super().__init__(*args, **kwargs)
        if eval_collator is None and isinstance(self.data_collator, BrainCaptionCollator):
            eval_collator = dataclasses.replace(self.data_collator)
        self.eval_collator = eval_collator
        self.caption_metrics = list(caption_metrics)
        self.caption_references = caption_references
        self.generation_kwargs = dict(generation_kwargs or {})
        self.decode_batch_size = decode_batch_size
        self.meteor = meteor

    # -- resuming: every damaged file named, a missing RNG state said -------------------------------------------
    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        checkpoint = resume_from_checkpoint
        if isinstance(checkpoint, bool) and checkpoint:
            from transformers.trainer_utils import get_last_checkpoint

            checkpoint = get_last_checkpoint(self.args.output_dir) if os.path.isdir(self.args.output_dir) else None
        if isinstance(checkpoint, (str, os.PathLike)):
            # without it Trainer would restart the schedule at step 0 on the checkpoint's weights
            from transformers.trainer import TRAINER_STATE_NAME

            read_json_state(os.path.join(checkpoint, TRAINER_STATE_NAME), "global_step")
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from transformers.utils import SAFE_WEIGHTS_NAME

        weights = os.path.join(resume_from_checkpoint, SAFE_WEIGHTS_NAME)
        with reading(weights if os.path.isfile(weights) else resume_from_checkpoint, "model weights"):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_optimizer_and_scheduler(self, checkpoint):
        with reading(checkpoint, "optimizer or scheduler state"):
            return super()._load_optimizer_and_scheduler(checkpoint)

    def _load_rng_state(self, checkpoint):
        if checkpoint is None:
            return None
        name = f"rng_state_{self.args.process_index}.pth" if self.args.world_size > 1 else "rng_state.pth"
        path = os.path.join(checkpoint, name)
        if not check_random_states(path):  # missing: said (Trainer only logs it at info level)
            return None
        try:
            return super()._load_rng_state(checkpoint)
        except Exception as e:
            raise damaged_random_states(path, e) from e

    def get_eval_dataloader(self, eval_dataset=None):
        if self.eval_collator is None:
            return super().get_eval_dataloader(eval_dataset)
        train_collator, self.data_collator = self.data_collator, self.eval_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix: str = "eval"):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        dataset = getattr(dataloader, "dataset", None)
        if description == "Evaluation" and dataset is not None and "objects" in getattr(dataset, "column_names", ()):
            scores = self.caption_scores(dataset)
            output.metrics.update({f"{metric_key_prefix}_{_metric_key(k)}": v for k, v in scores.items()})
        return output

    def caption_scores(self, dataset) -> dict[str, float]:
        """Decode ``dataset`` (rows split across processes, gathered in order) and score it on the main process;
        every process returns the same numbers."""
        from accelerate.utils import broadcast_object_list, gather_object

        acc = self.accelerator
        model = acc.unwrap_model(self.model)
        rows = np.arange(acc.process_index, len(dataset), acc.num_processes)
        captions = decode_dataset(model, self.processing_class, dataset, batch_size=self.decode_batch_size,
                                  rows=rows, progress=False, **self.generation_kwargs)
        pairs = gather_object(list(zip(rows.tolist(), captions))) if acc.num_processes > 1 else list(zip(rows, captions))
        scores = [None]
        if acc.is_main_process:
            predictions = [c for _, c in sorted(pairs, key=lambda p: p[0])]
            scores = [caption_report(predictions, dataset, self.caption_references, self.caption_metrics,
                                     meteor=self.meteor)]
        if acc.num_processes > 1:
            broadcast_object_list(scores, from_process=0)
        return scores[0]


def _versions() -> dict[str, str]:
    import accelerate
    import datasets
    import transformers
    import trl

    from .. import __version__

    return {"fgb2i_hf": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "datasets": datasets.__version__, "trl": trl.__version__}


def run_config(script_args: CEScriptArguments, training_args) -> dict:
    """The run's settings as saved beside the model: both argument sets and the library versions."""
    return {"script_arguments": dataclasses.asdict(script_args),
            "training_arguments": json.loads(training_args.to_json_string()), "versions": _versions()}


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def check_training_arguments(training_args) -> None:
    """The numbers ``TrainingArguments`` accepts but training cannot use: checked before any data is read (the
    optimiser would refuse a negative learning rate only after the data is built)."""
    def number(name):
        value = getattr(training_args, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        return value

    if not number("learning_rate") > 0:
        raise ValueError(f"learning_rate must be > 0, got {training_args.learning_rate!r}")
    for name in ("weight_decay", "warmup_steps", "max_grad_norm"):
        if number(name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(training_args, name)!r}")
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        if number(name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(training_args, name)!r}")
    if training_args.max_steps <= 0 and not number("num_train_epochs") > 0:
        raise ValueError(f"num_train_epochs must be > 0 (or max_steps > 0), got {training_args.num_train_epochs!r}")


def configure_training_arguments(training_args) -> None:
    """The settings this model needs whatever the config says (hf-gotchas §3), after checking the numbers."""
    check_training_arguments(training_args)
    # the collator reads subject/captions/nsd_id, which are not forward() arguments
    training_args.remove_unused_columns = False
    # a batch rarely holds every subject: the absent subjects' layers get no gradient under DDP
    if training_args.ddp_find_unused_parameters is None:
        training_args.ddp_find_unused_parameters = True
    if training_args.dataloader_num_workers and training_args.dataloader_persistent_workers:
        raise ValueError("dataloader_persistent_workers=True keeps collator copies in the workers, so the caption "
                         "choice could not follow the epoch; use dataloader_persistent_workers=False")


def _resume_value(value):
    if isinstance(value, str) and value.lower() in ("true", "latest"):
        return True
    if isinstance(value, str) and value.lower() in ("", "false", "none"):
        return None
    return value


def run_ce(script_args: CEScriptArguments, training_args, data=None, callbacks=None) -> dict:
    """Train stage 1 and save ``<output_dir>/final``; returns a summary (also ``<output_dir>/result.json``).

    ``data``: a ``DatasetDict`` (train + the eval split) instead of reading ``script_args.nsd_root``.
    ``callbacks``: extra ``TrainerCallback``s.
    """
    from transformers import set_seed

    from ..metrics import MeteorScorer

    start = time.perf_counter()
    configure_training_arguments(training_args)
    if data is None:
        with training_args.main_process_first(desc="NSD data"):  # one process simulates/builds, the others read
            data = load_ce_data(script_args)
    train, evaluation = prepare_ce_data(script_args, data)
    if training_args.eval_strategy != "no" and evaluation is None:
        raise ValueError(f"eval_strategy={training_args.eval_strategy!r} needs an eval_split")
    voxel_counts = voxel_counts_of(train, script_args.subjects)
    set_seed(training_args.seed)
    captions = [c for cs in train[script_args.caption_column] for c in cs]
    model, tokenizer = build_model_and_tokenizer(script_args, voxel_counts, captions)

    collator = BrainCaptionCollator(tokenizer, caption_column=script_args.caption_column,
                                    max_length=script_args.max_caption_tokens, seed=training_args.seed)
    eval_collator = BrainCaptionCollator(tokenizer, caption_column=script_args.eval_references,
                                         max_length=script_args.max_caption_tokens, seed=training_args.seed)
    as_numpy = dict(type="numpy", columns=["betas"], output_all_columns=True)  # ~4x faster rows than Python lists
    generation = {"num_beams": script_args.eval_num_beams, "max_new_tokens": script_args.max_caption_tokens}
    needs_meteor = "METEOR" in script_args.caption_eval_metrics and training_args.eval_strategy != "no"
    meteor = MeteorScorer() if needs_meteor and training_args.process_index == 0 else None
    trainer = BrainCaptionTrainer(
        model=model, args=training_args, train_dataset=train.with_format(**as_numpy),
        eval_dataset=evaluation.with_format(**as_numpy) if evaluation is not None else None,
        data_collator=collator, eval_collator=eval_collator, processing_class=tokenizer,
        callbacks=[CaptionEpochCallback(collator), *(callbacks or [])],
        caption_metrics=script_args.caption_eval_metrics, caption_references=script_args.eval_references,
        generation_kwargs=generation, decode_batch_size=script_args.eval_batch_size, meteor=meteor)
    prepared = time.perf_counter()
    try:
        train_output = trainer.train(resume_from_checkpoint=_resume_value(training_args.resume_from_checkpoint))
    finally:
        if meteor is not None:
            meteor.close()
    trained = time.perf_counter()

    output_dir = training_args.output_dir
    final = os.path.join(output_dir, FINAL_DIR)
    tmp = final + ".tmp"
    if trainer.is_world_process_zero() and os.path.exists(tmp):
        shutil.rmtree(tmp)
    trainer.save_model(tmp)  # model (safetensors + config + model card) and tokenizer, on the main process
    config = run_config(script_args, training_args)
    result: dict[str, Any] = {
        "final_model": final, "global_step": trainer.state.global_step, "epochs": trainer.state.epoch,
        "train_loss": train_output.training_loss, "processes": trainer.accelerator.num_processes,
        "seconds": {"setup": prepared - start, "train": trained - prepared},
        "log_history": trainer.state.log_history,
    }
    if trainer.is_world_process_zero():
        _write_json(os.path.join(tmp, CONFIG_NAME), config)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        if evaluation is not None:
            result["eval"] = final_evaluation(trainer.accelerator.unwrap_model(trainer.model), tokenizer, evaluation,
                                              script_args, output_dir)
        result["seconds"]["total"] = time.perf_counter() - start
        _write_json(os.path.join(output_dir, "result.json"), result)
        if training_args.push_to_hub:
            push_final(trainer, final)
    trainer.accelerator.wait_for_everyone()
    return result


def final_evaluation(model, tokenizer, dataset, script_args: CEScriptArguments, output_dir: str) -> dict:
    """Decode ``dataset`` from real and shuffled brains; write ``eval_<split>.md/.json`` (the table, control as
    baseline), ``eval_<split>_predictions.jsonl`` and BrainHub's ``eval_<split>_{predictions,control}_<subject>.json``
    to ``output_dir``; return the table's JSON (rows, deltas, per-subject rows)."""
    result = evaluate_with_control(model, tokenizer, dataset, references=script_args.eval_references,
                                   metrics=script_args.final_eval_metrics, batch_size=script_args.eval_batch_size,
                                   seed=script_args.control_seed, per_subject=len(script_args.subjects) > 1,
                                   progress=False, num_beams=script_args.eval_num_beams,
                                   max_new_tokens=script_args.max_caption_tokens)
    prefix = f"eval_{script_args.eval_split}"
    result.write(os.path.join(output_dir, prefix))
    write_predictions(output_dir, dataset, result.predictions, result.control_predictions,
                      script_args.eval_references, prefix=prefix + "_")
    return result.to_json()


def push_final(trainer, folder: str) -> str:
    """Upload ``folder`` (the final model, tokenizer, config and card) to ``hub_model_id`` (default: the output
    folder's name under the user's account), as Trainer names its repository."""
    from huggingface_hub import HfApi

    args = trainer.args
    api = HfApi(token=args.hub_token)
    repo_id = args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir))
    repo_id = api.create_repo(repo_id, private=args.hub_private_repo, exist_ok=True).repo_id
    api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="Stage-1 (cross-entropy) BrainPrefixGPT2")
    return repo_id
