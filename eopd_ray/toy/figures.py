"""The toy experiment's figures: top-10 change rates (Figure 1) and final distributions (Figure 6).

matplotlib is imported only when a figure is drawn, so importing ``eopd_ray.toy`` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from eopd_ray.toy.config import OBJECTIVES, SCENARIOS, ToyConfig
from eopd_ray.toy.simulate import Traces

__all__ = ["FIGURE1_NAME", "FIGURE6_NAME", "plot_figures"]

FIGURE1_NAME = "figure1_top10_change_rate.png"
FIGURE6_NAME = "figure6_distributions.png"

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


def _pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_change_rates(plt: Any, traces: Traces, config: ToyConfig, out_dir: Path) -> Path:
    """Figure 1: the seed-mean top-k change rate per step, one panel per objective."""
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
    return path1


def _plot_distributions(plt: Any, traces: Traces, config: ToyConfig, out_dir: Path) -> Path:
    """Figure 6: teacher vs final student distribution of the first seed, per run."""
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
    return path6


def plot_figures(traces: Traces, config: ToyConfig, out_dir: Path) -> tuple[Path, Path]:
    """Write Figure 1 and Figure 6 into ``out_dir``; return their paths."""
    plt = _pyplot()
    return (
        _plot_change_rates(plt, traces, config, out_dir),
        _plot_distributions(plt, traces, config, out_dir),
    )
