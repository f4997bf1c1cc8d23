"""The learning-rate schedule of :class:`eopd_ray.config.OptimConfig`, from transformers.

``cosine``: transformers' ``get_cosine_with_min_lr_schedule_with_warmup`` with
``min_lr_rate = min_lr_ratio`` (with 0 it is ``get_cosine_schedule_with_warmup``); ``constant``:
``get_constant_schedule_with_warmup``. At optimizer step ``s`` (0-based) the multiplier of the
peak learning rate is ``s / warmup_steps`` during warmup (the first step of a warmup runs at lr 0),
then 1 (constant) or ``min_lr_ratio + (1 - min_lr_ratio)·(1 + cos(π·p))/2`` with
``p = (s - warmup_steps) / (total_steps - warmup_steps)`` (cosine). transformers does not clamp
``p``: past ``total_steps`` the cosine would rise again, so ``total_steps`` must count every
optimizer step of the run (skipped steps do not advance the schedule).
"""

from __future__ import annotations

import torch

from eopd_ray.config import OptimConfig

__all__ = ["make_scheduler"]


def make_scheduler(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The ``LambdaLR`` of ``optim.schedule`` with ``optim``'s warmup and floor.

    The multiplier is a ``functools.partial`` whose arguments a scheduler's ``state_dict`` does
    not keep, only its step count: a resumed run follows the schedule of its current config.
    """
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_with_min_lr_schedule_with_warmup,
    )

    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if optim.schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, optim.warmup_steps)
    if optim.schedule != "cosine":
        raise ValueError(f"unknown lr schedule {optim.schedule!r}")
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, optim.warmup_steps, total_steps, min_lr_rate=optim.min_lr_ratio
    )
