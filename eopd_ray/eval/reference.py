"""Teacher-referenced evaluation: how far a checkpoint's own samples are from the teacher.

With ``teacher:`` in the eval config, the first ``teacher.samples_per_problem`` samples of every
problem are scored by the teacher (log-prob of each sampled token, full-vocabulary entropy, top-k
ids and log-probs) and by the checkpoint itself (exact log-prob of each sampled token, entropy,
log-probs at the teacher's top-k ids); see ``EvalActor``. Per response token t with sampled
token ``x_t``:

- reverse KL, the k1 estimate ``log p_s(x_t) - log p_t(x_t)``. Its mean is ``KL(p_s || p_t)``
  only when ``x_t`` is drawn from the student's unmodified distribution ``p_s`` (sampling
  temperature 1, top_p 1). With top_p < 1 (the paper's eval protocol, 0.8) tokens come from the
  nucleus-truncated ``q``; the mean is then ``KL(q || p_t) - KL(q || p_s)``: the divergence on
  the tokens the student actually emits, not ``KL(p_s || p_t)``: higher or lower than it, and
  negative where the teacher fits the nucleus better than the untruncated student does
  (``KL(q || p_s) = -log P_s(nucleus)``). Likewise for temperature != 1.
- top-k forward KL, ``Σ_k p̃_t(k) (log p̃_t(k) - log p_s(k))`` over the teacher's top-k ids, with
  ``p̃_t`` the teacher renormalised over them and ``p_s`` the student's full-vocabulary
  probability: exactly the EOPD loss's forward-KL term (``learners.loss_terms.topk_fkl``), >= 0.
  Its floor is not 0: a checkpoint equal to the teacher gets ``-log P_t(top-k)``, the teacher
  mass outside its top-k.
  It is reported over all positions and over those where the teacher's entropy exceeds ``tau``
  (the EOPD gate ``H_te > tau``), with the share of such positions.

:func:`token_sums` is the per-token math (arrays in, sums out); :func:`reference_record` is the
``teacher_ref`` block of a problem record, :func:`summarize_reference` the ``teacher_ref`` block
of a (checkpoint, benchmark) summary in ``results.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from eopd_ray.eval.metrics import entropy_histogram


def token_sums(
    student_logprobs: np.ndarray,
    teacher_logprobs: np.ndarray,
    teacher_entropy: np.ndarray,
    teacher_topk_logprobs: np.ndarray,
    student_topk_logprobs: np.ndarray,
    tau: float,
) -> dict[str, float | int]:
    """Sums over T response tokens (see the module doc), in float64.

    Args: ``student_logprobs`` / ``teacher_logprobs`` [T]: log-probs of the sampled tokens;
    ``teacher_entropy`` [T] (nats); ``teacher_topk_logprobs`` [T, k]: the teacher's
    full-distribution log-probs at its top-k ids; ``student_topk_logprobs`` [T, k]: the
    student's at the same ids. Returns ``tokens``, ``rkl_sum`` (Σ k1), ``fkl_sum``,
    ``fkl_high_sum`` (Σ over positions with teacher entropy > tau) and ``high_tokens``.
    """
    s_T, t_T, h_T = (
        np.asarray(a, dtype=np.float64)
        for a in (student_logprobs, teacher_logprobs, teacher_entropy)
    )
    t_TK = np.asarray(teacher_topk_logprobs, dtype=np.float64)
    s_TK = np.asarray(student_topk_logprobs, dtype=np.float64)
    if not s_T.shape == t_T.shape == h_T.shape == t_TK.shape[:1] or t_TK.shape != s_TK.shape:
        raise ValueError(
            f"shapes differ: student {s_T.shape}, teacher {t_T.shape}, entropy {h_T.shape}, "
            f"teacher top-k {t_TK.shape}, student top-k {s_TK.shape}"
        )
    fkl_T = np.zeros_like(h_T)
    if t_TK.size:
        log_pt_TK = t_TK - np.logaddexp.reduce(t_TK, axis=-1, keepdims=True)  # p̃_t
        pt_TK = np.exp(log_pt_TK)
        with np.errstate(invalid="ignore"):  # p̃_t = 0 ids (-inf): 0 * nan, dropped by the where
            fkl_T = np.where(pt_TK > 0, pt_TK * (log_pt_TK - s_TK), 0.0).sum(axis=-1)
    high_T = h_T > tau
    return {
        "tokens": int(s_T.size),
        "rkl_sum": float((s_T - t_T).sum()),
        "fkl_sum": float(fkl_T.sum()),
        "fkl_high_sum": float(fkl_T[high_T].sum()),
        "high_tokens": int(high_T.sum()),
    }


def reference_record(
    teacher: Sequence[Any],
    student: Sequence[Any],
    tau: float,
    edges: np.ndarray,
    unscored: int = 0,
) -> dict[str, Any]:
    """The ``teacher_ref`` block of one problem record.

    ``teacher``: per measured sample the teacher's scores (``logprobs`` [T], ``entropy`` [T],
    ``topk_logprobs`` [T, k]: ``rollout.TeacherScores``); ``student``: the checkpoint's on the
    same samples (``logprobs`` [T], ``entropy`` [T], ``ids_logprobs`` [T, k] at the teacher's
    top-k ids: ``actors.teacher.ScoresAtIds``). ``unscored``: samples the teacher could not score
    (too long or outside its vocabulary). Both histograms use ``edges`` and the same tokens."""

    def cat(parts: list[np.ndarray], tail: tuple[int, ...] = ()) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros((0, *tail))

    k = teacher[0].topk_logprobs.shape[-1] if teacher else 0
    t_entropy = cat([t.entropy for t in teacher])
    s_entropy = cat([s.entropy for s in student])
    sums = token_sums(
        cat([s.logprobs for s in student]),
        cat([t.logprobs for t in teacher]),
        t_entropy,
        cat([t.topk_logprobs for t in teacher], (k,)),
        cat([s.ids_logprobs for s in student], (k,)),
        tau,
    )
    return {
        "samples": len(teacher),
        "unscored": unscored,
        **sums,
        "teacher_entropy_counts": entropy_histogram(t_entropy, edges),
        "student_entropy_counts": entropy_histogram(s_entropy, edges),
    }


def summarize_reference(records: Sequence[dict[str, Any]], tau: float) -> dict[str, Any] | None:
    """The ``teacher_ref`` block of a summary, from the problem records that have one (None if
    none has): ``tokens``, ``rkl_per_token``, ``fkl_per_token``, ``fkl_high_entropy`` (mean over
    positions with teacher entropy > tau; None when there are none), ``high_entropy_frac``,
    ``tau`` and both entropy histograms (the bins of ``results.json``'s ``entropy_edges``)."""
    blocks = [r["teacher_ref"] for r in records if r.get("teacher_ref")]
    if not blocks:
        return None

    def total(key: str) -> float:
        return float(sum(b[key] for b in blocks))

    tokens, high = int(total("tokens")), int(total("high_tokens"))
    counts = {
        key: [int(c) for c in np.sum([b[key] for b in blocks], axis=0)]
        for key in ("teacher_entropy_counts", "student_entropy_counts")
    }
    return {
        "tokens": tokens,
        "rkl_per_token": total("rkl_sum") / tokens if tokens else None,
        "fkl_per_token": total("fkl_sum") / tokens if tokens else None,
        "fkl_high_entropy": total("fkl_high_sum") / high if high else None,
        "high_entropy_frac": high / tokens if tokens else None,
        "tau": float(tau),
        **counts,
    }
