"""One run of the toy experiment: the teacher, the student's updates and the per-step curves.

At each step the student samples ``samples_per_step`` tokens from ``P_S10``, its softmax
renormalised over its current top-10 logits, and each sampled ``x`` gets the on-policy
distillation (reverse-KL) update ``s_x <- s_x + lr * r(x)`` with the reward
``r(x) = log P_te(x) - log P_S10(x)``. All samples of a step are drawn from the same snapshot of
``s`` and their updates are added (a token sampled twice is updated twice).

Objectives (``OBJECTIVES``):

* ``reverse_kl`` — the update above only (plain OPD, the paper's Table 1).
* ``eopd`` — the same update plus, when the teacher's entropy ``H(P_te)`` (computed exactly over
  the full vocabulary) exceeds ``tau``, one gradient step on the forward KL over the teacher's
  top-k set ``S`` (``k = fkl_top_k``)::

      FKL(s) = sum_{x in S} pt(x) * (log pt(x) - log P_S(x)),   pt = P_te renormalised over S,

  with ``P_S = softmax(s)`` the student's FULL softmax (docs/design.md §1, eq. 10). Its exact
  gradient is ``dFKL/ds_j = P_S(j) * sum_S pt - pt(j) * 1[j in S] = P_S(j) - pt(j) * 1[j in S]``,
  i.e. the term pulls the teacher's top-k up towards ``pt`` and pushes every other token down. It
  is evaluated at the same snapshot of ``s`` as the reverse-KL samples, so a step is
  ``s <- s + lr * sum_x r(x) e_x - fkl_lr * grad FKL(s)``. With a single context the teacher's
  entropy is a constant, so the FKL is either on at every step or never.

Randomness: for each seed, ``np.random.default_rng(seed)`` draws the teacher logits, the five
positions, the student logits, and then the student's samples, in that order. Every
(scenario, objective) pair of a seed starts from a fresh generator with the same seed, so they
share the teacher logits, the student's initial logits and the uniform draws used for sampling.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from eopd_ray.toy.config import OBJECTIVES, TEACHER_TOP_LOGITS, ToyConfig

__all__ = [
    "RunTrace",
    "Traces",
    "count_top1_changes",
    "entropy",
    "fkl_loss_and_grad",
    "jaccard_distance",
    "kl_divergence",
    "log_softmax",
    "make_teacher_logits",
    "simulate",
    "teacher_probs",
    "top_k_mask",
    "topk_change_rates",
]


# --------------------------------------------------------------------------- small helpers


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax of a 1-D array."""
    z = logits - np.max(logits)
    return z - np.log(np.sum(np.exp(z)))


def entropy(probs: np.ndarray) -> float:
    """Shannon entropy in nats, ``0 log 0 = 0``."""
    p = np.asarray(probs, dtype=np.float64)
    nz = p[p > 0]
    return float(-np.sum(nz * np.log(nz)))


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) in nats for two full distributions (``q > 0`` wherever ``p > 0``)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    nz = p > 0
    return float(np.sum(p[nz] * (np.log(p[nz]) - np.log(q[nz]))))


def make_teacher_logits(rng: np.random.Generator, vocab_size: int) -> np.ndarray:
    """N(0, 1) logits with ``TEACHER_TOP_LOGITS`` written at distinct random positions."""
    logits = rng.standard_normal(vocab_size)
    positions = rng.choice(vocab_size, size=len(TEACHER_TOP_LOGITS), replace=False)
    logits[positions] = TEACHER_TOP_LOGITS
    return logits


def teacher_probs(logits: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(logits / temperature)``."""
    return np.exp(log_softmax(np.asarray(logits, dtype=np.float64) / temperature))


def top_k_mask(logits: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the ``k`` largest entries (ties resolved by ``np.argpartition``)."""
    mask = np.zeros(len(logits), dtype=bool)
    if k >= len(logits):
        mask[:] = True
    else:
        mask[np.argpartition(-np.asarray(logits), k - 1)[:k]] = True
    return mask


def jaccard_distance(a: Any, b: Any) -> float:
    """``1 - |A & B| / |A | B|`` of two sets (or two boolean masks of equal length).

    Two empty sets are at distance 0.
    """
    if isinstance(a, np.ndarray) and a.dtype == bool:
        union = int(np.count_nonzero(a | b))
        inter = int(np.count_nonzero(a & b))
    else:
        sa, sb = set(a), set(b)
        union, inter = len(sa | sb), len(sa & sb)
    return 0.0 if union == 0 else 1.0 - inter / union


def topk_change_rates(topk_sets: list[Any]) -> np.ndarray:
    """Jaccard distance between each pair of consecutive top-k sets (length ``n - 1``)."""
    return np.array(
        [jaccard_distance(prev, cur) for prev, cur in itertools.pairwise(topk_sets)],
        dtype=np.float64,
    )


def count_top1_changes(argmax_sequence: Any) -> int:
    """Number of positions ``t >= 1`` where ``argmax_sequence[t] != argmax_sequence[t - 1]``."""
    seq = np.asarray(argmax_sequence)
    if seq.size < 2:
        return 0
    return int(np.count_nonzero(seq[1:] != seq[:-1]))


def fkl_loss_and_grad(
    student_logits: np.ndarray, teacher_p: np.ndarray, k: int
) -> tuple[float, np.ndarray]:
    """Forward KL over the teacher's top-k set and its exact gradient w.r.t. the logits.

    ``FKL = sum_{x in S} pt(x) (log pt(x) - log P_S(x))`` with ``pt`` the teacher renormalised
    over its top-k set ``S`` and ``log P_S`` the student's full log-softmax gathered at ``S``.
    Gradient: ``P_S - pt`` (``pt`` taken as 0 outside ``S``), over the whole vocabulary.
    """
    teacher_p = np.asarray(teacher_p, dtype=np.float64)
    support = np.argsort(-teacher_p, kind="stable")[:k]
    pt = teacher_p[support] / np.sum(teacher_p[support])
    log_ps = log_softmax(np.asarray(student_logits, dtype=np.float64))
    nz = pt > 0
    loss = float(np.sum(pt[nz] * (np.log(pt[nz]) - log_ps[support][nz])))
    grad = np.exp(log_ps) * np.sum(pt)
    grad[support] -= pt
    return loss, grad


# --------------------------------------------------------------------------- simulation


@dataclass
class RunTrace:
    """One (seed, scenario, objective) run: per-step curves and the final state."""

    seed: int
    temperature: float
    objective: str
    teacher_p: np.ndarray  # (vocab_size,)
    teacher_entropy: float
    fkl_active: bool
    change_rates: np.ndarray  # (steps,) Jaccard distance of top-k before/after each step
    top1_changes: int
    final_logits: np.ndarray  # (vocab_size,)

    def final_student_p(self) -> np.ndarray:
        return np.exp(log_softmax(self.final_logits))


# Every run of the experiment, keyed by (scenario, objective), one trace per seed.
Traces = dict[tuple[str, str], list[RunTrace]]


def _initial_state(
    seed: int, vocab_size: int
) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    rng = np.random.default_rng(seed)
    teacher_logits = make_teacher_logits(rng, vocab_size)
    student_logits = rng.standard_normal(vocab_size)
    return teacher_logits, student_logits, rng


def simulate(config: ToyConfig, seed: int, temperature: float, objective: str) -> RunTrace:
    """Run one seed of one scenario (teacher temperature) with one objective."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES} (got {objective!r})")
    teacher_logits, s, rng = _initial_state(seed, config.vocab_size)
    teacher_p = teacher_probs(teacher_logits, temperature)
    log_pt = np.log(teacher_p)
    h_te = entropy(teacher_p)
    fkl_active = objective == "eopd" and h_te > config.tau
    k, m, lr = config.student_top_k, config.samples_per_step, config.lr

    change_rates = np.empty(config.steps, dtype=np.float64)
    prev_mask = top_k_mask(s, k)
    prev_top1 = int(np.argmax(s))
    top1_changes = 0
    for t in range(config.steps):
        top = np.flatnonzero(prev_mask)  # the current top-k, in index order
        log_p10 = log_softmax(s[top])
        cdf = np.cumsum(np.exp(log_p10))
        j = np.minimum(np.searchsorted(cdf, rng.random(m) * cdf[-1], side="right"), k - 1)
        step = np.zeros_like(s)
        np.add.at(step, top[j], lr * (log_pt[top[j]] - log_p10[j]))
        if fkl_active:
            step -= config.fkl_lr * fkl_loss_and_grad(s, teacher_p, config.fkl_top_k)[1]
        s = s + step

        mask = top_k_mask(s, k)
        change_rates[t] = jaccard_distance(prev_mask, mask)
        top1 = int(np.argmax(s))
        top1_changes += top1 != prev_top1
        prev_mask, prev_top1 = mask, top1

    return RunTrace(
        seed=seed,
        temperature=temperature,
        objective=objective,
        teacher_p=teacher_p,
        teacher_entropy=h_te,
        fkl_active=fkl_active,
        change_rates=change_rates,
        top1_changes=top1_changes,
        final_logits=s,
    )
