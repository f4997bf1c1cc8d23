"""Finished-run detection, skipping finished runs, and a failed job's one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eopd_ray.compare.plan import JobSpec, RunSpec
from eopd_ray.compare.runner import (
    CompareError,
    LocalLauncher,
    is_finished,
    last_error,
    run_jobs,
    run_training,
)


def _run(tmp_path: Path, name: str, expected: int | None, config: str = "missing.yaml") -> RunSpec:
    out = tmp_path / "runs" / name
    job = JobSpec("train", name, config, (f"output_dir={out}",), tmp_path / "logs" / f"{name}.log")
    return RunSpec(name.split("-")[0], 0, out, expected, job)


def _finish(run: RunSpec, iterations: int) -> None:
    run.output_dir.mkdir(parents=True, exist_ok=True)
    summary = {"iterations": iterations, "final_checkpoint": str(run.output_dir / "ckpt")}
    (run.output_dir / "summary.json").write_text(json.dumps(summary))


def test_finished_means_a_summary_with_the_expected_iterations(tmp_path: Path) -> None:
    run = _run(tmp_path, "opd-s0", 4)
    assert not is_finished(run)
    _finish(run, 3)  # an earlier, shorter run of the same folder
    assert not is_finished(run)
    _finish(run, 4)
    assert is_finished(run)
    assert is_finished(_run(tmp_path, "opd-s0", None))  # the data decides the count
    (run.output_dir / "summary.json").write_text('{"iterations": 4')  # cut short
    assert not is_finished(run)


def test_finished_runs_are_not_started_again(tmp_path: Path) -> None:
    runs = [_run(tmp_path, "opd-s0", 2), _run(tmp_path, "eopd-s0", 2)]
    for run in runs:
        _finish(run, 2)
    lines: list[str] = []
    summaries = run_training(runs, LocalLauncher(), lines.append)
    assert list(summaries) == ["opd-s0", "eopd-s0"]
    assert summaries["eopd-s0"]["iterations"] == 2
    assert lines == [f"{name}: finished earlier, not re-run" for name in ("opd-s0", "eopd-s0")]
    assert not (tmp_path / "logs").exists()  # nothing was launched


def test_a_failed_run_stops_the_comparison_with_its_error(tmp_path: Path) -> None:
    done, failing = _run(tmp_path, "opd-s0", 2), _run(tmp_path, "eopd-s0", 2)
    _finish(done, 2)
    # a real `eopd-ray train` process that fails on its config (exit 2, one line)
    with pytest.raises(CompareError) as info:
        run_training([done, failing], LocalLauncher(), lambda _: None)
    message = str(info.value)
    assert message.startswith("run eopd-s0 failed (exit 2): missing.yaml: config file not found")
    assert str(failing.job.log) in message and "\n" not in message
    log = failing.job.log.read_text()
    assert log.startswith("\n$ eopd-ray train missing.yaml output_dir=")
    assert last_error(failing.job.log) == "missing.yaml: config file not found"


def test_concurrent_launchers_start_every_job_before_waiting(tmp_path: Path) -> None:
    class Concurrent(LocalLauncher):  # what a cluster launcher does, with local processes
        concurrent = True

    jobs = [_run(tmp_path, f"v{i}-s0", 1).job for i in range(2)]
    with pytest.raises(CompareError, match=r"^run v0-s0 failed"):
        run_jobs(jobs, Concurrent(), lambda _: None)
    assert all(job.log.is_file() for job in jobs)  # both were started
