"""Settings of stage-1 cross-entropy training (``recipes/train_ce.py``), beside transformers' ``TrainingArguments``.

``TrlParser((CEScriptArguments, TrainingArguments))`` fills both from a YAML ``--config`` plus CLI overrides; the
optimiser, schedule, checkpoints, logging (``report_to``) and the Hub (``push_to_hub``) are ``TrainingArguments``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..data.collate import CAPTION_COLUMNS
from ..data.layout import subject_list

SCRATCH = "scratch"
DEFAULT_EVAL_METRICS = ["BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"]
DEFAULT_FINAL_METRICS = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]


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
    freeze_language_model: bool = field(default=True, metadata={
        "help": "Prefix tuning with a frozen GPT-2 (the paper). A scratch GPT-2 must train: set false."})
    prefix_length: int = field(default=10, metadata={"help": "l: prefix embeddings given to GPT-2."})
    mapper_layers: int = field(default=8, metadata={"help": "Transformer mapper depth."})
    mapper_heads: int = field(default=8, metadata={"help": "Transformer mapper heads."})
    mlp_ratio: float = field(default=2.0, metadata={"help": "Mapper MLP width / GPT-2 width."})
    mapper_dropout: float = field(default=0.0, metadata={"help": "Dropout in the mapper."})
    subject_hidden_size: int | None = field(default=None, metadata={
        "help": "None: voxels -> l*d per subject (the paper); h: voxels -> h per subject, then a shared h -> l*d."})
    max_caption_tokens: int = field(default=77, metadata={
        "help": "Caption tokens per target, eos included (77, CLIP's context), and the decoding length."})

    # -- caption evaluation ----------------------------------------------------------------------------------------
    eval_split: str = field(default="test", metadata={
        "help": "Split decoded at each evaluation (eval_strategy) and after training ('' for none)."})
    eval_max_rows: int | None = field(default=None, metadata={"help": "Decode only the first N rows of each subject of eval_split."})
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
