"""The toy experiment's metrics: per-run traces reduced to ``results.json`` and a terminal table.

Metrics (per seed, then mean and sample std over seeds, ``ddof = 1``):

* top-1 changes: the number of steps after which the student's argmax differs from the one
  before the step (ties broken by the lowest index, as ``numpy.argmax``).
* top-10 change rate: Jaccard distance ``1 - |A & B| / |A | B|`` between the student's top-10
  sets before and after each step; ``top10_change_rate_final`` is its mean over the last 10 % of
  the steps (at least one step).
* ``top10_overlap_final``: ``|student top-10 & teacher top-10| / 10`` at the end (a fraction).
* ``reverse_kl_final`` = KL(P_S || P_te) and ``forward_kl_final`` = KL(P_te || P_S), both with
  the full softmaxes, at the end.
"""

from __future__ import annotations

import math
import textwrap
from typing import Any

import numpy as np

from eopd_ray.toy.config import OBJECTIVES, SCENARIOS, TEACHER_TOP_LOGITS, ToyConfig
from eopd_ray.toy.simulate import RunTrace, kl_divergence, top_k_mask

__all__ = ["FINAL_FRACTION", "PAPER_REFERENCE", "format_summary", "settings_record", "summarise"]

FINAL_FRACTION = 0.1  # the "end" of a run, for top10_change_rate_final

PAPER_REFERENCE: dict[str, Any] = {
    "source": "Jin et al., Entropy-Aware On-Policy Distillation, §3.2 Table 1 (3 seeds)",
    "top1_changes": {
        "low_entropy": {"temperature": 0.3, "mean": 7.3, "std": 1.6},
        "high_entropy": {"temperature": 1.0, "mean": 84.0, "std": 16.7},
    },
}

_SUMMARY_HEADER: tuple[str, ...] = (
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


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    arr = np.asarray(values, dtype=np.float64)
    std = float(np.std(arr, ddof=1)) if arr.size > 1 else None
    return float(np.mean(arr)), std


def summarise(traces: list[RunTrace], config: ToyConfig) -> dict[str, Any]:
    """The ``results.json`` entry of one (scenario, objective): per-seed metrics, mean and std."""
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


def settings_record(config: ToyConfig) -> dict[str, Any]:
    """The ``settings`` entry of ``results.json``: the config and what each metric means."""
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


# --------------------------------------------------------------------------- terminal table


def _fmt(mean: float, std: float | None, digits: int) -> str:
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _summary_row(
    scenario: str, objective: str, r: dict[str, Any], paper: dict[str, Any]
) -> tuple[str, ...]:
    """One line of the table: ``r`` is ``results[scenario][objective]``."""
    fkl = "on" if r["fkl_active"] else "off"
    frac = r.get("fkl_active_fraction")
    if objective == "eopd" and frac is not None and 0 < frac < 1:
        fkl = f"{frac:.0%}"
    return (
        scenario,
        f"{r['temperature']:g}",
        f"{r['teacher_entropy']:.2f}",
        objective,
        fkl,
        _fmt(r["top1_changes_mean"], r["top1_changes_std"], 1),
        f"{paper['mean']:.1f} ± {paper['std']:.1f}" if objective == "reverse_kl" else "",
        f"{r['top10_change_rate_final']:.3f}",
        f"{r['top10_overlap_final']:.2f}",
        f"{r['reverse_kl_final']:.3f}",
        f"{r['forward_kl_final']:.3f}",
    )


def _align(rows: list[tuple[str, ...]]) -> list[str]:
    """Left-aligned columns, with a rule of dashes under the first (header) row."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _summary_notes(settings: dict[str, Any]) -> list[str]:
    return [
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


def format_summary(results: dict[str, Any]) -> str:
    """A plain-text table of ``results`` (as returned by ``run_toy``) for the terminal."""
    settings = results.get("settings", {})
    ref = settings.get("paper_reference", PAPER_REFERENCE)["top1_changes"]
    rows = [_SUMMARY_HEADER]
    for scenario in SCENARIOS:
        for objective in OBJECTIVES:
            rows.append(
                _summary_row(scenario, objective, results[scenario][objective], ref[scenario])
            )
    return "\n".join([*_align(rows), "", *_summary_notes(settings)])
