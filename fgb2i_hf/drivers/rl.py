"""Stage 2 of FgB2I, the run: what ``recipes/train_rl.py`` does (``run_rl``).

Reads the NSD rows (``fgb2i_hf.data.load_nsd``), loads the stage-1 model and its tokenizer from
``model_name_or_path``, trains with :class:`fgb2i_hf.rl.ReinforceTrainer`, saves ``<output_dir>/final``, and
evaluates greedy captions on the eval split (caption metrics, object F1, each reward's mean) into
``<output_dir>/eval_<split>.{json,md}``. The rewards get the resources they declare (``needs``) from
:func:`reward_resources`; the driver never names a reward.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ..core import atomic_write_json, loading_config_field
from ..data.contract import SHARED_FIELDS, ContractError, DataContract
from ..data.collate import CAPTION_COLUMNS
from ..data.layout import subject_list
from ..rewards import RewardResources


@dataclass
class RLScriptArguments:
    model_name_or_path: str = field(default=None, metadata={"help": "Stage-1 checkpoint folder (model + tokenizer)."})
    nsd_root: str = field(default=None, metadata={"help": "NSD (or SimNSD) root in the raw layout."})
    subjects: list[str] = field(default_factory=lambda: ["subj01", "subj02", "subj05", "subj07"],
                                metadata={"help": "Subjects to train on (one model for all)."})
    sessions: int | None = field(default=None, metadata={
        "help": "Use the first N sessions. Default: the stage-1 model's (its data_contract.json); a value that "
                "disagrees with it is refused."})
    fine_captions: str | None = field(default=None, metadata={"help": "Fine-captions JSONL (default: the builder's)."})
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache folder."})
    max_train_rows: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    clip_model: str = field(default="ViT-L-14-quickgelu", metadata={"help": "CLIP for the CLIP rewards (name or folder)."})
    clip_pretrained: str | None = field(default="openai", metadata={"help": "open_clip pretrained tag."})
    renderer: str = field(default="CompVis/stable-diffusion-v1-4",
                          metadata={"help": "Text-to-image pipeline of clip_image_image (name or folder)."})
    render_steps: int = field(default=4, metadata={"help": "Denoising steps of the renderer."})
    eval_split: str = field(default="test", metadata={"help": "Split decoded and scored after training ('' to skip)."})
    eval_references: str = field(default="fine_captions", metadata={"help": "References of the caption metrics."})
    eval_max_rows: int | None = field(default=None, metadata={"help": "Score only the first N rows of the eval split."})

    def __post_init__(self):
        """Checked when parsed, before any data is built: `subjects: subj01` is one subject (not its characters)."""
        self.subjects = subject_list(self.subjects)
        for name in ("sessions", "max_train_rows", "eval_max_rows", "render_steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        if self.eval_references not in CAPTION_COLUMNS:
            raise ValueError(f"eval_references must be one of {CAPTION_COLUMNS}, got {self.eval_references!r}")


def _load_clip(script_args: RLScriptArguments, device):
    from ..clip import CLIPScorer

    with loading_config_field("clip_model", script_args.clip_model):
        return CLIPScorer.from_pretrained(script_args.clip_model, pretrained=script_args.clip_pretrained, device=device)


def reward_resources(script_args: RLScriptArguments) -> RewardResources:
    """What this run can offer the rewards, each built only if a configured reward declares it needs it: the
    stimuli, the CLIP model and the text-to-image renderer (float16 on a GPU), all on the trainer's ``device``."""
    import torch

    from ..data import NSDStimuli
    from ..rewards import TextToImageRenderer

    def renderer(resources):
        device = torch.device(resources.get("device"))
        dtype = torch.float16 if device.type == "cuda" else torch.float32  # half precision only where it is fast
        return TextToImageRenderer(script_args.renderer, num_inference_steps=script_args.render_steps,
                                   device=device, dtype=dtype)

    return RewardResources(stimuli=lambda resources: NSDStimuli(script_args.nsd_root),
                           clip=lambda resources: _load_clip(script_args, resources.get("device")),
                           renderer=renderer)


def data_options(script_args: RLScriptArguments, upstream: DataContract | None) -> dict:
    """``load_nsd`` options: the stage-1 model's data settings; a conflicting ``sessions`` is refused."""
    options = {"fine_captions": script_args.fine_captions} if script_args.fine_captions is not None else {}
    if upstream is None:
        return options | ({"sessions": script_args.sessions} if script_args.sessions is not None else {})
    if script_args.sessions is not None and script_args.sessions != upstream.sessions:
        raise ContractError(f"sessions={script_args.sessions} (stage 2's config) but the stage-1 model "
                            f"{script_args.model_name_or_path} was trained on {upstream.sessions} sessions; leave "
                            "sessions unset to use the model's")
    return options | upstream.nsd_options()


def run_rl(script_args: RLScriptArguments, config) -> dict:
    """Stage 2 from a stage-1 checkpoint: train, save ``<output_dir>/final``, score the eval split."""
    from accelerate.utils import gather_object
    from transformers import AutoTokenizer

    from ..data import load_nsd
    from ..evaluation import caption_report, decode_dataset
    from ..metrics import write_table
    from ..models import BrainPrefixGPT2
    from ..rl import ReinforceTrainer

    if not script_args.model_name_or_path or not script_args.nsd_root:
        raise ValueError("model_name_or_path and nsd_root are required")
    upstream = DataContract.find(script_args.model_name_or_path)
    data = load_nsd(script_args.nsd_root, subjects=script_args.subjects, cache_dir=script_args.cache_dir,
                    **data_options(script_args, upstream))
    if upstream is not None:  # the rows rebuilt under the model's contract must be the rows it was trained on
        data.data_contract.check_compatible(upstream.for_subjects(script_args.subjects), f"the NSD rows of {script_args.nsd_root}",
                                            f"the stage-1 model {script_args.model_name_or_path}",
                                            fields=SHARED_FIELDS + ("average_train", "stats"))
    train = data["train"]
    if script_args.max_train_rows:
        train = train.select(range(min(script_args.max_train_rows, len(train))))
    with loading_config_field("model_name_or_path", script_args.model_name_or_path):
        model = BrainPrefixGPT2.from_pretrained(script_args.model_name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(script_args.model_name_or_path)
    missing = sorted(set(script_args.subjects) - set(model.config.voxel_counts))
    if missing:
        raise ValueError(f"the model {script_args.model_name_or_path} has no layer for {missing} "
                         f"(it knows {sorted(model.config.voxel_counts)}); add_subject() first")

    resources = reward_resources(script_args)
    trainer = ReinforceTrainer(model, tokenizer, config, train, reward_context=resources)
    trainer.train()
    final = trainer.save_model()
    if trainer.accelerator.is_main_process:
        data.data_contract.for_subjects(script_args.subjects).save(final)

    acc = trainer.accelerator
    unwrapped = acc.unwrap_model(trainer.model)
    checksum = float(sum(p.detach().double().sum() for p in unwrapped.parameters() if p.requires_grad))
    checksums = gather_object([checksum])
    result = {"final_model": final, "processes": acc.num_processes, "parameter_checksums": checksums,
              "parameters_identical_across_processes": len(set(checksums)) == 1, "steps": trainer.global_step}
    if script_args.eval_split and acc.is_main_process:
        split = data[script_args.eval_split]
        if script_args.eval_max_rows:
            split = split.select(range(min(script_args.eval_max_rows, len(split))))
        predictions = decode_dataset(unwrapped, tokenizer, split)
        rewards = dict(zip(config.rewards, trainer.reward_fns))
        result["eval"] = caption_report(predictions, split, script_args.eval_references, rewards=rewards)
        write_table({"CE + RL": result["eval"]}, os.path.join(config.output_dir, f"eval_{script_args.eval_split}"))
    if acc.is_main_process:
        atomic_write_json(os.path.join(config.output_dir, "result.json"), result)
        print(json.dumps(result, indent=2))
    return result
