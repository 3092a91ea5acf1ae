"""Stage 1 of FgB2I, the run: what ``recipes/train_ce.py`` does (``run_ce``).

:class:`CEScriptArguments` (data, model and caption-evaluation settings beside transformers'
``TrainingArguments``; ``TrlParser((CEScriptArguments, TrainingArguments))`` fills both from a YAML ``--config``
plus CLI overrides) -> the NSD rows, checked (every check runs before a single training step, and each error names
the subject, split or column at fault) -> the model and its tokenizer -> :class:`~fgb2i_hf.training.BrainCaptionTrainer`
-> ``<output_dir>/final`` (model + tokenizer + the run's config), the test table beside the shuffled-brain control,
and the Hub.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core import atomic_write_json, loading_config_field, publish_folder, resolve_pretrained, versions
from ..data.collate import CAPTION_COLUMNS, BrainCaptionCollator, check_captions
from ..data import data_contract
from ..data.layout import subject_list
from ..data.rows import first_rows_per_subject
from ..evaluation import evaluate_with_control
from ..models import BrainPrefixGPT2, BrainPrefixGPT2Config
from ..training import BrainCaptionTrainer, CaptionEpochCallback
from .caption_eval import write_predictions

FINAL_DIR = "final"
CONFIG_NAME = "train_ce_config.json"

SCRATCH = "scratch"
DEFAULT_EVAL_METRICS = ["BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"]
DEFAULT_FINAL_METRICS = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]


def _model_field(name: str, help: str):
    """A field for one ``BrainPrefixGPT2Config`` setting, defaulting to the config class's own value (one source)."""
    default = getattr(BrainPrefixGPT2Config, name)
    return field(default=default, metadata={"help": f"{help} Default: BrainPrefixGPT2Config's ({default})."})


@dataclass
class CEScriptArguments:
    """Data, model and caption-evaluation settings of stage 1 (cross-entropy) training of ``BrainPrefixGPT2``."""

    # -- data ------------------------------------------------------------------------------------------------------
    nsd_root: str = field(default=None, metadata={"help": "NSD (or SimNSD) root in NSD's raw layout."})
    simulate_nsd: str | None = field(default=None, metadata={
        "help": "If nsd_root holds no NSD yet, write a SimNSD of this scale ('tiny' or 'full', seed 0) there first."})
    subjects: list[str] = field(default_factory=lambda: ["subj01", "subj02", "subj05", "subj07"],
                                metadata={"help": "Subjects to train on: one model, one subject layer each."})
    sessions: int | None = field(default=None, metadata={"help": "Use the first N sessions (37: 982 test images)."})
    fine_captions: str | None = field(default=None, metadata={
        "help": "Fine-captions JSONL (default: <nsd_root>/fine_captions.jsonl; '' for none)."})
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache folder."})
    caption_column: str = field(default="fine_captions", metadata={
        "help": f"Training targets, one of {CAPTION_COLUMNS}: the fine captions (FgB2I) or COCO's (the paper's "
                "comparison). A row with several captions gets a different one each epoch."})
    max_train_rows: int | None = field(default=None, metadata={"help": "Use only the first N training rows of each subject."})

    # -- model -----------------------------------------------------------------------------------------------------
    language_model: str = field(default="gpt2", metadata={
        "help": "Pretrained GPT-2 (Hub id, folder or simnsd/gpt2), loaded with BrainPrefixGPT2.from_language_model; "
                f"'{SCRATCH}' builds a random GPT-2 from gpt2_config with a tokenizer trained on the train captions."})
    tokenizer_name_or_path: str | None = field(default=None, metadata={
        "help": "Tokenizer (default: language_model's; with 'scratch', one trained on the training targets)."})
    tokenizer_vocab_size: int = field(default=1024, metadata={"help": "Vocabulary of the trained tokenizer (scratch)."})
    gpt2_config: dict | str | None = field(default=None, metadata={
        "help": "GPT2Config fields of the scratch language model (JSON on the CLI), e.g. "
                "{\"n_embd\": 64, \"n_layer\": 2, \"n_head\": 4}."})
    freeze_language_model: bool = _model_field("freeze_language_model", "Prefix tuning with a frozen GPT-2 (the paper). "
                                               "A scratch GPT-2 must train: set false.")
    prefix_length: int = _model_field("prefix_length", "l: prefix embeddings given to GPT-2.")
    mapper_layers: int = _model_field("mapper_layers", "Transformer mapper depth.")
    mapper_heads: int = _model_field("mapper_heads", "Transformer mapper heads.")
    mlp_ratio: float = _model_field("mlp_ratio", "Mapper MLP width / GPT-2 width.")
    mapper_dropout: float = _model_field("mapper_dropout", "Dropout in the mapper.")
    subject_hidden_size: int | None = _model_field(
        "subject_hidden_size", "None: voxels -> l*d per subject (the paper); h: voxels -> h per subject, then a shared "
        "h -> l*d.")
    max_caption_tokens: int = _model_field(
        "max_caption_tokens", "Caption tokens per target, eos included (CLIP's context), and the decoding length.")

    # -- caption evaluation ----------------------------------------------------------------------------------------
    eval_split: str = field(default="validation", metadata={
        "help": "Split decoded at each evaluation during training (eval_strategy; metric_for_best_model reads it). "
                "Never 'test': the test split is read only by the final evaluation."})
    final_eval_split: str = field(default="test", metadata={
        "help": "Split decoded and scored once after training, beside the shuffled-brain control ('' for none)."})
    eval_max_rows: int | None = field(default=None, metadata={
        "help": "Decode only the first N rows of each subject of eval_split and final_eval_split."})
    eval_references: str | None = field(default=None, metadata={
        "help": "References of the caption metrics (default: caption_column)."})
    caption_eval_metrics: list[str] = field(default_factory=lambda: list(DEFAULT_EVAL_METRICS), metadata={
        "help": "Caption metrics at each evaluation ('METEOR' adds the jar, ~10 s to start; 'none' for none)."})
    final_eval_metrics: list[str] = field(default_factory=lambda: list(DEFAULT_FINAL_METRICS), metadata={
        "help": "Caption metrics of the table written after training, beside the shuffled-brain control."})
    eval_num_beams: int = field(default=1, metadata={"help": "Beams when decoding for evaluation (1: greedy)."})
    eval_batch_size: int = field(default=64, metadata={"help": "Brains per generate() call when decoding."})
    control_seed: int = field(default=0, metadata={"help": "Seed of the shuffled-brain control's permutation."})

    def __post_init__(self):
        if self.eval_split == "test":
            raise ValueError("eval_split='test': the test split is read only by the final evaluation "
                             "(final_eval_split); monitor training and choose checkpoints on 'validation'")
        if isinstance(self.gpt2_config, str):
            self.gpt2_config = json.loads(self.gpt2_config) if self.gpt2_config.strip() else None
        if self.gpt2_config is not None and not isinstance(self.gpt2_config, dict):
            raise ValueError(f"gpt2_config must be a mapping of GPT2Config fields, got {self.gpt2_config!r}")
        if self.gpt2_config and self.language_model != SCRATCH:
            raise ValueError(f"gpt2_config is only used with language_model='{SCRATCH}'; {self.language_model!r} "
                             "brings its own config")
        if self.simulate_nsd not in (None, "", "tiny", "full"):
            raise ValueError(f"simulate_nsd must be 'tiny', 'full' or empty, got {self.simulate_nsd!r}")
        if self.caption_column not in CAPTION_COLUMNS:
            raise ValueError(f"caption_column must be one of {CAPTION_COLUMNS}, got {self.caption_column!r}")
        if self.eval_references is None:
            self.eval_references = self.caption_column
        if self.eval_references not in CAPTION_COLUMNS:
            raise ValueError(f"eval_references must be one of {CAPTION_COLUMNS}, got {self.eval_references!r}")
        self.subjects = subject_list(self.subjects)
        for name in ("caption_eval_metrics", "final_eval_metrics"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = [value]
            setattr(self, name, [] if [v.lower() for v in value] in (["none"], []) else list(value))
        for name in ("max_caption_tokens", "tokenizer_vocab_size", "prefix_length", "eval_batch_size",
                     "eval_num_beams"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")



def load_ce_data(args: CEScriptArguments):
    """``load_nsd`` of the configured root, subjects and options (a missing subject fails there, naming it).

    ``simulate_nsd`` (writing a SimNSD into an empty root first) is done by ``recipes/train_ce.py`` before it calls
    :func:`run_ce`: the simulator sits in the layer above the drivers.
    """
    from ..data import load_nsd

    if not args.nsd_root:
        raise ValueError("nsd_root is required: the NSD (or SimNSD) root in NSD's raw layout")
    options = {k: v for k, v in dict(sessions=args.sessions, fine_captions=args.fine_captions).items() if v is not None}
    return load_nsd(args.nsd_root, subjects=args.subjects, cache_dir=args.cache_dir, **options)


def prepare_ce_data(args: CEScriptArguments, data, monitor: bool = True) -> tuple[Any, Any, Any]:
    """(train, monitoring, final) datasets from a ``DatasetDict``, cut to ``max_train_rows``/``eval_max_rows`` rows
    of each subject, and checked (``monitor=False``: no monitoring split is needed):

    * every subject of ``args.subjects`` has training rows (and eval rows), and no other subject is present;
    * every training row has a target in ``caption_column`` (fine captions asked for but absent, or rows with empty
      captions, stop here), every eval row a reference in ``eval_references``.
    """
    if "train" not in data:
        raise ValueError(f"the data has no 'train' split (splits: {list(data)})")
    train = first_rows_per_subject(data["train"], args.max_train_rows)

    def split(name, option):
        if name not in data:
            raise ValueError(f"{option}={name!r} is not a split of the data (splits: {list(data)}); set "
                             f"{option}='' for none")
        return first_rows_per_subject(data[name], args.eval_max_rows)

    evaluation = split(args.eval_split, "eval_split") if args.eval_split and monitor else None
    final = split(args.final_eval_split, "final_eval_split") if args.final_eval_split else None
    for name, split in (("train", train), (args.eval_split, evaluation), (args.final_eval_split, final)):
        if split is None:
            continue
        present = sorted(set(split["subject"]))
        missing = [s for s in args.subjects if s not in present]
        if missing:
            raise ValueError(f"subject(s) {missing} have no rows in the {name!r} split (it holds {present}); check "
                             "subjects, nsd_root and max_train_rows/eval_max_rows")
        extra = [s for s in present if s not in args.subjects]
        if extra:
            raise ValueError(f"the {name!r} split holds rows of subject(s) {extra} not listed in subjects={args.subjects}")
    check_captions(train, args.caption_column, "train split")
    for name, rows in ((args.eval_split, evaluation), (args.final_eval_split, final)):
        if rows is not None:
            check_captions(rows, args.eval_references, f"{name} split")
    return train, evaluation, final


def voxel_counts_of(dataset, subjects: list[str]) -> dict[str, int]:
    """``{subject: voxels}`` read from each subject's first row (every row of a subject has the same length)."""
    column = np.asarray(dataset["subject"])
    counts = {}
    for s in subjects:
        first = np.flatnonzero(column == s)
        if not first.size:
            raise ValueError(f"subject {s!r} has no rows (subjects present: {sorted(set(column.tolist()))})")
        counts[s] = len(dataset[int(first[0])]["betas"])
    return counts


def build_model_and_tokenizer(args: CEScriptArguments, voxel_counts: dict[str, int], train_captions=None):
    """(BrainPrefixGPT2, tokenizer) for ``args``.

    * ``language_model`` a name or folder (``gpt2``, ``simnsd/gpt2``): ``BrainPrefixGPT2.from_language_model`` and
      that model's tokenizer (or ``tokenizer_name_or_path``); subject layers and mapper freshly initialised.
    * ``language_model='scratch'``: a random GPT-2 from ``gpt2_config`` and a byte-level BPE tokenizer of
      ``tokenizer_vocab_size`` trained on ``train_captions`` (offline; the SimNSD recipe).
    """
    from transformers import AutoTokenizer, GPT2Config

    from ..tokenization import train_caption_tokenizer

    common = dict(prefix_length=args.prefix_length, mapper_layers=args.mapper_layers, mapper_heads=args.mapper_heads,
                  mlp_ratio=args.mlp_ratio, mapper_dropout=args.mapper_dropout,
                  subject_hidden_size=args.subject_hidden_size, freeze_language_model=args.freeze_language_model,
                  max_caption_tokens=args.max_caption_tokens)
    if args.tokenizer_name_or_path:
        with loading_config_field("tokenizer_name_or_path", args.tokenizer_name_or_path):
            tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(args.tokenizer_name_or_path))
    elif args.language_model == SCRATCH:
        if not train_captions:
            raise ValueError("language_model='scratch' trains its tokenizer on the training captions; none were given")
        tokenizer = train_caption_tokenizer(train_captions, vocab_size=args.tokenizer_vocab_size)
    else:
        with loading_config_field("language_model", args.language_model):
            tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(args.language_model))
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token; captions are trained as caption + eos")

    if args.language_model == SCRATCH:
        fields = dict(n_positions=args.prefix_length + args.max_caption_tokens + 1, n_embd=64, n_layer=2, n_head=4)
        fields.update(args.gpt2_config or {})
        fields.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id,
                      eos_token_id=tokenizer.eos_token_id)
        gpt2 = GPT2Config(**fields)
        model = BrainPrefixGPT2(BrainPrefixGPT2Config(voxel_counts=voxel_counts, gpt2_config=gpt2, **common))
    else:
        with loading_config_field("language_model", args.language_model):
            model = BrainPrefixGPT2.from_language_model(args.language_model, voxel_counts=voxel_counts, **common)
    gpt2 = model.config.gpt2_config
    if len(tokenizer) > gpt2.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the language model's vocabulary is "
                         f"{gpt2.vocab_size}: they do not belong together")
    if args.prefix_length + args.max_caption_tokens > gpt2.n_positions:
        raise ValueError(f"prefix_length + max_caption_tokens = {args.prefix_length + args.max_caption_tokens} exceeds "
                         f"the language model's n_positions = {gpt2.n_positions}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model has no trainable parameters")
    return model, tokenizer


def run_config(script_args: CEScriptArguments, training_args) -> dict:
    """The run's settings as saved beside the model: both argument sets and the library versions."""
    return {"script_arguments": dataclasses.asdict(script_args),
            "training_arguments": json.loads(training_args.to_json_string()), "versions": versions()}


def _write_json(path: str, obj) -> None:
    atomic_write_json(path, obj, default=str)


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

    ``data``: a ``DatasetDict`` (train, and the monitoring and final splits) instead of reading
    ``script_args.nsd_root``; built by ``load_nsd``, its data contract is saved with the model.
    ``callbacks``: extra ``TrainerCallback``s.
    """
    from transformers import set_seed

    from ..metrics import MeteorScorer

    start = time.perf_counter()
    configure_training_arguments(training_args)
    if data is None:
        with training_args.main_process_first(desc="NSD data"):  # one process simulates/builds, the others read
            data = load_ce_data(script_args)
    monitor = training_args.eval_strategy != "no"
    train, evaluation, final_split = prepare_ce_data(script_args, data, monitor=monitor)
    if monitor and evaluation is None:
        raise ValueError(f"eval_strategy={training_args.eval_strategy!r} needs an eval_split")
    contract = data_contract(train).for_subjects(script_args.subjects)
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
    # Not core.scratch_folder's random name: every process must compute the same folder (save_model gathers the
    # weights on all of them under FSDP/DeepSpeed); publish_folder swaps it in below.
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
        contract.save(tmp)  # the data this model was trained on: downstream steps read their settings from it
        publish_folder(tmp, final)
        if final_split is not None:
            result["eval"] = final_evaluation(trainer.accelerator.unwrap_model(trainer.model), tokenizer, final_split,
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
    prefix = f"eval_{script_args.final_eval_split}"
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
