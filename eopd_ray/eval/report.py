"""Outputs of an evaluation job: ``results.json``, ``results.md`` and PNG plots.

- ``results.json``: per checkpoint and benchmark the summary of ``metrics.summarize`` (Avg@n,
  Pass@k for every k of the curve, mean response tokens, truncated share, entropy histogram and
  share of tokens with entropy >= 1 nat), the histogram's bin edges and the rows skipped by the
  loaders (no usable gold answer);
- ``results.md``: a table like the paper's Table 2 (Avg@n / Pass@n per benchmark and their mean
  over benchmarks, in %), then response lengths and high-entropy shares;
- ``pass_at_k.png``: Pass@k against k (log2 axis), one panel per benchmark, one line per
  checkpoint; ``entropy.png``: the token-entropy histograms (share of tokens per bin, log scale),
  one panel per benchmark, one line per checkpoint (the paper's Figure 3);
- with a reference teacher (each summary's ``teacher_ref``, ``eopd_ray.eval.reference``): a
  results.md table of reverse KL, forward KL at teacher entropy > tau and that share, and
  ``teacher_entropy.png``: teacher vs checkpoint token-entropy histograms on the same samples,
  one panel per checkpoint (benchmarks pooled).
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
    return "\n".join(lines + reference_table(results)) + "\n"


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def reference_table(results: dict[str, Any]) -> list[str]:
    """The teacher-referenced rows of results.md ([] without ``teacher_ref`` blocks)."""
    rows = [
        (ckpt, bench, s["teacher_ref"])
        for ckpt, per_bench in results["checkpoints"].items()
        for bench in results["benchmarks"]
        if (s := per_bench.get(bench, {})).get("teacher_ref")
    ]
    if not rows:
        return []
    tau = rows[0][2]["tau"]
    lines = [
        "",
        f"Against the teacher (nats per token; τ = {tau:g}; reverse KL: k1 estimate on the "
        "checkpoint's samples, exact only at temperature 1 and top_p 1):",
        "",
        f"| checkpoint | benchmark | tokens | RKL | FKL | FKL@H>{tau:g} | share H>{tau:g} |",
        "|---|---|---|---|---|---|---|",
    ]
    for ckpt, bench, ref in rows:
        share = ref["high_entropy_frac"]
        lines.append(
            f"| {ckpt} | {bench} | {ref['tokens']} | {_num(ref['rkl_per_token'])} | "
            f"{_num(ref['fkl_per_token'])} | {_num(ref['fkl_high_entropy'])} | "
            f"{_pct(share) + '%' if share is not None else '–'} |"
        )
    return lines


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


def plot_teacher_entropy(results: dict[str, Any], path: Path) -> None:
    """Teacher vs checkpoint token-entropy histograms on the same samples (share of tokens per
    bin, log scale), one panel per checkpoint, benchmarks pooled; the line marks tau."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.asarray(results["entropy_edges"])
    panels = {}
    for ckpt, per_bench in results["checkpoints"].items():
        refs = [s["teacher_ref"] for s in per_bench.values() if s.get("teacher_ref")]
        if refs:
            panels[ckpt] = refs
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (ckpt, refs) in zip(axes[0], panels.items(), strict=True):
        tokens = sum(r["tokens"] for r in refs)
        high = sum((r["high_entropy_frac"] or 0.0) * r["tokens"] for r in refs) / max(tokens, 1)
        tau = refs[0]["tau"]
        lines = (
            ("teacher_entropy_counts", "reference teacher", "--"),
            ("student_entropy_counts", f"checkpoint {ckpt}", "-"),
        )
        for key, label, style in lines:
            counts = np.sum([r[key] for r in refs], axis=0).astype(np.float64)
            if counts.sum() > 0:
                ax.stairs(counts / counts.sum(), edges, label=label, linestyle=style)
        ax.axvline(tau, color="grey", linestyle=":", linewidth=1)
        ax.set_yscale("log")
        ax.set_title(
            f"{ckpt}'s samples: teacher H>{tau:g} on {100 * high:.1f}% of {tokens} tokens",
            fontsize=9,
        )
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
    if reference_table(results):
        plot_teacher_entropy(results, out / "teacher_entropy.png")
    return results
