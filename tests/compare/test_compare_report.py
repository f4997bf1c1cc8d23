"""report.md / report.json / figures of a comparison, from synthetic run and eval files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eopd_ray.compare.aggregate import Diff, Stat
from eopd_ray.compare.command import write_compare_report
from eopd_ray.compare.plan import ComparePlan, parse_variants, plan_compare
from eopd_ray.compare.report import format_cell

REPO = Path(__file__).resolve().parents[2]
# gsm8k Avg@4 per (variant, seed): opd 25 / 35 %, eopd 40 / 40 %
AVG = {("opd", 0): 0.25, ("opd", 1): 0.35, ("eopd", 0): 0.40, ("eopd", 1): 0.40}
CURVE_FIGURES = ("student_entropy.png", "fkl_high_entropy.png", "high_entropy_frac.png")


def _plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ComparePlan:
    monkeypatch.chdir(REPO)
    variants = parse_variants("opd,eopd")
    return plan_compare("configs/tiny.yaml", variants, (0, 1), tmp_path, [], None, [])


def _write_run(plan: ComparePlan, variant: str, seed: int) -> None:
    out = plan.out / "runs" / f"{variant}-s{seed}"
    out.mkdir(parents=True)
    rows = [
        {
            "iteration": it,
            "train/reverse_kl": 1.0 - 0.1 * it + 0.01 * seed,
            "train/fkl_high_entropy": 2.0 - 0.2 * it,
            "train/high_entropy_frac": 0.2,
            "train/student_entropy_mean": 0.5 + (0.1 * it if variant == "eopd" else 0.0) + seed,
            "rollout/accuracy": None,  # NaN in a run is null in metrics.jsonl
        }
        for it in range(3)
    ]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"iterations": 3, "final_checkpoint": str(out / "checkpoints" / "step_3")}
    (out / "summary.json").write_text(json.dumps(summary))


def _results(plan: ComparePlan, teacher: bool) -> dict:
    checkpoints = {}
    for (variant, seed), avg in AVG.items():
        gsm8k = {
            "problems": 4,
            "samples": 4,
            "avg_at_k": avg,
            "pass_at_k": {"1": avg, "2": avg + 0.1, "4": avg + 0.2},
            "entropy_counts": [5, 3, 1, 1],
        }
        if teacher:
            gsm8k["teacher_ref"] = {
                "tokens": 10,
                "rkl_per_token": 0.5 + seed,
                "fkl_per_token": 0.7,
                "fkl_high_entropy": 1.5,
                "high_entropy_frac": 0.1,
                "tau": 0.8,
                "teacher_entropy_counts": [2, 3, 4, 1],
                "student_entropy_counts": [5, 3, 1, 1],
            }
        math500 = {**gsm8k, "avg_at_k": 0.1, "pass_at_k": {"1": 0.1, "2": 0.1, "4": 0.2}}
        checkpoints[f"{variant}-s{seed}"] = {"math500": math500, "gsm8k": gsm8k}
    return {
        "samples": 4,
        "benchmarks": ["math500", "gsm8k"],
        "checkpoints": checkpoints,
        "entropy_edges": [0.0, 0.5, 1.0, 1.5, 2.0],
    }


def _table_row(markdown: str, title: str, variant: str) -> tuple[list[str], list[str]]:
    """(header cells, row cells) of ``variant`` in the table under ``## title``."""
    section = markdown.split(f"## {title}")[1].split("\n## ")[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    row = next(line for line in lines if line.startswith(f"| {variant} |"))
    return head, [c.strip() for c in row.strip("|").split("|")]


def test_report_shows_mean_std_and_differences_with_their_spread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = _plan(tmp_path, monkeypatch)
    for variant, seed in AVG:
        _write_run(plan, variant, seed)
    report = write_compare_report(plan, _results(plan, teacher=True))

    md = (tmp_path / "report.md").read_text()
    assert "over 2 seeds (0, 1)" in md and "difference to **opd**" in md
    head, opd = _table_row(md, "Evaluation", "opd")
    _, eopd = _table_row(md, "Evaluation", "eopd")
    col = head.index("gsm8k Avg@4 (%)")
    # opd: mean 30, sample std sqrt(2 * 5^2 / 1) = 7.07; eopd 40 ± 0; per-seed deltas 15 and 5
    assert opd[col] == "30.0 ± 7.1"
    assert eopd[col] == "40.0 ± 0.0 (Δ +10.0 ± 7.1)"
    assert eopd[head.index("gsm8k Pass@4 (%)")] == "60.0 ± 0.0 (Δ +10.0 ± 7.1)"
    # mean over the two benchmarks: opd (10 + 25) / 2, (10 + 35) / 2 -> 20 ± 3.5
    assert opd[head.index("mean Avg@4 (%)")] == "20.0 ± 3.5"

    head, eopd = _table_row(md, "Teacher-referenced", "eopd")
    # three significant digits of the mean, std and Δ at the same precision
    assert eopd[head.index("gsm8k RKL")] == "1.00 ± 0.71 (Δ +0.00 ± 0.00)"
    assert eopd[head.index("gsm8k H_te>τ (%)")] == "10.0 ± 0.0 (Δ +0.0 ± 0.0)"

    head, eopd = _table_row(md, "Final training", "eopd")
    # last iteration: student entropy 0.5 + 0.2 + seed for eopd, 0.5 + seed for opd
    assert eopd[head.index("student H")] == "1.20 ± 0.71 (Δ +0.20 ± 0.00)"
    assert eopd[head.index("rollout acc (%)")] == "–"  # null in every run

    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["baseline"] == "opd"
    assert saved["pass_at_k"]["gsm8k"]["opd"]["4"]["mean"] == pytest.approx(0.5)
    assert saved["entropy_histograms"]["gsm8k"]["eopd"]["teacher"] == [4, 6, 8, 2]
    curve = saved["curves"]["train/student_entropy_mean"]["eopd"]
    assert curve["iterations"] == [0, 1, 2]
    assert curve["mean"] == pytest.approx([1.0, 1.1, 1.2])
    for name in ("pass_at_k.png", "entropy_histograms.png", *CURVE_FIGURES):
        assert (tmp_path / "figures" / name).read_bytes()[:4] == b"\x89PNG", name
        assert f"(figures/{name})" in md


def test_report_without_teacher_reference_or_without_eval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = _plan(tmp_path, monkeypatch)
    for variant, seed in AVG:
        _write_run(plan, variant, seed)
    report = write_compare_report(plan, _results(plan, teacher=False))
    md = (tmp_path / "report.md").read_text()
    assert "## Evaluation" in md and "Teacher-referenced" not in md
    # the student's own histogram still makes Figure 3 (no teacher line)
    assert report["entropy_histograms"]["gsm8k"]["opd"]["teacher"] is None
    assert (tmp_path / "figures" / "entropy_histograms.png").is_file()

    report = write_compare_report(plan, None)
    md = (tmp_path / "report.md").read_text()
    assert "## Evaluation" not in md and "## Final training metrics" in md
    assert "pass_at_k" not in report


def test_cells_state_missing_seeds_and_sign() -> None:
    stat = Stat(0.2, None, 1, {0: 0.2})
    assert format_cell(stat, Diff(-0.05, None, 2, "pooled"), True, 3) == "20.0 (n=1) (Δ −5.0)"
    assert format_cell(None, None, False, 3) == "–"
    assert format_cell(Stat(1.234, 0.1, 3, {}), None, False, 3) == "1.23 ± 0.10"
    assert format_cell(Stat(1234.5, 10.0, 3, {}), None, False, 3) == "1234 ± 10"
    # a float32 residue between equal runs is no difference, and has no sign
    residue = Diff(-5.96e-08, None, 1, "paired")
    assert format_cell(Stat(0.749, None, 1, {}), residue, False, 1) == "0.749 (Δ +0.000)"
