"""Statistics over seeds: mean ± std, differences to a baseline, curves with a band.

Pure functions over ``{seed: value}`` mappings. ``std`` is the sample standard deviation
(``ddof=1``), None for a single seed. A difference to the baseline is *paired* when the two
variants share at least two seeds or have the same single seed (seed S is the same prompt stream
for every variant, so the per-seed difference removes the data's share of the noise): its spread
is the std of the per-seed differences. Otherwise it is the difference of the means, and its
spread the pooled std of the two groups, ``sqrt(((n1-1)s1² + (n2-1)s2²) / (n1+n2-2))``.
A difference smaller than its spread is within the noise of this many seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Diff", "Stat", "curve", "difference", "mean_band", "seed_stat"]


@dataclass(frozen=True)
class Stat:
    """Mean and sample std of one quantity over seeds."""

    mean: float
    std: float | None  # None for one seed
    n: int
    values: dict[int, float]  # seed -> value

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n, "values": self.values}


@dataclass(frozen=True)
class Diff:
    """A variant minus the baseline, with the seed spread of that difference."""

    mean: float
    spread: float | None  # None: too few seeds to tell
    n: int  # seeds paired, or seeds in both groups together (pooled)
    kind: Literal["paired", "pooled"]

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "spread": self.spread, "n": self.n, "kind": self.kind}


def _clean(values: Mapping[int, float | None]) -> dict[int, float]:
    return {s: float(v) for s, v in values.items() if v is not None and math.isfinite(v)}


def _std(xs: Sequence[float]) -> float | None:
    if len(xs) < 2:
        return None
    mean = sum(xs) / len(xs)
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def seed_stat(values: Mapping[int, float | None]) -> Stat | None:
    """Mean ± std of the finite values (None and NaN: that seed is missing); None if none."""
    clean = _clean(values)
    if not clean:
        return None
    xs = list(clean.values())
    return Stat(sum(xs) / len(xs), _std(xs), len(xs), clean)


def difference(values: Mapping[int, float | None], base: Mapping[int, float | None]) -> Diff | None:
    """``values - base`` over seeds: paired on >= 2 common seeds, else pooled (module doc)."""
    ours, theirs = _clean(values), _clean(base)
    if not ours or not theirs:
        return None
    common = sorted(set(ours) & set(theirs))
    if len(common) >= 2 or ours.keys() == theirs.keys():
        deltas = [ours[s] - theirs[s] for s in common]
        return Diff(sum(deltas) / len(deltas), _std(deltas), len(deltas), "paired")
    a, b = list(ours.values()), list(theirs.values())
    mean = sum(a) / len(a) - sum(b) / len(b)
    dof = len(a) + len(b) - 2
    if dof < 1:
        return Diff(mean, None, len(a) + len(b), "pooled")
    ss = sum((x - sum(a) / len(a)) ** 2 for x in a) + sum((x - sum(b) / len(b)) ** 2 for x in b)
    return Diff(mean, math.sqrt(ss / dof), len(a) + len(b), "pooled")


def curve(rows: Sequence[Mapping[str, Any]], key: str) -> dict[int, float]:
    """``iteration -> value`` of ``key`` in a run's metrics.jsonl rows (missing / null skipped)."""
    out: dict[int, float] = {}
    for row in rows:
        value = row.get(key)
        if value is not None and "iteration" in row and math.isfinite(float(value)):
            out[int(row["iteration"])] = float(value)
    return out


def mean_band(
    curves: Sequence[Mapping[int, float]],
) -> tuple[list[int], list[float], list[float]]:
    """(iterations, mean, std) over the curves of several seeds, per iteration.

    Each iteration is averaged over the seeds that have it; the std is 0 where only one has it
    (a band of no width rather than a gap)."""
    iterations = sorted({it for c in curves for it in c})
    means, stds = [], []
    for it in iterations:
        xs = [c[it] for c in curves if it in c]
        means.append(sum(xs) / len(xs))
        stds.append(_std(xs) or 0.0)
    return iterations, means, stds
