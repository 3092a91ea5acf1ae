"""The optimiser loop every world trainer shares.

Each world component trains with AdamW under a cosine learning-rate schedule with linear warm-up (warm-up at most
half the steps), shows a progress bar with the running mean loss, records the loss history and the wall time, and
some clip the gradient norm or keep an exponential moving average (EMA) of the weights. The trainers differ only in
how they draw a batch and compute the loss, which is all they keep.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup


class TrainLoop:
    """Schedule, optional gradient clipping, loss history, progress bar and timing of one world trainer.

    Use as a context manager (the bar closes on exit)::

        with TrainLoop(optimizer, model.parameters(), steps, warmup, "simnsd/gpt2", progress, grad_clip=1.0) as loop:
            for step in range(loop.steps):
                loop.step(loss_of_a_batch())
        record = {..., **loop.summary()}

    Args:
        optimizer: the trainer's optimiser.
        parameters: what ``grad_clip`` clips (the trained model's parameters).
        steps: optimiser steps (at least 1).
        warmup_steps: linear warm-up steps (capped at half the steps).
        desc, progress: the progress bar's label; whether to show it.
        grad_clip: maximum gradient norm (``torch.nn.utils.clip_grad_norm_``), or None for none.
        window: steps of the running mean shown and of ``final_loss``.
        digits: decimals of the loss shown.
        start: the ``time.time()`` the wall time counts from (default: now).
    """

    def __init__(self, optimizer, parameters, steps: int, warmup_steps: int, desc: str, progress: bool = True,
                 grad_clip: float | None = None, window: int = 20, digits: int = 3, start: float | None = None):
        self.optimizer, self.parameters = optimizer, list(parameters)
        self.steps = max(1, steps)
        self.schedule = get_cosine_schedule_with_warmup(optimizer, min(warmup_steps, self.steps // 2), self.steps)
        self.grad_clip, self.window, self.digits = grad_clip, window, digits
        self.losses: list[float] = []
        self.start = time.time() if start is None else start
        self.bar = tqdm(total=self.steps, desc=desc, disable=not progress)

    def __enter__(self) -> "TrainLoop":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def backward(self, loss: torch.Tensor) -> torch.Tensor | None:
        """Zero the gradients, backpropagate ``loss`` and clip; the total gradient norm before clipping (None
        without ``grad_clip``)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is None:
            return None
        return torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip)

    def end_step(self, loss: float, **postfix) -> None:
        """Advance the schedule, record ``loss`` and update the bar (``postfix``: more values to show)."""
        self.schedule.step()
        self.losses.append(loss)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{np.mean(self.losses[-self.window:]):.{self.digits}f}", **postfix)

    def step(self, loss: torch.Tensor, **postfix) -> None:
        """One ordinary update: :meth:`backward`, the optimiser's step, :meth:`end_step`."""
        self.backward(loss)
        self.optimizer.step()
        self.end_step(loss.item(), **postfix)

    def summary(self) -> dict:
        """``steps``, ``train_seconds`` (since ``start``), ``initial_loss`` (mean of the first 5 steps) and
        ``final_loss`` (mean of the last ``window``), for the component's record."""
        return {"steps": self.steps, "train_seconds": round(time.time() - self.start, 1),
                "initial_loss": float(np.mean(self.losses[:5])),
                "final_loss": float(np.mean(self.losses[-self.window:]))}


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model``, parameter by parameter."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - decay)
