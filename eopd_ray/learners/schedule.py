"""Learning-rate schedules of :class:`eopd_ray.config.OptimConfig`: linear warmup, then cosine."""

from __future__ import annotations

import math

import torch

from eopd_ray.config import OptimConfig

__all__ = ["lr_factor", "make_scheduler"]


def lr_factor(
    step: int,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
    schedule: str = "cosine",
) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Warmup: ``(step + 1) / warmup_steps`` for ``step < warmup_steps`` (the first step already
    moves; the peak is reached at step ``warmup_steps - 1``). Then ``constant``: 1; ``cosine``:
    ``min_lr_ratio + (1 - min_lr_ratio)·(1 + cos(π·p))/2`` with
    ``p = (step - warmup_steps) / (total_steps - warmup_steps)``, clamped to [0, 1] (so steps past
    ``total_steps`` stay at ``min_lr_ratio``).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown lr schedule {schedule!r}")
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :func:`lr_factor` with ``optim``'s settings.

    The multiplier is a plain function, so a scheduler's ``state_dict`` keeps only its step count:
    a resumed run follows the schedule of its current config.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")

    def factor(step: int) -> float:
        return lr_factor(
            step,
            total_steps=total_steps,
            warmup_steps=optim.warmup_steps,
            min_lr_ratio=optim.min_lr_ratio,
            schedule=optim.schedule,
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
