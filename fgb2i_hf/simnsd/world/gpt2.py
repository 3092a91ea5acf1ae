"""``simnsd/gpt2``: a tiny GPT-2 language model of SimNSD captions, with its byte-level BPE tokenizer.

The paper keeps GPT-2 frozen while the brain mapper learns its prefix; this is the SimNSD stand-in for the
pretrained ``gpt2``. Tokenizer: ``fgb2i_hf.tokenization.train_caption_tokenizer`` on the train captions (GPT-2's
conventions: ``<|endoftext|>`` is bos = eos = unk, no pad token). Model: ``GPT2LMHeadModel`` trained on
``<|endoftext|> caption <|endoftext|>`` for every COCO-like and fine caption of the train images (the first token
stands where the brain prefix will stand), loss on the caption and its end token.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .loop import TrainLoop


@dataclass
class GPT2TrainingConfig:
    """The world GPT-2's size and training."""

    gpt2_vocab_size: int = field(default=1024, metadata={"help": "BPE vocabulary size asked for (bytes included)."})
    gpt2_n_embd: int = field(default=128, metadata={"help": "Hidden size."})
    gpt2_n_layer: int = field(default=4, metadata={"help": "Transformer blocks."})
    gpt2_n_head: int = field(default=4, metadata={"help": "Attention heads."})
    gpt2_n_positions: int = field(default=128, metadata={"help": "Longest prefix + caption, in tokens."})
    gpt2_dropout: float = field(default=0.1, metadata={"help": "Residual, embedding and attention dropout."})
    gpt2_epochs: int = field(default=6, metadata={"help": "Passes over the train captions."})
    gpt2_batch_size: int = field(default=64, metadata={"help": "Captions per step."})
    gpt2_learning_rate: float = field(default=2e-3, metadata={"help": "Peak AdamW learning rate (cosine decay)."})
    gpt2_weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    gpt2_warmup_steps: int = field(default=50, metadata={"help": "Linear warm-up steps."})


def _batch(tokenizer, texts, device):
    """``<eos> text <eos>`` ids, attention mask and labels (-100 on the first token and on padding)."""
    eos = tokenizer.eos_token_id
    ids = [[eos] + tokenizer(t, add_special_tokens=False).input_ids + [eos] for t in texts]
    length = max(map(len, ids))
    input_ids = torch.full((len(ids), length), eos, dtype=torch.long)
    mask = torch.zeros((len(ids), length), dtype=torch.long)
    for i, seq in enumerate(ids):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    labels = input_ids.masked_fill(mask == 0, -100)
    labels[:, 0] = -100
    return input_ids.to(device), mask.to(device), labels.to(device)


@torch.no_grad()
def perplexity(model, tokenizer, texts, batch_size: int = 256, device="cpu") -> float:
    """exp(mean negative log-likelihood per predicted token) of ``texts`` (caption tokens and the end token)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(texts), batch_size):
        input_ids, mask, labels = _batch(tokenizer, texts[i: i + batch_size], device)
        logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1]
        target = labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                ignore_index=-100, reduction="sum")
        total += nll.item()
        count += int((target != -100).sum())
    return math.exp(total / count)


def train_gpt2(config: GPT2TrainingConfig, data, seed: int = 0, device: str = "cpu", progress: bool = True):
    """Train tokenizer and model on ``data.train`` captions; returns ``(model, tokenizer, record)``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from ...tokenization import train_caption_tokenizer

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    texts = data.train.all_captions(fine=True)
    tokenizer = train_caption_tokenizer(texts, vocab_size=config.gpt2_vocab_size,
                                        model_max_length=config.gpt2_n_positions)
    eos = tokenizer.eos_token_id
    gpt2_config = GPT2Config(vocab_size=len(tokenizer), n_positions=config.gpt2_n_positions,
                             n_embd=config.gpt2_n_embd, n_layer=config.gpt2_n_layer, n_head=config.gpt2_n_head,
                             resid_pdrop=config.gpt2_dropout, embd_pdrop=config.gpt2_dropout,
                             attn_pdrop=config.gpt2_dropout, bos_token_id=eos, eos_token_id=eos)
    model = GPT2LMHeadModel(gpt2_config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.gpt2_learning_rate,
                                  weight_decay=config.gpt2_weight_decay)
    steps_per_epoch = math.ceil(len(texts) / config.gpt2_batch_size)
    with TrainLoop(optimizer, model.parameters(), config.gpt2_epochs * steps_per_epoch, config.gpt2_warmup_steps,
                   "simnsd/gpt2", progress, grad_clip=1.0) as loop:
        for epoch in range(config.gpt2_epochs):
            order = rng.permutation(len(texts))
            for s in range(steps_per_epoch):
                rows = order[s * config.gpt2_batch_size: (s + 1) * config.gpt2_batch_size]
                input_ids, mask, labels = _batch(tokenizer, [texts[i] for i in rows], device)
                loop.step(model(input_ids=input_ids, attention_mask=mask, labels=labels).loss, epoch=epoch)
    model.eval()
    test = data.test
    metrics = {"test_perplexity": perplexity(model, tokenizer, test.all_captions(fine=True), device=device),
               "test_perplexity_coco_captions": perplexity(model, tokenizer, test.all_captions(fine=False),
                                                           device=device),
               "test_perplexity_fine_captions": perplexity(model, tokenizer,
                                                           [c for caps in test.fine_captions for c in caps],
                                                           device=device),
               "train_perplexity": perplexity(model, tokenizer, texts[:2000], device=device),
               "vocab_size": len(tokenizer)}
    record = {"component": "simnsd/gpt2", "config": asdict(config), "seed": seed, **loop.summary(),
              "metrics": metrics}
    return model, tokenizer, record
