"""One ``LearnerGroup.train_batch`` call's metrics, reduced on the driver from every rank's reply.

A rank's ``train`` reply (``eopd_ray/learners/worker.py``) holds its per-micro-batch loss metrics
(``records``, see :mod:`eopd_ray.learners.loss_metrics`), the optimizer steps (the same on every
rank), the sampler/learner log-prob mismatch and staleness tallies ``[sum, max, count]`` and its
times. The metric names are listed in ``LearnerGroup.train_batch``'s docstring.
"""

from __future__ import annotations

from typing import Any

__all__ = ["aggregate_train_replies"]


def aggregate_train_replies(replies: list[dict[str, Any]]) -> dict[str, float]:
    """Token-weighted means of the per-micro-batch metrics of all ranks, and the step metrics."""
    records = [r for rep in replies for r in rep["records"]]
    out: dict[str, float] = {}
    total = sum(r["num_tokens"] for r in records)
    keys = sorted({k for r in records for k in r} - {"num_tokens", "mini_batch"})
    for key in keys:
        rows = [r for r in records if key in r]
        if key == "ratio_min":
            out[key] = min(r[key] for r in rows)
        elif key == "ratio_max":
            out[key] = max(r[key] for r in rows)
        elif key == "fkl_high_entropy":  # a mean over high-entropy tokens only
            w = [r["num_tokens"] * r.get("high_entropy_frac", 0.0) for r in rows]
            out[key] = sum(wi * r[key] for wi, r in zip(w, rows, strict=True)) / max(sum(w), 1e-12)
        else:
            out[key] = sum(r["num_tokens"] * r[key] for r in rows) / max(total, 1)
    out["num_tokens"] = float(total)
    steps = replies[0]["steps"]  # the same on every rank (reduced gradients, reduced skip flag)
    out["optimizer_steps"] = float(len(steps))
    out["skipped_steps"] = float(sum(s["skipped"] for s in steps))
    out["lr"] = steps[-1]["lr"]
    out["lr_first"] = steps[0]["lr"]
    norms = [s["grad_norm"] for s in steps]
    out["grad_norm"] = sum(norms) / len(norms)
    out["grad_norm_max"] = max(norms)
    m_sum = sum(rep["mismatch"][0] for rep in replies)
    m_n = sum(rep["mismatch"][2] for rep in replies)
    out["logprob_mismatch_tokens"] = float(m_n)
    if m_n:
        out["logprob_mismatch_mean"] = m_sum / m_n
        out["logprob_mismatch_max"] = max(rep["mismatch"][1] for rep in replies)
    s_n = sum(rep["staleness"][2] for rep in replies)
    if s_n:
        out["staleness_mean"] = sum(rep["staleness"][0] for rep in replies) / s_n
        out["staleness_max"] = max(rep["staleness"][1] for rep in replies)
    out["worker_time_s"] = max(rep["time_s"] for rep in replies)
    out["proximal_time_s"] = max(rep["proximal_time_s"] for rep in replies)
    return out
