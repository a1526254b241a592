"""Per-iteration schedules (spec/mamp-and-data.md B; MAE ``adjust_learning_rate`` semantics).

The learning rate is a function of the fractional epoch e = step / steps_per_epoch:
linear warmup 0 -> lr over ``warmup_epochs``, then a half cosine from lr to ``min_lr`` over the
remaining epochs. It is applied before every optimizer step, multiplied per parameter group by the
group's ``lr_scale``. Weight decay may follow its own cosine (``weight_decay`` -> ``weight_decay_end``,
only on groups with ``apply_wd``). :func:`cosine_value` is the generic form other methods use for EMA
momentum or teacher temperature.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def adamw(param_groups: Any, lr: float, betas: tuple[float, float] | list[float]) -> torch.optim.AdamW:
    """AdamW as every training loop here builds it (pretraining, fine-tuning, the benchmark's step).

    ``foreach=True`` on every device: torch picks the per-tensor loop on CPU by default, which took
    3-11 ms of a 65-118 ms small-preset step on one AMD EPYC thread (MAE, GFP; profiled 2026-12-06), and
    about 8 ms of GFP's with ``foreach``. The multi-tensor path gives bit-identical parameters
    (tests/test_engine.py), so results do not move.
    """
    return torch.optim.AdamW(param_groups, lr=lr, betas=tuple(betas), foreach=True)


def warmup_cosine(epoch: float, base: float, final: float, warmup_epochs: float, epochs: float) -> float:
    """MAE's schedule at fractional epoch ``epoch``: linear 0 -> base during warmup, then half cosine base -> final."""
    if epoch < warmup_epochs:
        return base * epoch / warmup_epochs
    span = max(epochs - warmup_epochs, 1e-12)
    progress = min(max((epoch - warmup_epochs) / span, 0.0), 1.0)
    return final + (base - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_value(step: int, total_steps: int, start: float, end: float, warmup_steps: int = 0, warmup_start: float | None = None) -> float:
    """Generic per-step cosine from ``start`` to ``end`` over ``total_steps`` (after an optional linear
    warmup from ``warmup_start`` to ``start``); clamps at ``end`` past the last step (DINO-style)."""
    if warmup_steps and step < warmup_steps:
        w0 = start if warmup_start is None else warmup_start
        return w0 + (start - w0) * step / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max((step - warmup_steps) / span, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LRSchedule:
    """Sets lr (and optionally weight decay) of every optimizer group for a global step.

    Stateless apart from the last step applied (kept for checkpoints); ``apply(step)`` is called
    before each optimizer step with the 0-based global step.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        lr: float,
        min_lr: float,
        warmup_epochs: float,
        epochs: int,
        steps_per_epoch: int,
        weight_decay: float,
        weight_decay_end: float | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.lr, self.min_lr = lr, min_lr
        self.warmup_epochs, self.epochs = warmup_epochs, epochs
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        self.weight_decay, self.weight_decay_end = weight_decay, weight_decay_end
        self.last_step = -1

    def lr_at(self, step: int) -> float:
        return warmup_cosine(step / self.steps_per_epoch, self.lr, self.min_lr, self.warmup_epochs, self.epochs)

    def wd_at(self, step: int) -> float:
        if self.weight_decay_end is None:
            return self.weight_decay
        total = self.epochs * self.steps_per_epoch
        return cosine_value(step, total, self.weight_decay, self.weight_decay_end)

    def apply(self, step: int) -> float:
        """Write the values for ``step`` into the optimizer groups; returns the base lr."""
        lr = self.lr_at(step)
        wd = self.wd_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
            if self.weight_decay_end is not None and group.get("apply_wd", group.get("weight_decay", 0.0) > 0):
                group["weight_decay"] = wd
        self.last_step = step
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_step": self.last_step, "lr": self.lr, "min_lr": self.min_lr, "warmup_epochs": self.warmup_epochs,
            "epochs": self.epochs, "steps_per_epoch": self.steps_per_epoch,
            "weight_decay": self.weight_decay, "weight_decay_end": self.weight_decay_end,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_step = int(state.get("last_step", -1))
