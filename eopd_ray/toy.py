"""The toy categorical experiment of §3.2 / Table 1 (Figures 1 and 6) of the EOPD paper.

One context, a vocabulary of ``V = 80`` tokens. The teacher's logits are drawn from N(0, 1) and
five of them (at random distinct positions) are overwritten by 1.7, 1.9, 2.1, 2.3 and 2.5; the
teacher distribution is ``P_te = softmax(logits / T)`` with ``T = 0.3`` (the paper's low-entropy
scenario) or ``T = 1.0`` (high-entropy). The student's logits ``s`` are drawn from N(0, 1).

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

  with ``P_S = softmax(s)`` the student's FULL softmax (DESIGN.md §1, eq. 10). Its exact gradient
  is ``dFKL/ds_j = P_S(j) * sum_S pt - pt(j) * 1[j in S] = P_S(j) - pt(j) * 1[j in S]``, i.e. the
  term pulls the teacher's top-k up towards ``pt`` and pushes every other token down. It is
  evaluated at the same snapshot of ``s`` as the reverse-KL samples, so a step is
  ``s <- s + lr * sum_x r(x) e_x - fkl_lr * grad FKL(s)``. With a single context the teacher's
  entropy is a constant, so the FKL is either on at every step or never.

Metrics (per seed, then mean and sample std over seeds, ``ddof = 1``):

* top-1 changes: the number of steps after which the student's argmax differs from the one
  before the step (ties broken by the lowest index, as ``numpy.argmax``).
* top-10 change rate: Jaccard distance ``1 - |A & B| / |A | B|`` between the student's top-10
  sets before and after each step; ``top10_change_rate_final`` is its mean over the last 10 % of
  the steps (at least one step).
* ``top10_overlap_final``: ``|student top-10 & teacher top-10| / 10`` at the end (a fraction).
* ``reverse_kl_final`` = KL(P_S || P_te) and ``forward_kl_final`` = KL(P_te || P_S), both with
  the full softmaxes, at the end.

Choice of the unspecified hyperparameters (ours; the paper gives neither ``lr``, the number of
steps, nor the number of samples per step):

* ``samples_per_step = 1`` — exactly the paper's update rule, one sampled token per step.
* ``steps = 1000`` and ``lr = 0.2`` — chosen so that the counts are of the paper's order: over
  seeds 0..299 they give 82.3 ± 35.1 top-1 changes for ``T = 1.0`` and 6.5 ± 5.0 for
  ``T = 0.3`` (paper, 3 seeds: 84.0 ± 16.7 and 7.3 ± 1.6); the default seeds 0, 1, 2 give
  98.3 ± 23.0 and 6.0 ± 3.0. The qualitative result is robust: split into 100 disjoint triples,
  seeds 0..299 give a high-/low-entropy ratio of mean top-1 changes of at least 4.4 for every
  triple (median 13). Single seeds can tie or invert (6 of 300 have high <= low): each one has
  a random N(0, 1) teacher logit far enough above 2.5 that ``P_te(x) > 0.1`` even at ``T = 1``
  (median max ``P_te`` is 0.08), so that token can hold the argmax (see the mechanism below).
  Nearby settings keep the result: ``lr`` 0.1, 0.15, 0.3 or 0.5 (1000 steps, 1 sample), 500
  steps of 2 samples, 2000 steps, all gave a ratio above 4.2 for every triple of seeds 0..59.
  The mechanism: ``P_S10`` sums to one over the top-10 while the teacher's mass on those
  tokens is ``Z < 1``, so at the best reachable point every reward is ``log Z < 0`` and sampled
  logits keep sinking below the tokens outside the top-10. With a flat teacher (T = 1) ``Z`` is
  small and typically no token can hold the argmax (``P_te(x) < 0.1 <= max P_S10``), so the
  top-1 keeps changing; with a peaked teacher (T = 0.3) ``Z`` is close to one and the teacher's
  mode, once found, settles at ``P_S10(x) = P_te(x)`` and stays the argmax.
* ``fkl_lr = 0.5`` — in a sweep over 0.05-5 (seeds 0..11) the final full-vocabulary reverse and
  forward KLs of the high-entropy scenario are lowest for ``fkl_lr`` about 0.25-0.5. Smaller
  values barely change the outcome within 1000 steps; larger ones over-concentrate the student
  on the teacher's top-16 (the term pushes every token outside ``S`` down, while a T = 1 teacher
  keeps much of its mass there), and the forward KL grows again.

Teacher entropy: the five overwritten logits (1.7-2.5) are not far above the N(0, 1) entries, so
at ``T = 0.3`` the teacher's entropy is still about 1.9 nats on average (1.0 at the 5th
percentile of seeds; 2.24, 1.86, 2.17 for seeds 0, 1, 2) and about 3.8 nats at ``T = 1.0``. With
``tau = 0.8`` the FKL is therefore active in BOTH scenarios for the default seeds (and for 97 %
of seeds at ``T = 0.3``): the paper's "low-entropy" teacher is not below its own threshold.
``results.json`` reports each scenario's teacher entropy and whether the FKL was active; ``tau``
is a parameter. What EOPD changes here is the top-10 set: it stays stable and matches the
teacher's top-10, while the top-1 of the T = 1 teacher, whose top probabilities are nearly tied,
keeps changing under either objective.

Randomness: for each seed, ``np.random.default_rng(seed)`` draws the teacher logits, the five
positions, the student logits, and then the student's samples, in that order. Every
(scenario, objective) pair of a seed starts from a fresh generator with the same seed, so they
share the teacher logits, the student's initial logits and the uniform draws used for sampling.
The same config therefore always gives the same ``results.json``.
"""

from __future__ import annotations

import itertools
import json
import math
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "OBJECTIVES",
    "PAPER_REFERENCE",
    "SCENARIOS",
    "TEACHER_TOP_LOGITS",
    "ToyConfig",
    "compute_results",
    "count_top1_changes",
    "entropy",
    "fkl_loss_and_grad",
    "format_summary",
    "jaccard_distance",
    "make_teacher_logits",
    "run_toy",
    "simulate",
    "teacher_probs",
    "top_k_mask",
    "topk_change_rates",
]

TEACHER_TOP_LOGITS: tuple[float, ...] = (1.7, 1.9, 2.1, 2.3, 2.5)
SCENARIOS: tuple[str, ...] = ("low_entropy", "high_entropy")
OBJECTIVES: tuple[str, ...] = ("reverse_kl", "eopd")
FINAL_FRACTION = 0.1  # the "end" of a run, for top10_change_rate_final

PAPER_REFERENCE: dict[str, Any] = {
    "source": "Jin et al., Entropy-Aware On-Policy Distillation, §3.2 Table 1 (3 seeds)",
    "top1_changes": {
        "low_entropy": {"temperature": 0.3, "mean": 7.3, "std": 1.6},
        "high_entropy": {"temperature": 1.0, "mean": 84.0, "std": 16.7},
    },
}

FIGURE1_NAME = "figure1_top10_change_rate.png"
FIGURE6_NAME = "figure6_distributions.png"
RESULTS_NAME = "results.json"


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


@dataclass(frozen=True)
class ToyConfig:
    """Settings of the toy experiment; see the module docstring for why the defaults.

    Attributes:
        vocab_size: number of categories V (paper: 80); at least 6 and more than
            ``student_top_k`` and ``fkl_top_k`` would need.
        seeds: one run per seed (paper: 3 seeds); distinct non-negative integers.
        steps: number of update steps per run.
        lr: step size eta of the reverse-KL update ``s_x += lr * r(x)``.
        samples_per_step: tokens sampled (with replacement) from ``P_S10`` per step.
        student_top_k: the student samples from its top-k only (paper: 10); also the k of the
            top-k change rate and of the top-k overlap with the teacher.
        teacher_temperatures: ``(low-entropy T, high-entropy T)`` (paper: 0.3 and 1.0).
        tau: teacher-entropy threshold in nats above which EOPD adds the forward KL.
        fkl_top_k: size k of the teacher's top-k set S of the forward KL (paper: 16).
        fkl_lr: step size of the forward-KL gradient step of the ``eopd`` objective.
        smooth_window: moving-average window (steps) of the change-rate curves in Figure 1.
    """

    vocab_size: int = 80
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 1000
    lr: float = 0.2
    samples_per_step: int = 1
    student_top_k: int = 10
    teacher_temperatures: tuple[float, float] = (0.3, 1.0)
    tau: float = 0.8
    fkl_top_k: int = 16
    fkl_lr: float = 0.5
    smooth_window: int = 25

    def __post_init__(self) -> None:
        def fail(name: str, requirement: str) -> None:
            raise ValueError(f"ToyConfig.{name}: {requirement} (got {getattr(self, name)!r})")

        for name in (
            "vocab_size",
            "steps",
            "samples_per_step",
            "student_top_k",
            "fkl_top_k",
            "smooth_window",
        ):
            if not _is_int(getattr(self, name)):
                fail(name, "must be an integer")
        if self.vocab_size < len(TEACHER_TOP_LOGITS) + 1:
            fail("vocab_size", f"must be >= {len(TEACHER_TOP_LOGITS) + 1}")
        if self.steps < 1:
            fail("steps", "must be >= 1")
        if self.samples_per_step < 1:
            fail("samples_per_step", "must be >= 1")
        if not 1 <= self.student_top_k < self.vocab_size:
            fail("student_top_k", f"must be in [1, vocab_size - 1 = {self.vocab_size - 1}]")
        if not 1 <= self.fkl_top_k <= self.vocab_size:
            fail("fkl_top_k", f"must be in [1, vocab_size = {self.vocab_size}]")
        if self.smooth_window < 1:
            fail("smooth_window", "must be >= 1")

        for name in ("lr", "fkl_lr"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or value <= 0:
                fail(name, "must be a finite number > 0")
        if not _is_real(self.tau) or math.isnan(self.tau) or self.tau < 0:
            fail("tau", "must be a number >= 0 (inf turns the forward KL off)")

        seeds = self.seeds
        if _is_int(seeds) or isinstance(seeds, str | bytes):
            fail("seeds", "must be a sequence of integers")
        try:
            seeds = tuple(seeds)
        except TypeError:
            fail("seeds", "must be a sequence of integers")
        if not seeds:
            fail("seeds", "must not be empty")
        if not all(_is_int(s) and s >= 0 for s in seeds):
            fail("seeds", "must all be integers >= 0")
        if len(set(seeds)) != len(seeds):
            fail("seeds", "must be distinct")
        object.__setattr__(self, "seeds", tuple(int(s) for s in seeds))

        temps = self.teacher_temperatures
        try:
            temps = tuple(temps)
        except TypeError:
            fail("teacher_temperatures", "must be a pair (low T, high T)")
        if len(temps) != 2:
            fail("teacher_temperatures", "must be a pair (low T, high T)")
        if not all(_is_real(t) and math.isfinite(t) and t > 0 for t in temps):
            fail("teacher_temperatures", "must be finite numbers > 0")
        if not temps[0] < temps[1]:
            fail("teacher_temperatures", "the low-entropy T must be below the high-entropy T")
        object.__setattr__(self, "teacher_temperatures", tuple(float(t) for t in temps))
        for name in ("lr", "fkl_lr", "tau"):
            object.__setattr__(self, name, float(getattr(self, name)))
        for name in (
            "vocab_size",
            "steps",
            "samples_per_step",
            "student_top_k",
            "fkl_top_k",
            "smooth_window",
        ):
            object.__setattr__(self, name, int(getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-ready values (tuples become lists)."""
        out = asdict(self)
        out["seeds"] = list(self.seeds)
        out["teacher_temperatures"] = list(self.teacher_temperatures)
        return out

    def temperature(self, scenario: str) -> float:
        """The teacher temperature of ``scenario`` (one of ``SCENARIOS``)."""
        return self.teacher_temperatures[SCENARIOS.index(scenario)]


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
    teacher_p: np.ndarray
    teacher_entropy: float
    fkl_active: bool
    change_rates: np.ndarray  # (steps,) Jaccard distance of top-k before/after each step
    top1_changes: int
    final_logits: np.ndarray

    def final_student_p(self) -> np.ndarray:
        return np.exp(log_softmax(self.final_logits))


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


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    arr = np.asarray(values, dtype=np.float64)
    std = float(np.std(arr, ddof=1)) if arr.size > 1 else None
    return float(np.mean(arr)), std


def _summarise(traces: list[RunTrace], config: ToyConfig) -> dict[str, Any]:
    k = config.student_top_k
    n_final = max(1, math.ceil(FINAL_FRACTION * config.steps))
    per_seed: dict[str, list[Any]] = {
        "top1_changes": [],
        "top10_change_rate_final": [],
        "top10_overlap_final": [],
        "reverse_kl_final": [],
        "forward_kl_final": [],
        "teacher_entropy": [],
        "fkl_active": [],
    }
    for tr in traces:
        ps = tr.final_student_p()
        overlap = np.count_nonzero(top_k_mask(tr.final_logits, k) & top_k_mask(tr.teacher_p, k))
        per_seed["top1_changes"].append(int(tr.top1_changes))
        per_seed["top10_change_rate_final"].append(float(np.mean(tr.change_rates[-n_final:])))
        per_seed["top10_overlap_final"].append(float(overlap) / k)
        per_seed["reverse_kl_final"].append(kl_divergence(ps, tr.teacher_p))
        per_seed["forward_kl_final"].append(kl_divergence(tr.teacher_p, ps))
        per_seed["teacher_entropy"].append(float(tr.teacher_entropy))
        per_seed["fkl_active"].append(bool(tr.fkl_active))

    out: dict[str, Any] = {"temperature": traces[0].temperature}
    mean, std = _mean_std(per_seed["top1_changes"])
    out["top1_changes_mean"] = mean
    out["top1_changes_std"] = std
    out["top1_changes_per_seed"] = per_seed["top1_changes"]
    for name in (
        "top10_change_rate_final",
        "top10_overlap_final",
        "reverse_kl_final",
        "forward_kl_final",
        "teacher_entropy",
    ):
        mean, std = _mean_std(per_seed[name])
        out[name] = mean
        out[f"{name}_std"] = std
        out[f"{name}_per_seed"] = per_seed[name]
    active = per_seed["fkl_active"]
    out["fkl_active"] = bool(all(active))
    out["fkl_active_fraction"] = sum(active) / len(active)
    out["fkl_active_per_seed"] = active
    return out


def _settings(config: ToyConfig) -> dict[str, Any]:
    settings: dict[str, Any] = {
        name: value if not isinstance(value, float) or math.isfinite(value) else str(value)
        for name, value in config.to_dict().items()
    }  # tau = inf is written as "inf": JSON has no infinity
    settings.update(
        {
            "scenario_temperatures": {name: config.temperature(name) for name in SCENARIOS},
            "teacher_top_logits": list(TEACHER_TOP_LOGITS),
            "std": "sample standard deviation over seeds (ddof=1); null with a single seed",
            "top10_change_rate_final": (
                f"mean Jaccard distance of consecutive student top-{config.student_top_k} "
                f"sets over the last {FINAL_FRACTION:.0%} of steps"
            ),
            "top10_overlap_final": (
                f"|student top-{config.student_top_k} & teacher top-{config.student_top_k}|"
                f" / {config.student_top_k} at the end"
            ),
            "kl": "reverse_kl = KL(student || teacher), forward_kl = KL(teacher || student), "
            "full softmaxes",
            "fkl_active": "eopd only: teacher entropy > tau for every seed (reverse_kl: never)",
            "paper_reference": PAPER_REFERENCE,
        }
    )
    return settings


Traces = dict[tuple[str, str], list[RunTrace]]


def compute_results(config: ToyConfig) -> tuple[dict[str, Any], Traces]:
    """Run every scenario, objective and seed; return (results dict, traces for the figures)."""
    traces: Traces = {}
    results: dict[str, Any] = {}
    for scenario in SCENARIOS:
        temperature = config.temperature(scenario)
        results[scenario] = {}
        for objective in OBJECTIVES:
            runs = [simulate(config, seed, temperature, objective) for seed in config.seeds]
            traces[scenario, objective] = runs
            results[scenario][objective] = _summarise(runs, config)
    results["settings"] = _settings(config)
    return results, traces


# --------------------------------------------------------------------------- figures


_SCENARIO_COLOURS = {"low_entropy": "tab:blue", "high_entropy": "tab:red"}
_OBJECTIVE_LABELS = {"reverse_kl": "reverse KL (OPD)", "eopd": "EOPD (RKL + top-k forward KL)"}


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average; the first points average over what exists so far."""
    window = max(1, min(window, len(values)))
    csum = np.cumsum(np.insert(values, 0, 0.0))
    out = np.empty(len(values))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    out[:] = (csum[idx] - csum[lo]) / (idx - lo)
    return out


def _plot_figures(
    traces: dict[tuple[str, str], list[RunTrace]], config: ToyConfig, out_dir: Path
) -> tuple[Path, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(1, config.steps + 1)
    fig1, axes = plt.subplots(1, len(OBJECTIVES), figsize=(11, 4), sharey=True)
    for ax, objective in zip(axes, OBJECTIVES, strict=True):
        for scenario in SCENARIOS:
            runs = traces[scenario, objective]
            curve = np.mean([tr.change_rates for tr in runs], axis=0)
            h = np.mean([tr.teacher_entropy for tr in runs])
            ax.plot(
                steps,
                _moving_average(curve, config.smooth_window),
                color=_SCENARIO_COLOURS[scenario],
                label=f"T={config.temperature(scenario):g} ({scenario.replace('_', ' ')}, "
                f"H_te={h:.2f} nats)",
            )
        ax.set_title(_OBJECTIVE_LABELS[objective])
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel(
        f"top-{config.student_top_k} change rate\n(Jaccard, moving avg {config.smooth_window})"
    )
    fig1.suptitle(f"Top-{config.student_top_k} change rate, mean over {len(config.seeds)} seeds")
    fig1.tight_layout()
    path1 = out_dir / FIGURE1_NAME
    fig1.savefig(path1, dpi=110)
    plt.close(fig1)

    seed = config.seeds[0]
    fig6, axes6 = plt.subplots(
        len(SCENARIOS), len(OBJECTIVES), figsize=(12, 6.5), sharex=True, squeeze=False
    )
    x = np.arange(config.vocab_size)
    width = 0.42
    for row, scenario in enumerate(SCENARIOS):
        for col, objective in enumerate(OBJECTIVES):
            ax = axes6[row][col]
            tr = traces[scenario, objective][0]
            order = np.argsort(-tr.teacher_p, kind="stable")
            ax.bar(x - width / 2, tr.teacher_p[order], width, color="0.45", label="teacher")
            ax.bar(
                x + width / 2,
                tr.final_student_p()[order],
                width,
                color=_SCENARIO_COLOURS[scenario],
                label="student (final)",
            )
            ax.set_title(
                f"T={tr.temperature:g}, {_OBJECTIVE_LABELS[objective]}, "
                f"top-1 changes {tr.top1_changes}",
                fontsize=9,
            )
            ax.set_ylabel("probability")
            ax.grid(alpha=0.3, axis="y")
            ax.legend(fontsize=8)
    for ax in axes6[-1]:
        ax.set_xlabel("token (sorted by teacher probability)")
    fig6.suptitle(f"Teacher vs final student distributions (seed {seed})")
    fig6.tight_layout()
    path6 = out_dir / FIGURE6_NAME
    fig6.savefig(path6, dpi=110)
    plt.close(fig6)
    return path1, path6


# --------------------------------------------------------------------------- entry points


def run_toy(config: ToyConfig, out_dir: Path) -> dict[str, Any]:
    """Run the toy, write ``results.json`` and both figures to ``out_dir``; return the results."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results, traces = compute_results(config)
    (out_dir / RESULTS_NAME).write_text(
        json.dumps(results, indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    _plot_figures(traces, config, out_dir)
    return results


def _fmt(mean: float, std: float | None, digits: int) -> str:
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_summary(results: dict[str, Any]) -> str:
    """A plain-text table of ``results`` (as returned by ``run_toy``) for the terminal."""
    settings = results.get("settings", {})
    ref = settings.get("paper_reference", PAPER_REFERENCE)["top1_changes"]
    header = (
        "scenario",
        "T",
        "H_te",
        "objective",
        "FKL",
        "top-1 changes",
        "paper",
        "top10 chg",
        "top10 ovl",
        "RKL",
        "FKL(te||s)",
    )
    rows = [header]
    for scenario in SCENARIOS:
        for objective in OBJECTIVES:
            r = results[scenario][objective]
            fkl = "on" if r["fkl_active"] else "off"
            frac = r.get("fkl_active_fraction")
            if objective == "eopd" and frac is not None and 0 < frac < 1:
                fkl = f"{frac:.0%}"
            paper = ref[scenario]
            rows.append(
                (
                    scenario,
                    f"{r['temperature']:g}",
                    f"{r['teacher_entropy']:.2f}",
                    objective,
                    fkl,
                    _fmt(r["top1_changes_mean"], r["top1_changes_std"], 1),
                    f"{paper['mean']:.1f} ± {paper['std']:.1f}"
                    if objective == "reverse_kl"
                    else "",
                    f"{r['top10_change_rate_final']:.3f}",
                    f"{r['top10_overlap_final']:.2f}",
                    f"{r['reverse_kl_final']:.3f}",
                    f"{r['forward_kl_final']:.3f}",
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [
        f"seeds={settings.get('seeds')} steps={settings.get('steps')} lr={settings.get('lr')} "
        f"samples/step={settings.get('samples_per_step')} tau={settings.get('tau')} "
        f"fkl_top_k={settings.get('fkl_top_k')} fkl_lr={settings.get('fkl_lr')}",
        *textwrap.wrap(
            "top-1 changes: mean ± sample std over seeds (paper: Table 1, reverse KL, 3 seeds). "
            "FKL: whether EOPD's forward-KL term was on (teacher entropy H_te > tau). "
            "top10 chg: Jaccard change rate of the student's top-10 over the last 10% of steps. "
            "top10 ovl: overlap with the teacher's top-10. RKL = KL(student||teacher), "
            "FKL(te||s) = KL(teacher||student), full softmaxes, at the end.",
            width=100,
        ),
    ]
    return "\n".join([*lines, "", *notes])
