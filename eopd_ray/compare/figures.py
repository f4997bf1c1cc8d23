"""The comparison's figures (matplotlib, Agg backend, PNG under ``OUT/figures/``).

Drawn from :func:`eopd_ray.compare.report.build_report`'s data, one colour per variant:

- ``pass_at_k.png`` (paper Fig. 2): Pass@k vs k (log2), mean over seeds with a ± std band, one
  panel per benchmark;
- ``entropy_histograms.png`` (Fig. 3): share of tokens per entropy bin (log scale), the student's
  (solid) and the teacher's at the same positions (dashed, when the eval had a teacher);
- ``student_entropy.png`` (Fig. 4), ``fkl_high_entropy.png`` (Fig. 5), ``high_entropy_frac.png``
  (Fig. 9): the training metric vs iteration, mean over seeds with a ± std band.

``write_figures`` returns the paths written; a figure without data is not written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eopd_ray.compare.table import CURVES

# file -> caption in report.md
CAPTIONS = {
    "pass_at_k.png": "Pass@k per variant (cf. paper Fig. 2)",
    "entropy_histograms.png": "token-entropy histograms, student vs teacher (cf. Fig. 3)",
    "student_entropy.png": "student entropy during training (cf. Fig. 4)",
    "fkl_high_entropy.png": "forward KL at high-entropy positions during training (cf. Fig. 5)",
    "high_entropy_frac.png": "share of positions with teacher entropy > τ (cf. Fig. 9)",
}
_CURVE_FILES = {
    "train/student_entropy_mean": "student_entropy.png",
    "train/fkl_high_entropy": "fkl_high_entropy.png",
    "train/high_entropy_frac": "high_entropy_frac.png",
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(variants: list[str]) -> dict[str, Any]:
    cycle = _pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
    return {v: cycle[i % len(cycle)] for i, v in enumerate(variants)}


def _panels(count: int) -> tuple[Any, list[Any]]:
    fig, axes = _pyplot().subplots(1, count, figsize=(4.4 * count, 3.5), squeeze=False)
    return fig, list(axes[0])


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def plot_pass_at_k(report: dict[str, Any], path: Path) -> Path | None:
    curves = report.get("pass_at_k") or {}
    if not any(curves.values()):
        return None
    colors = _colors(report["variants"])
    fig, axes = _panels(len(curves))
    for ax, (bench, per_variant) in zip(axes, curves.items(), strict=True):
        for variant, by_k in per_variant.items():
            ks = sorted(by_k, key=int)
            mean = [100 * by_k[k]["mean"] for k in ks]
            std = [100 * (by_k[k]["std"] or 0.0) for k in ks]
            x = [int(k) for k in ks]
            ax.plot(x, mean, marker="o", color=colors[variant], label=variant)
            lo = [m - s for m, s in zip(mean, std, strict=True)]
            hi = [m + s for m, s in zip(mean, std, strict=True)]
            ax.fill_between(x, lo, hi, color=colors[variant], alpha=0.2)
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [str(k) for k in x])
        ax.set(title=bench, xlabel="k", ylabel="Pass@k (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_entropy_histograms(report: dict[str, Any], path: Path) -> Path | None:
    hists, edges = report.get("entropy_histograms") or {}, report.get("entropy_edges")
    if not edges or not any(h.get("student") for per in hists.values() for h in per.values()):
        return None
    colors = _colors(report["variants"])
    fig, axes = _panels(len(hists))
    for ax, (bench, per_variant) in zip(axes, hists.items(), strict=True):
        tau = None
        for variant, counts in per_variant.items():
            for who, style in (("student", "-"), ("teacher", "--")):
                c = counts.get(who)
                if c and sum(c) > 0:
                    share = [x / sum(c) for x in c]
                    label = f"{variant} {who}" if who == "student" else f"teacher on {variant}"
                    ax.stairs(share, edges, color=colors[variant], linestyle=style, label=label)
            tau = tau if tau is not None else counts.get("tau")
        if tau is not None:
            ax.axvline(tau, color="grey", linestyle=":", linewidth=1, label=f"τ = {tau:g}")
        ax.set_yscale("log")
        ax.set(title=bench, xlabel="token entropy (nats)", ylabel="share of tokens")
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_curve(report: dict[str, Any], key: str, ylabel: str, path: Path) -> Path | None:
    per_variant = report["curves"].get(key) or {}
    if not per_variant:
        return None
    colors = _colors(report["variants"])
    fig, axes = _panels(1)
    ax = axes[0]
    for variant, c in per_variant.items():
        lo = [m - s for m, s in zip(c["mean"], c["std"], strict=True)]
        hi = [m + s for m, s in zip(c["mean"], c["std"], strict=True)]
        ax.plot(c["iterations"], c["mean"], color=colors[variant], label=variant)
        ax.fill_between(c["iterations"], lo, hi, color=colors[variant], alpha=0.2)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    seeds = len(report["seeds"])
    ax.set(xlabel="iteration", ylabel=ylabel, title=f"mean ± std over {seeds} seed(s)")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def write_figures(report: dict[str, Any], folder: Path) -> list[Path]:
    """Every figure that has data, under ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = [
        plot_pass_at_k(report, folder / "pass_at_k.png"),
        plot_entropy_histograms(report, folder / "entropy_histograms.png"),
        *(plot_curve(report, key, label, folder / _CURVE_FILES[key]) for key, label in CURVES),
    ]
    return [p for p in written if p is not None]
