"""The README.md model card of a BrainPrefixGPT2 checkpoint, generated from its config.

``save_pretrained`` and ``push_to_hub`` write it; ``create_model_card`` can also be called on its own.
"""

from __future__ import annotations

import os

from huggingface_hub import ModelCard, ModelCardData

PAPER = "https://arxiv.org/abs/2505.22150"


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and not os.path.exists(name) and not name.startswith(("/", ".", "simnsd/")) and name.count("/") <= 1


def _format_metric(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def create_model_card(
    config,
    *,
    datasets: list[str] | None = None,
    data_description: str | None = None,
    metrics: dict | None = None,
    metrics_description: str | None = None,
    training: dict | None = None,
    base_model: str | None = None,
    license: str = "apache-2.0",
    tags: list[str] | None = None,
    model_name: str | None = None,
    repo_id: str | None = None,
) -> ModelCard:
    """A Hub model card describing a ``BrainPrefixGPT2Config``.

    Args:
        config: the model's ``BrainPrefixGPT2Config`` (subjects, voxel counts, prefix length, mapper, GPT-2).
        datasets: Hub dataset ids for the card's metadata and its data section (e.g. NSD).
        data_description: free text on the training data (splits, captions used).
        metrics: name -> value (e.g. ``{"BLEU-4": 0.19, "METEOR": 0.19}``), shown as a table and in the metadata.
        metrics_description: free text on how the metrics were computed (test split, references).
        training: name -> value of training settings (epochs, learning rate...), shown as a table.
        base_model: the language model's Hub id; defaults to ``config.language_model_name_or_path`` if it is one.
        license, tags, model_name: card metadata.
        repo_id: the Hub repository, used in the usage snippet (``push_to_hub`` passes it).
    """
    counts = dict(config.voxel_counts)
    gpt2 = config.gpt2_config
    lm = config.language_model_name_or_path
    base_model = base_model or (lm if _is_hub_id(lm) else None)
    data = ModelCardData(
        library_name="transformers",
        license=license,
        tags=["fgb2i_hf", "brain_prefix_gpt2", "fmri", "brain-decoding", "image-captioning", "nsd"] + list(tags or []),
        datasets=list(datasets) if datasets else None,
        base_model=base_model,
        pipeline_tag="text-generation",
        metrics=list(metrics) if metrics else None,
    )
    name = model_name or "BrainPrefixGPT2"
    if config.subject_hidden_size:
        subject_layer = (
            f"voxels -> {config.subject_hidden_size} (one linear layer per subject) -> "
            f"{config.prefix_length} x {gpt2.n_embd} (one linear layer shared by all subjects)"
        )
    else:
        subject_layer = f"voxels -> {config.prefix_length} x {gpt2.n_embd} (one linear layer per subject)"
    lm_state = "frozen (prefix tuning)" if config.freeze_language_model else "trained"
    lines = [
        f"# {name}",
        "",
        "A brain-to-text model: it turns a subject's fMRI response (NSD betas) into a caption of what the subject "
        f"saw, following FgB2I ([arXiv 2505.22150]({PAPER})) stage 2 and ClipCap's Transformer mapper. Built with "
        "the `fgb2i_hf` package (`BrainPrefixGPT2`).",
        "",
        "## Subjects",
        "",
        "| subject | voxels |",
        "|---|---|",
        *[f"| {s} | {n} |" for s, n in counts.items()],
        "",
        "## Architecture",
        "",
        f"- subject layer: {subject_layer}",
        f"- prefix: Z ({config.prefix_length} x {gpt2.n_embd}) concatenated with {config.prefix_length} learnable "
        f"constants Z'; a pre-LN Transformer mapper ({config.mapper_layers} layers, {config.mapper_heads} heads, "
        f"MLP ratio {config.mlp_ratio:g}, no positional embeddings) keeps the last {config.prefix_length} outputs",
        f"- prefix length: {config.prefix_length}",
        f"- language model: GPT-2 ({gpt2.n_layer} layers, width {gpt2.n_embd}, vocabulary {gpt2.vocab_size})"
        + (f" from `{lm}`" if lm else "")
        + f", {lm_state}",
        f"- captions: up to {config.max_caption_tokens} tokens",
        "",
        "## Training data",
        "",
    ]
    if datasets or data_description:
        if datasets:
            lines.append("Datasets: " + ", ".join(f"`{d}`" for d in datasets) + ".")
        if data_description:
            lines += ["", data_description]
    else:
        lines.append("Not recorded.")
    if training:
        lines += ["", "## Training", "", "| setting | value |", "|---|---|"]
        lines += [f"| {k} | {_format_metric(v)} |" for k, v in training.items()]
    lines += ["", "## Results", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|", *[f"| {k} | {_format_metric(v)} |" for k, v in metrics.items()]]
        if metrics_description:
            lines += ["", metrics_description]
    else:
        lines.append("No metrics recorded.")
    first = next(iter(counts), "subj01")
    where = repo_id or "path/to/checkpoint"
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "import fgb2i_hf",
        "from transformers import AutoModel, AutoTokenizer",
        "",
        f'model = AutoModel.from_pretrained("{where}")   # BrainPrefixGPT2, registered by `import fgb2i_hf`',
        f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
        f'captions = model.generate_captions(betas, "{first}", tokenizer, num_beams=5)   # betas: (B, {counts.get(first, "V")})',
        "```",
        "",
        "Mixed-subject batches: betas (B, V_max) zero-padded on the right with `subject` a list of B names.",
        "",
        "## Citation",
        "",
        "FgB2I: Improving Brain-to-Image Reconstruction via Fine-Grained Text Bridging, arXiv 2505.22150.",
        "ClipCap: Mokady, Hertz and Bermano, ClipCap: CLIP Prefix for Image Captioning, arXiv 2111.09734.",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


__all__ = ["create_model_card"]
