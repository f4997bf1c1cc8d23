"""``eopd-ray compare`` as a user runs it: two variants on the tiny preset, evaluated, reported,
and a second invocation that redoes nothing. Slow (two training runs and an evaluation)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIGURES = (
    "pass_at_k.png",
    "entropy_histograms.png",
    "student_entropy.png",
    "fkl_high_entropy.png",
    "high_entropy_frac.png",
)


def _compare(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "eopd_ray.cli", "compare", "configs/tiny.yaml"),
            *("--variants", "opd,eopd", "--seeds", "0", "--out", str(out)),
            # short runs: 2 iterations of 8 prompts, short responses
            "pipeline.iterations=2",
            "rollout.batch_prompts=8",
            "rollout.mini_batch_prompts=8",
            "rollout.max_response_tokens=16",
            # a small evaluation: 4 problems of the preset's benchmark, 2 samples each
            *("--eval-override", "benchmarks=[{name: synthetic, source: synthetic, limit: 4}]"),
            *("--eval-override", "sampling.samples=2"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
@pytest.mark.timeout(2700)  # may pre-train the shared pair in its set-up (~15 min)
def test_compare_trains_evaluates_reports_and_resumes(
    pretrained_models: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "cmp"
    done = _compare(out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in ("opd-s0", "eopd-s0"):
        summary = json.loads((out / "runs" / name / "summary.json").read_text())
        assert (summary["variant"], summary["iterations"]) == (name.split("-")[0], 2)
    report = json.loads((out / "report.json").read_text())
    avg = next(c for c in report["columns"] if c["key"] == "synthetic/avg")
    assert avg["variants"]["opd"]["stat"]["n"] == 1
    diff = avg["variants"]["eopd"]["diff"]
    assert (diff["kind"], diff["n"], diff["spread"]) == ("paired", 1, None)  # one seed: no spread
    md = (out / "report.md").read_text()
    assert "| opd |" in md and "| eopd |" in md and "synthetic Avg@2 (%)" in md
    assert "synthetic FKL@H>τ" in md  # the eval config's teacher: teacher-referenced columns
    for name in FIGURES:
        assert (out / "figures" / name).stat().st_size > 0, name

    again = _compare(out)  # everything is on disk: no run, no sampling
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("finished earlier, not re-run") == 2
    assert "every problem already scored" in (out / "logs" / "eval.log").read_text()
