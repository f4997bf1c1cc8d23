"""``OUT/report.md`` and ``OUT/report.json`` of a comparison.

``build_report`` turns the runs' records and the evaluation's results into plain data: for every
column (``eopd_ray.compare.table``) and variant the mean ± std over seeds and the difference to
the baseline variant (``opd`` when compared, else the first) with its seed spread
(``eopd_ray.compare.aggregate``); the Pass@k curves, the token-entropy histograms and the training
curves the figures draw. ``markdown`` renders it as tables in the style of the paper's Tables 2, 4
and 6: rows are variants, each cell ``mean ± std``, and beside every non-baseline cell
``(Δ diff ± spread)`` so the reader sees the difference against the noise floor of these seeds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eopd_ray.compare.aggregate import Diff, Stat, curve, difference, mean_band, seed_stat
from eopd_ray.compare.figures import CAPTIONS
from eopd_ray.compare.table import CURVES, Column, RunRecord, gather

_SECTIONS = {
    "eval": "Evaluation",
    "teacher": "Teacher-referenced divergences on the evaluation samples",
    "train": "Final training metrics (last iteration)",
}


def pick_baseline(variants: Sequence[str]) -> str:
    return "opd" if "opd" in variants else variants[0]


def _column_json(column: Column, cells: dict[str, dict[int, float | None]], baseline: str) -> dict:
    base = cells.get(baseline, {})
    per_variant = {}
    for variant, values in cells.items():
        stat = seed_stat(values)
        diff = difference(values, base) if variant != baseline else None
        per_variant[variant] = {
            "stat": stat.to_json() if stat else None,
            "diff": diff.to_json() if diff else None,
        }
    return {
        "key": column.key,
        "label": column.label,
        "section": column.section,
        "percent": column.percent,
        "variants": per_variant,
    }


def _pass_curves(runs: Sequence[RunRecord], results: dict[str, Any]) -> dict[str, Any]:
    """bench -> variant -> k -> Stat over seeds (Figure 2)."""
    out: dict[str, Any] = {}
    for bench in results["benchmarks"]:
        per_variant: dict[str, dict[str, dict[int, float | None]]] = {}
        for run in runs:
            summary = results["checkpoints"].get(run.name, {}).get(bench, {})
            for k, value in summary.get("pass_at_k", {}).items():
                per_variant.setdefault(run.variant, {}).setdefault(k, {})[run.seed] = value
        out[bench] = {
            v: {k: s.to_json() for k, vals in ks.items() if (s := seed_stat(vals))}
            for v, ks in per_variant.items()
        }
    return out


def _sum_counts(lists: list[list[int]]) -> list[int] | None:
    lists = [c for c in lists if c]
    return [sum(col) for col in zip(*lists, strict=True)] if lists else None


def _histograms(runs: Sequence[RunRecord], results: dict[str, Any]) -> dict[str, Any]:
    """bench -> variant -> teacher / student entropy counts summed over seeds (Figure 3).

    From ``teacher_ref`` (teacher and student entropies at the student's sampled positions)
    when present; else the student's own histogram only (``entropy_counts``)."""
    out: dict[str, Any] = {}
    for bench in results["benchmarks"]:
        per_variant: dict[str, Any] = {}
        for variant in dict.fromkeys(r.variant for r in runs):
            summaries = [
                results["checkpoints"].get(r.name, {}).get(bench, {})
                for r in runs
                if r.variant == variant
            ]
            refs = [s["teacher_ref"] for s in summaries if "teacher_ref" in s]
            if refs:
                student = [ref.get("student_entropy_counts") for ref in refs]
            else:
                student = [s.get("entropy_counts") for s in summaries]
            per_variant[variant] = {
                "student": _sum_counts(student),
                "teacher": _sum_counts([ref.get("teacher_entropy_counts") for ref in refs]),
                "tau": refs[0].get("tau") if refs else None,
            }
        out[bench] = per_variant
    return out


def _curves(runs: Sequence[RunRecord]) -> dict[str, Any]:
    """metric -> variant -> iterations, mean, std over seeds (Figures 4, 5, 9)."""
    out: dict[str, Any] = {}
    for key, _ in CURVES:
        per_variant = {}
        for variant in dict.fromkeys(r.variant for r in runs):
            series = [curve(r.rows, key) for r in runs if r.variant == variant]
            its, mean, std = mean_band([s for s in series if s])
            if its:
                per_variant[variant] = {"iterations": its, "mean": mean, "std": std}
        out[key] = per_variant
    return out


def build_report(
    runs: Sequence[RunRecord],
    results: dict[str, Any] | None,
    variants: Sequence[str],
    seeds: Sequence[int],
) -> dict[str, Any]:
    """Everything report.md, report.json and the figures show, as JSON-ready data."""
    baseline = pick_baseline(variants)
    report: dict[str, Any] = {
        "variants": list(variants),
        "seeds": list(seeds),
        "baseline": baseline,
        "std": "sample std over seeds (ddof=1); diff spread: std of paired per-seed differences",
        "columns": [_column_json(col, cells, baseline) for col, cells in gather(runs, results)],
        "curves": _curves(runs),
        "runs": {r.name: r.summary for r in runs},
    }
    if results:
        report["samples"] = results["samples"]
        report["benchmarks"] = results["benchmarks"]
        report["entropy_edges"] = results.get("entropy_edges")
        report["pass_at_k"] = _pass_curves(runs, results)
        report["entropy_histograms"] = _histograms(runs, results)
    return report


def _decimals(mean: float, percent: bool) -> int:
    """Decimals of a cell: 0.1 points for %, else three significant digits of the mean (so
    std and Δ show at the mean's precision: a float32 residue prints as 0.000, not 5.96e-08)."""
    if percent:
        return 1
    if mean == 0 or not math.isfinite(mean):
        return 3
    return min(max(0, 2 - math.floor(math.log10(abs(mean)))), 8)


def format_cell(stat: Stat | None, diff: Diff | None, percent: bool, seeds: int) -> str:
    """``mean ± std`` (n when fewer seeds than planned), then ``(Δ +d ± spread)``."""
    if stat is None:
        return "–"
    scale, places = (100.0 if percent else 1.0), _decimals(stat.mean, percent)

    def num(x: float) -> str:
        return f"{scale * x:.{places}f}"

    text = num(stat.mean)
    if stat.std is not None:
        text += f" ± {num(stat.std)}"
    if stat.n != seeds:
        text += f" (n={stat.n})"
    if diff is not None:
        shown = num(abs(diff.mean))
        sign = "−" if diff.mean < 0 and float(shown) != 0 else "+"
        spread = f" ± {num(diff.spread)}" if diff.spread is not None else ""
        text += f" (Δ {sign}{shown}{spread})"
    return text


def _stat(data: dict[str, Any] | None) -> Stat | None:
    return None if data is None else Stat(data["mean"], data["std"], data["n"], data["values"])


def _diff(data: dict[str, Any] | None) -> Diff | None:
    return None if data is None else Diff(data["mean"], data["spread"], data["n"], data["kind"])


def _table(columns: list[dict[str, Any]], variants: Sequence[str], seeds: int) -> list[str]:
    head = ["variant", *[c["label"] + (" (%)" if c["percent"] else "") for c in columns]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant in variants:
        row = [variant]
        for col in columns:
            cell = col["variants"].get(variant, {})
            stat, diff = _stat(cell.get("stat")), _diff(cell.get("diff"))
            row.append(format_cell(stat, diff, col["percent"], seeds))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def markdown(report: dict[str, Any], figures: Sequence[str] = ()) -> str:
    """The report's markdown: one table per section, then the figures."""
    seeds, variants = report["seeds"], report["variants"]
    cells = [cell for col in report["columns"] for cell in col["variants"].values()]
    pairing = {cell["diff"]["kind"] for cell in cells if cell.get("diff")}
    spread = "± the std over seeds of the per-seed difference (same seed = same prompts)"
    if "pooled" in pairing:
        spread += "; where the seeds do not pair up, the pooled std of the two groups"
    noise = "a Δ inside its ± is within the noise of these seeds"
    if len(seeds) == 1:
        spread, noise = "one seed, so no spread", "a Δ alone does not tell signal from noise"
    lines = [
        f"# Comparison of {', '.join(variants)}",
        "",
        f"Mean ± sample std over {len(seeds)} seed{'s' if len(seeds) != 1 else ''} "
        f"({', '.join(map(str, seeds))}). Δ: difference to **{report['baseline']}**, {spread}: "
        f"{noise}.",
    ]
    if "samples" in report:
        lines.append(f"Evaluation: {report['samples']} samples per problem.")
    for section, title in _SECTIONS.items():
        columns = [c for c in report["columns"] if c["section"] == section]
        if columns:
            lines += ["", f"## {title}", "", *_table(columns, variants, len(seeds))]
    if figures:
        lines += ["", "## Figures", ""]
        for figure in figures:
            name = Path(figure).name
            lines.append(f"![{CAPTIONS.get(name, name)}](figures/{name})")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, report: dict[str, Any], figures: Sequence[str]) -> None:
    """``out/report.json`` (the numbers) and ``out/report.md`` (the tables, figure links)."""
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(markdown(report, figures))
