"""LoRA on BrainPrefixGPT2's GPT-2 through peft (hf-gotchas.md §8).

GPT-2's projections are ``Conv1D`` (weights stored as (in, out)), hence ``fan_in_fan_out=True``. The brain side
(subject layers, shared layer, mapper) is listed leaf by leaf in ``modules_to_save`` -- peft refuses a ModuleDict --
so it stays fully trainable and is saved in the adapter file beside the LoRA weights.

    peft_model = model.add_lora(r=8)                     # train; peft_model(betas=..., ...) as the model itself
    peft_model.save_pretrained(adapter_dir)              # adapter_config.json + adapter_model.safetensors
    peft_model = PeftModel.from_pretrained(BrainPrefixGPT2.from_pretrained(base_dir), adapter_dir)
    merged = peft_model.merge_and_unload()               # a plain BrainPrefixGPT2 again
"""

from __future__ import annotations

# Every attention input projection (q, k, v together) of every GPT-2 block; peft full-matches a string regex.
DEFAULT_TARGET_MODULES = r".*gpt2\.transformer\.h\.\d+\.attn\.c_attn"


def brain_modules(model) -> list[str]:
    """Names of the brain-side leaf modules: ``subject_proj.<subject>`` for each subject, ``shared_proj``, ``mapper``."""
    names = [f"subject_proj.{s}" for s in model.subject_proj]
    if model.shared_proj is not None:
        names.append("shared_proj")
    return names + ["mapper"]


def lora_config(model, r: int = 8, lora_alpha: int = 16, lora_dropout: float = 0.0, target_modules=None, **kwargs):
    """A ``peft.LoraConfig`` for LoRA on GPT-2 with the brain side saved and trained in full."""
    # imported here: peft is a heavy import, needed only on this path
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules or DEFAULT_TARGET_MODULES,
        fan_in_fan_out=True,
        modules_to_save=kwargs.pop("modules_to_save", None) or brain_modules(model),
        **kwargs,
    )


def add_lora(model, **kwargs):
    """``peft.get_peft_model(model, lora_config(model, **kwargs))``."""
    # imported here: peft is a heavy import, needed only on this path
    from peft import get_peft_model

    return get_peft_model(model, lora_config(model, **kwargs))


__all__ = ["DEFAULT_TARGET_MODULES", "add_lora", "brain_modules", "lora_config"]
