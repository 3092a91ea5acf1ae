"""BrainPrefixGPT2 training behaviour: frozen LM, LoRA, add_subject, gradient accumulation under Trainer."""

import pytest
import torch
from peft import PeftModel
from transformers import Trainer, TrainingArguments

from fgb2i_hf import BrainPrefixGPT2
from fgb2i_hf.testing import caption_batch, random_betas, tiny_brain_prefix_gpt2
from greedy_helpers import assert_greedy_is_decisive, greedy_with_logits

COUNTS = {"subj01": 40, "subj02": 56}
CAPTIONS = ["a cat sleeping on a laptop keyboard!", "a dog.", "two giraffes standing next to a tall tree.",
            "a red double decker bus driving down a street."]
SUBJECTS = ["subj02", "subj01", "subj02", "subj01"]


def _loss(model, subjects=SUBJECTS, captions=CAPTIONS, seed=0):
    from fgb2i_hf.testing import tiny_caption_tokenizer

    return model(betas=random_betas(COUNTS, subjects, seed=seed), subject=subjects,
                 **caption_batch(tiny_caption_tokenizer(), captions)).loss


def test_frozen_language_model_gets_no_gradient_and_no_dropout():
    model, _ = tiny_brain_prefix_gpt2(COUNTS, gpt2_overrides={"resid_pdrop": 0.5, "embd_pdrop": 0.5})
    model.train()
    assert not model.gpt2.training and model.mapper.training  # frozen GPT-2 stays in eval mode (ClipCap)
    torch.manual_seed(0)
    first = _loss(model)
    assert torch.equal(_loss(model), first)  # no dropout in the frozen LM: deterministic (same model and kernels)
    first.backward()
    assert all(p.grad is None for p in model.gpt2.parameters())
    for name, p in model.named_parameters():
        if not name.startswith("gpt2."):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    # control: an unfrozen LM does get gradients and trains with dropout
    trainable, _ = tiny_brain_prefix_gpt2(COUNTS, freeze_language_model=False)
    trainable.train()
    assert trainable.gpt2.training
    _loss(trainable).backward()
    assert trainable.gpt2.transformer.h[0].attn.c_attn.weight.grad.abs().sum() > 0


def test_activation_checkpointing_with_a_frozen_language_model():
    model, _ = tiny_brain_prefix_gpt2(COUNTS, gpt2_overrides={"resid_pdrop": 0.5, "attn_pdrop": 0.5})
    model.train()
    calls = []
    model.gpt2.transformer.h[0].attn.register_forward_hook(lambda *a: calls.append(1))
    loss = _loss(model)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert len(calls) == 1
    model.zero_grad()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    calls.clear()
    again = _loss(model)
    again.backward()
    assert len(calls) == 2  # the block was recomputed in the backward pass: checkpointing is on
    assert torch.equal(again, loss)  # and no dropout crept in (exact: the forward pass runs the same kernels)
    for n, g in grads.items():
        torch.testing.assert_close(model.get_parameter(n).grad, g, atol=1e-6, rtol=1e-5, msg=n)


def test_add_subject_trains_only_the_new_layer(tmp_path):
    model, tok = tiny_brain_prefix_gpt2(COUNTS)
    layer = model.add_subject("subj03", 24)
    assert model.config.voxel_counts == {"subj01": 40, "subj02": 56, "subj03": 24}
    assert layer is model.subject_proj["subj03"] and layer.weight.shape == model.subject_proj["subj01"].weight.shape[:1] + (24,)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["subject_proj.subj03.weight", "subject_proj.subj03.bias"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    model.train()
    betas = torch.randn(4, 24, generator=torch.Generator().manual_seed(0))
    batch = caption_batch(tok, CAPTIONS)
    losses = []
    for _ in range(15):
        loss = model(betas=betas, subject="subj03", **batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05  # the new layer learns
    for n, p in model.named_parameters():
        if n.startswith("subject_proj.subj03"):
            assert not torch.equal(p, before[n]), n
        else:
            assert torch.equal(p, before[n]), n  # everything else untouched, bit for bit (never written to)
    # the new subject mixes with the old ones and survives a save/load round trip
    mixed = random_betas(model.config.voxel_counts, ["subj03", "subj02"])
    model.eval()
    with torch.no_grad():
        prefix = model.encode_brain(mixed, ["subj03", "subj02"])
    model.save_pretrained(tmp_path)
    loaded = BrainPrefixGPT2.from_pretrained(tmp_path)
    assert loaded.config.voxel_counts["subj03"] == 24
    with torch.no_grad():
        # bit-identical weights at other memory alignments (see test_brain_prefix_gpt2_hub): equal to rounding
        torch.testing.assert_close(loaded.encode_brain(mixed, ["subj03", "subj02"]), prefix, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"subject 'subj01' already exists \(with 40 voxels\)"):
        model.add_subject("subj01", 10)
    with pytest.raises(ValueError, match=r"n_voxels for subj04 must be a positive int"):
        model.add_subject("subj04", 0)


def test_add_subject_without_freezing_keeps_others_trainable():
    model, _ = tiny_brain_prefix_gpt2(COUNTS)
    model.add_subject("subj05", 8, freeze_others=False)
    assert model.mapper.prefix_const.requires_grad and model.subject_proj["subj01"].weight.requires_grad
    assert not any(p.requires_grad for p in model.gpt2.parameters())


def test_lora_train_save_load_merge(tmp_path):
    model, tok = tiny_brain_prefix_gpt2(COUNTS)
    model.save_pretrained(tmp_path / "base")
    peft_model = model.add_lora(r=4, lora_alpha=8)
    assert isinstance(peft_model, PeftModel)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("lora_B" in n for n in trainable)
    assert any("subject_proj.subj01" in n for n in trainable) and any("mapper" in n for n in trainable)
    assert not any("c_attn.base_layer" in n or "wte" in n or "c_fc" in n for n in trainable)  # GPT-2 itself frozen
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model.train()
    for _ in range(3):  # train so LoRA's B matrices and the brain side move away from their init
        loss = _loss(peft_model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    peft_model.eval()
    with torch.no_grad():
        trained = _loss(peft_model, seed=1)
        base_only = _loss(BrainPrefixGPT2.from_pretrained(tmp_path / "base").eval(), seed=1)
    assert abs(float(trained - base_only)) > 1e-3  # control: training changed the model
    peft_model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(BrainPrefixGPT2.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(_loss(reloaded, seed=1), trained)
        betas = random_betas(COUNTS, SUBJECTS, seed=2)
        tokens, logits = greedy_with_logits(reloaded, betas, SUBJECTS, max_new_tokens=6)
        # a reloaded copy agrees to rounding: logits with a tolerance, tokens exactly as no greedy step is a near-tie
        expected = assert_greedy_is_decisive(peft_model, betas, SUBJECTS, model.eos_token_id, max_new_tokens=6)
        assert torch.equal(tokens, expected)
        torch.testing.assert_close(logits, greedy_with_logits(peft_model, betas, SUBJECTS, max_new_tokens=6)[1],
                                   atol=1e-4, rtol=1e-4)
    merged = reloaded.merge_and_unload()
    assert type(merged) is BrainPrefixGPT2
    assert not any("lora" in n or "modules_to_save" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(_loss(merged, seed=1), trained, atol=1e-5, rtol=1e-5)
    merged.save_pretrained(tmp_path / "merged")
    with torch.no_grad():
        again = BrainPrefixGPT2.from_pretrained(tmp_path / "merged").eval()
        torch.testing.assert_close(_loss(again, seed=1), trained, atol=1e-5, rtol=1e-5)


class _Rows(torch.utils.data.Dataset):
    def __init__(self, n):
        self.rows = [{"subject": SUBJECTS[i % 4], "caption": CAPTIONS[i % 4] + " more words" * (i % 3),
                      "betas": random_betas(COUNTS, [SUBJECTS[i % 4]], seed=i)[0]} for i in range(n)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def _collate(rows):
    from fgb2i_hf.testing import tiny_caption_tokenizer

    width = max(r["betas"].shape[0] for r in rows)
    betas = torch.stack([torch.nn.functional.pad(r["betas"], (0, width - r["betas"].shape[0])) for r in rows])
    return {"betas": betas, "subject": [r["subject"] for r in rows],
            **caption_batch(tiny_caption_tokenizer(), [r["caption"] for r in rows])}


def _train_one_step(tmp_path, batch_size, accumulation):
    model, _ = tiny_brain_prefix_gpt2(COUNTS)
    args = TrainingArguments(str(tmp_path), max_steps=1, per_device_train_batch_size=batch_size,
                             gradient_accumulation_steps=accumulation, learning_rate=0.5, optim="sgd",
                             lr_scheduler_type="constant", train_sampling_strategy="sequential",
                             remove_unused_columns=False, report_to="none", use_cpu=True, save_strategy="no",
                             logging_steps=1, disable_tqdm=True, max_grad_norm=0.0)
    trainer = Trainer(model=model, args=args, train_dataset=_Rows(4), data_collator=_collate)
    trainer.train()
    loss = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    return model, loss


def test_gradient_accumulation_under_trainer_matches_one_big_batch(tmp_path):
    """Micro-batches of unequal token counts: with num_items_in_batch, 2 x 2 accumulated equals one batch of 4."""
    big, big_loss = _train_one_step(tmp_path / "a", 4, 1)
    accumulated, acc_loss = _train_one_step(tmp_path / "b", 2, 2)
    assert abs(big_loss - acc_loss) < 1e-4
    for (name, p), q in zip(big.named_parameters(), accumulated.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)
    # known answer: one SGD step on the token-mean loss of all 4 rows
    start, _ = tiny_brain_prefix_gpt2(COUNTS)
    rows = _Rows(4)
    full = start(**_collate([rows[i] for i in range(4)])).loss
    grad_full = torch.autograd.grad(full, start.mapper.prefix_const)[0]
    torch.testing.assert_close(big.mapper.prefix_const, start.mapper.prefix_const - 0.5 * grad_full,
                               atol=1e-6, rtol=1e-5)
    assert abs(big_loss - full.item()) < 1e-4
    # control: averaging the two micro-batch means (what a loss-kwargs-unaware accumulation does) differs
    halves = [start(**_collate([rows[i] for i in r])).loss for r in ((0, 1), (2, 3))]
    grad_naive = torch.autograd.grad(sum(halves) / 2, start.mapper.prefix_const)[0]
    assert (grad_naive - grad_full).norm() > 0.02 * grad_full.norm()
