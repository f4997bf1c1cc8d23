"""The metrics of one :func:`~eopd_ray.learners.loss.eopd_loss` call, from its per-token terms.

Means over the masked positions of the ``[B, T]`` terms and diagnostics the loss computed (the
list is in ``eopd_ray/learners/loss.py``'s module docstring), plus the ratio's min / max and the
forward KL over high-entropy positions only, all fetched to the host with one sync.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from eopd_ray.learners.loss_terms import LossBatch

__all__ = ["loss_metrics"]


@torch.no_grad()
def loss_metrics(
    batch: LossBatch,
    loss: torch.Tensor,
    terms: Mapping[str, torch.Tensor | None],
    extra: Mapping[str, torch.Tensor],
) -> dict[str, float]:
    """Means over masked positions (see :func:`~eopd_ray.learners.loss.eopd_loss`), one host sync.

    ``terms``: ``pg``, ``fkl_term``, ``fkl`` and ``gate`` (the last two None when absent), all
    [B, T]; ``extra``: further [B, T] diagnostics, averaged under their names.
    """
    valid_BT, dtype = batch.valid_BT, batch.dtype
    num_tokens = valid_BT.sum()
    n = num_tokens.clamp(min=1).to(dtype)

    def mean(x_BT: torch.Tensor) -> torch.Tensor:
        return torch.where(valid_BT, x_BT.to(dtype), 0.0).sum() / n

    fkl_BT, gate_BT = terms["fkl"], terms["gate"]
    stats = {
        "loss": loss,
        "num_tokens": num_tokens.to(dtype),
        "opd_loss": mean(terms["pg"]),
        "fkl_loss": mean(terms["fkl_term"]),
        "fkl_applied_frac": mean(gate_BT) if gate_BT is not None else n.new_zeros(()),
        "student_entropy_mean": mean(batch.entropy_BT),
        **{name: mean(x) for name, x in extra.items()},
    }
    if "ratio_mean" in extra:
        any_valid, r_BT = num_tokens > 0, extra["ratio_mean"]
        stats["ratio_min"] = torch.where(any_valid, torch.where(valid_BT, r_BT, torch.inf).min(), 0)
        stats["ratio_max"] = torch.where(
            any_valid, torch.where(valid_BT, r_BT, -torch.inf).max(), 0
        )
    if fkl_BT is not None:
        stats["fkl_mean"] = mean(fkl_BT)
    if batch.teacher_ent_BT is not None:
        high_BT = batch.teacher_ent_BT > batch.tau
        stats["teacher_entropy_mean"] = mean(batch.teacher_ent_BT)
        stats["high_entropy_frac"] = mean(high_BT)
        if fkl_BT is not None:
            high_valid_BT = high_BT & valid_BT
            fkl_high = torch.where(high_valid_BT, fkl_BT, 0.0).sum()
            stats["fkl_high_entropy"] = fkl_high / high_valid_BT.sum().clamp(min=1)
    if batch.teacher_lp_BT is not None and batch.behav_BT is not None:
        stats["reverse_kl"] = mean(batch.behav_BT - batch.teacher_lp_BT)
    values = torch.stack([v.detach().to(dtype).reshape(()) for v in stats.values()]).tolist()
    return dict(zip(stats, values, strict=True))
