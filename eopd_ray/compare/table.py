"""The numbers of a comparison, gathered per column, variant and seed from the runs' files.

Inputs are what the jobs wrote: each run's ``metrics.jsonl`` and ``summary.json``
(:class:`RunRecord`) and the evaluation's ``results.json`` (checkpoint names ``V-sS``; per
benchmark the summary of ``eopd_ray.eval.metrics.summarize`` and, when the eval config has a
teacher, ``teacher_ref``). A :class:`Column` is one quantity; ``gather`` returns, per column,
``{variant: {seed: value}}`` (None where a seed lacks it), which ``eopd_ray.compare.aggregate``
turns into mean ± std and differences.

Columns, by section:

- ``eval``: per benchmark Avg@n and Pass@n (n = samples per problem; Pass at the largest k of
  the curve), and their means over benchmarks (a seed's mean needs every benchmark);
- ``teacher``: per benchmark, from ``teacher_ref``: reverse KL per token, forward KL at positions
  with teacher entropy > tau, and the share of such positions;
- ``train``: the last iteration's training metrics (``TRAIN_METRICS``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from eopd_ray.metrics import read_metrics

Section = Literal["eval", "teacher", "train"]
Cells = dict[str, dict[int, float | None]]  # variant -> seed -> value

# (metrics.jsonl key, label, shown in %)
TRAIN_METRICS: tuple[tuple[str, str, bool], ...] = (
    ("train/reverse_kl", "RKL", False),
    ("train/fkl_mean", "FKL", False),
    ("train/fkl_high_entropy", "FKL@H>τ", False),
    ("train/high_entropy_frac", "H_te>τ", True),
    ("train/student_entropy_mean", "student H", False),
    ("rollout/accuracy", "rollout acc", True),
)
# the curves of Figures 4, 5 and 9
CURVES: tuple[tuple[str, str], ...] = (
    ("train/student_entropy_mean", "student entropy (nats)"),
    ("train/fkl_high_entropy", "forward KL at H_te > τ"),
    ("train/high_entropy_frac", "share of positions with H_te > τ"),
)


@dataclass(frozen=True)
class RunRecord:
    """What one finished training run left on disk."""

    variant: str
    seed: int
    rows: list[dict[str, Any]]  # metrics.jsonl
    summary: dict[str, Any]  # summary.json

    @property
    def name(self) -> str:
        return f"{self.variant}-s{self.seed}"


@dataclass(frozen=True)
class Column:
    key: str  # unique, e.g. "math500/avg", "train/reverse_kl"
    label: str
    section: Section
    percent: bool


def load_run(variant: str, seed: int, output_dir: Path) -> RunRecord:
    rows = read_metrics(output_dir / "metrics.jsonl")
    return RunRecord(variant, seed, rows, json.loads((output_dir / "summary.json").read_text()))


def _bench(results: dict[str, Any], run: RunRecord, bench: str) -> dict[str, Any]:
    return results.get("checkpoints", {}).get(run.name, {}).get(bench, {})


def _top_pass(summary: dict[str, Any], samples: int) -> float | None:
    curve = summary.get("pass_at_k") or {}
    if str(samples) in curve:
        return curve[str(samples)]
    return curve[max(curve, key=int)] if curve else None


def _cells(runs: Sequence[RunRecord], value: Any) -> Cells:
    """``{variant: {seed: value(run)}}`` over ``runs``."""
    out: Cells = {}
    for run in runs:
        out.setdefault(run.variant, {})[run.seed] = value(run)
    return out


def eval_columns(results: dict[str, Any], runs: Sequence[RunRecord]) -> list[tuple[Column, Cells]]:
    """Avg@n and Pass@n per benchmark, then their means over the benchmarks."""
    n, benches = results["samples"], results["benchmarks"]
    out: list[tuple[Column, Cells]] = []
    for bench in benches:
        ks = [int(k) for r in runs for k in _bench(results, r, bench).get("pass_at_k", {})]
        top = n if n in ks or not ks else max(ks)
        avg = _cells(runs, lambda r, b=bench: _bench(results, r, b).get("avg_at_k"))
        top_pass = _cells(runs, lambda r, b=bench: _top_pass(_bench(results, r, b), n))
        out.append((Column(f"{bench}/avg", f"{bench} Avg@{n}", "eval", True), avg))
        out.append((Column(f"{bench}/pass", f"{bench} Pass@{top}", "eval", True), top_pass))
    if len(benches) > 1:
        for kind in ("avg", "pass"):
            picked = [(col, cells) for col, cells in out if col.key.endswith("/" + kind)]
            tops = {col.label.rsplit(" ", 1)[1] for col, _ in picked}  # Avg@8, Pass@8
            label = f"mean {tops.pop()}" if len(tops) == 1 else f"mean {kind}"
            mean = _mean_cells([cells for _, cells in picked])
            out.append((Column(f"mean/{kind}", label, "eval", True), mean))
    return out


def _mean_cells(per_bench: list[Cells]) -> Cells:
    """Per variant and seed the mean over benchmarks; None unless every benchmark has a value."""
    out: Cells = {}
    for variant, seeds in per_bench[0].items():
        for seed in seeds:
            xs = [cells[variant][seed] for cells in per_bench]
            out.setdefault(variant, {})[seed] = (
                None if any(x is None for x in xs) else sum(xs) / len(xs)
            )
    return out


def has_teacher_ref(results: dict[str, Any] | None) -> bool:
    if not results:
        return False
    return any("teacher_ref" in s for per in results["checkpoints"].values() for s in per.values())


def teacher_columns(
    results: dict[str, Any], runs: Sequence[RunRecord]
) -> list[tuple[Column, Cells]]:
    """Teacher-referenced RKL, FKL@H>tau and share above tau per benchmark (teacher_ref)."""
    out: list[tuple[Column, Cells]] = []
    for bench in results["benchmarks"]:
        for key, label, percent in (
            ("rkl_per_token", "RKL", False),
            ("fkl_high_entropy", "FKL@H>τ", False),
            ("high_entropy_frac", "H_te>τ", True),
        ):
            cells = _cells(
                runs,
                lambda r, b=bench, k=key: _bench(results, r, b).get("teacher_ref", {}).get(k),
            )
            out.append((Column(f"{bench}/{key}", f"{bench} {label}", "teacher", percent), cells))
    return out


def train_columns(runs: Sequence[RunRecord]) -> list[tuple[Column, Cells]]:
    """The last logged iteration's value of each of ``TRAIN_METRICS``."""
    last = {r.name: (r.rows[-1] if r.rows else {}) for r in runs}
    return [
        (Column(key, label, "train", percent), _cells(runs, lambda r, k=key: last[r.name].get(k)))
        for key, label, percent in TRAIN_METRICS
    ]


def gather(runs: Sequence[RunRecord], results: dict[str, Any] | None) -> list[tuple[Column, Cells]]:
    """Every column of the report, eval first, then teacher-referenced, then training."""
    columns = []
    if results:
        columns += eval_columns(results, runs)
        if has_teacher_ref(results):
            columns += teacher_columns(results, runs)
    return columns + train_columns(runs)
