"""metrics.jsonl on resume: the iterations redone after the last checkpoint appear once."""

from __future__ import annotations

from pathlib import Path

from eopd_ray.metrics import MetricsLogger, read_metrics


def _run(out: Path, start: int, stop: int) -> None:
    log = MetricsLogger(out, total_iterations=stop, start=start, bar=False)
    for it in range(start, stop):
        log.log(it, {"train/loss": float(it), "train/bad": float("nan")})
    log.close()


def test_resume_drops_rows_written_after_the_checkpoint(tmp_path: Path) -> None:
    _run(tmp_path, 0, 7)  # killed after iteration 6; the newest checkpoint is step_5
    _run(tmp_path, 5, 9)  # resumed from step_5: iterations 5 and 6 are redone
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == list(range(9))
    assert rows[6]["train/loss"] == 6.0 and rows[6]["train/bad"] is None


def test_fresh_start_keeps_nothing_and_no_file_is_fine(tmp_path: Path) -> None:
    _run(tmp_path, 0, 3)
    _run(tmp_path, 0, 2)  # a restart from scratch (no checkpoint) rewrites from iteration 0
    assert [r["iteration"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 1]


def test_rewind_in_the_same_process_drops_the_redone_rows(tmp_path: Path) -> None:
    log = MetricsLogger(tmp_path, total_iterations=6, bar=False)
    for it in range(4):
        log.log(it, {"train/loss": 1.0})
    log.rewind(2)  # the learner died; the run went back to step_2
    for it in range(2, 6):
        log.log(it, {"train/loss": 2.0})
    log.close()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == list(range(6))
    assert [r["train/loss"] for r in rows] == [1.0, 1.0, 2.0, 2.0, 2.0, 2.0]
