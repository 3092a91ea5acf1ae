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
The run around them (data, model, final evaluation, the Hub) is ``fgb2i_hf.drivers.ce.run_ce``.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import SAFE_WEIGHTS_NAME

from ..core.checkpoints import check_random_states, damaged_random_states, read_json_state, reading
from ..data.collate import BrainCaptionCollator
from ..evaluation import caption_report, decode_dataset


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
            checkpoint = get_last_checkpoint(self.args.output_dir) if os.path.isdir(self.args.output_dir) else None
        if isinstance(checkpoint, (str, os.PathLike)):
            # without it Trainer would restart the schedule at step 0 on the checkpoint's weights

            read_json_state(os.path.join(checkpoint, TRAINER_STATE_NAME), "global_step")
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
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
        # imported here: accelerate is a heavy import, needed only on this path
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


