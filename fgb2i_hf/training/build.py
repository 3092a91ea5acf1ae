"""What stage-1 training starts from: the NSD rows (checked) and the model with its tokenizer.

Every check here runs before a single training step, and each error names the subject, split or column at fault.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..data.collate import check_captions
from .arguments import SCRATCH, CEScriptArguments


def load_ce_data(args: CEScriptArguments):
    """``load_nsd`` of the configured root, subjects and options (a missing subject fails there, naming it);
    with ``simulate_nsd``, a SimNSD is written to an empty ``nsd_root`` first."""
    import os

    from ..data import load_nsd, simulate_nsd

    if not args.nsd_root:
        raise ValueError("nsd_root is required: the NSD (or SimNSD) root in NSD's raw layout")
    if args.simulate_nsd and not os.path.isdir(os.path.join(args.nsd_root, "nsddata")):
        simulate_nsd(args.nsd_root, scale=args.simulate_nsd, seed=0)
    options = {k: v for k, v in dict(sessions=args.sessions, fine_captions=args.fine_captions).items() if v is not None}
    return load_nsd(args.nsd_root, subjects=args.subjects, cache_dir=args.cache_dir, **options)


def first_rows_per_subject(dataset, n: int | None):
    """The first ``n`` rows of each subject, in dataset order (all rows when ``n`` is falsy)."""
    if not n:
        return dataset
    column = np.asarray(dataset["subject"])
    keep = np.concatenate([np.flatnonzero(column == s)[:n] for s in dict.fromkeys(column.tolist())])
    return dataset.select(np.sort(keep))


def prepare_ce_data(args: CEScriptArguments, data) -> tuple[Any, Any]:
    """(train, eval) datasets from a ``DatasetDict``, cut to ``max_train_rows``/``eval_max_rows`` rows of each
    subject, and checked:

    * every subject of ``args.subjects`` has training rows (and eval rows), and no other subject is present;
    * every training row has a target in ``caption_column`` (fine captions asked for but absent, or rows with empty
      captions, stop here), every eval row a reference in ``eval_references``.
    """
    if "train" not in data:
        raise ValueError(f"the data has no 'train' split (splits: {list(data)})")
    train = first_rows_per_subject(data["train"], args.max_train_rows)
    evaluation = None
    if args.eval_split:
        if args.eval_split not in data:
            raise ValueError(f"eval_split={args.eval_split!r} is not a split of the data (splits: {list(data)}); "
                             "set eval_split='' to train without evaluation")
        evaluation = first_rows_per_subject(data[args.eval_split], args.eval_max_rows)
    for name, split in (("train", train), (args.eval_split, evaluation)):
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
    if evaluation is not None:
        check_captions(evaluation, args.eval_references, f"{args.eval_split} split")
    return train, evaluation


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

    from ..models import BrainPrefixGPT2, BrainPrefixGPT2Config
    from ..tokenization import train_caption_tokenizer
    from ..world import loading_config_field, resolve_pretrained

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
