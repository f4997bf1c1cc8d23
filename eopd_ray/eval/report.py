"""Outputs of an evaluation job: ``results.json``, ``results.md`` and PNG plots.

- ``results.json``: per checkpoint and benchmark the summary of ``metrics.summarize`` (Avg@n,
  Pass@k for every k of the curve, mean response tokens, truncated share, entropy histogram and
  share of tokens with entropy >= 1 nat), the histogram's bin edges and the rows skipped by the
  loaders (no usable gold answer);
- ``results.md``: a table like the paper's Table 2 (Avg@n / Pass@n per benchmark and their mean
  over benchmarks, in %), then response lengths and high-entropy shares;
- ``pass_at_k.png``: Pass@k against k (log2 axis), one panel per benchmark, one line per
  checkpoint; ``entropy.png``: the token-entropy histograms (share of tokens per bin, log scale),
  one panel per benchmark, one line per checkpoint (the paper's Figure 3).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from eopd_ray.eval.metrics import entropy_edges


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def markdown_table(results: dict[str, Any]) -> str:
    """The Table 2-style markdown of ``results`` (as written to results.json)."""
    benchmarks: list[str] = results["benchmarks"]
    checkpoints: dict[str, dict[str, Any]] = results["checkpoints"]
    n = results["samples"]
    head = ["checkpoint"]
    for name in [*benchmarks, "mean"]:
        head += [f"{name} Avg@{n}", f"{name} Pass@{n}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for ckpt, per_bench in checkpoints.items():
        row, avgs, passes = [ckpt], [], []
        for bench in benchmarks:
            summary = per_bench.get(bench, {})
            avg = summary.get("avg_at_k")
            top = summary.get("pass_at_k", {}).get(str(n))
            row += [_pct(avg), _pct(top)]
            if avg is not None and top is not None:
                avgs.append(avg)
                passes.append(top)
        complete = len(avgs) == len(benchmarks)
        row += [_pct(float(np.mean(avgs)) if complete else None)]
        row += [_pct(float(np.mean(passes)) if complete else None)]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "| checkpoint | benchmark | problems | skipped | mean response tokens | "
        "truncated | tokens with entropy ≥ 1 nat |",
        "|---|---|---|---|---|---|---|",
    ]
    for ckpt, per_bench in checkpoints.items():
        for bench in benchmarks:
            s = per_bench.get(bench, {})
            high = s.get("high_entropy_fraction")
            lines.append(
                f"| {ckpt} | {bench} | {s.get('problems', 0)} | {s.get('skipped', 0)} | "
                f"{s.get('mean_response_tokens', 0):.1f} | {_pct(s.get('truncated'))}% | "
                f"{_pct(high) + '%' if high is not None else '–'} |"
            )
    return "\n".join(lines) + "\n"


def plot_pass_at_k(results: dict[str, Any], path: Path) -> None:
    """Pass@k vs k, one panel per benchmark, one line per checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benchmarks = results["benchmarks"]
    fig, axes = plt.subplots(
        1, len(benchmarks), figsize=(4.2 * len(benchmarks), 3.4), squeeze=False
    )
    for ax, bench in zip(axes[0], benchmarks, strict=True):
        for ckpt, per_bench in results["checkpoints"].items():
            curve = per_bench.get(bench, {}).get("pass_at_k", {})
            if curve:
                ks = sorted(int(k) for k in curve)
                ax.plot(ks, [100 * curve[str(k)] for k in ks], marker="o", label=ckpt)
        ax.set_xscale("log", base=2)
        ax.set_title(bench)
        ax.set_xlabel("k")
        ax.set_ylabel("Pass@k (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_entropy(results: dict[str, Any], path: Path) -> None:
    """Token-entropy histograms (share of tokens per bin), one panel per benchmark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benchmarks = results["benchmarks"]
    edges = np.asarray(results["entropy_edges"])
    fig, axes = plt.subplots(
        1, len(benchmarks), figsize=(4.2 * len(benchmarks), 3.4), squeeze=False
    )
    for ax, bench in zip(axes[0], benchmarks, strict=True):
        for ckpt, per_bench in results["checkpoints"].items():
            summary = per_bench.get(bench, {})
            counts = np.asarray(summary.get("entropy_counts", []), dtype=np.float64)
            if counts.sum() > 0:
                share = counts / counts.sum()
                high = summary["high_entropy_fraction"]
                ax.stairs(share, edges, label=f"{ckpt} (≥1 nat: {100 * high:.1f}%)")
        ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
        ax.set_yscale("log")
        ax.set_title(bench)
        ax.set_xlabel("token entropy (nats)")
        ax.set_ylabel("share of tokens")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(
    out: Path,
    summaries: dict[str, dict[str, dict[str, Any]]],
    skipped_rows: dict[str, list[dict[str, str]]],
    samples: int,
    bin_width: float,
    max_nats: float,
) -> dict[str, Any]:
    """Write results.json, results.md and the plots under ``out``; return the results."""
    results: dict[str, Any] = {
        "samples": samples,
        "benchmarks": list(skipped_rows),
        "checkpoints": summaries,
        "entropy_edges": [float(e) for e in entropy_edges(bin_width, max_nats)],
        "skipped_rows": skipped_rows,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown_table(results))
    plot_pass_at_k(results, out / "pass_at_k.png")
    plot_entropy(results, out / "entropy.png")
    return results
