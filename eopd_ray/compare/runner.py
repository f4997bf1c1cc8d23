"""Running the jobs of a comparison: finished-run detection, launchers, the run loop.

A run counts as finished when its ``summary.json`` exists (``eopd-ray train`` writes it after the
last iteration) and records the expected iteration count (``pipeline.iterations``; any count when
that is unset, since the data then decides it). Finished runs are not started again; an unfinished
one is started with the same ``output_dir`` and so resumes from its newest checkpoint.

**Launcher interface** (what a cluster back-end implements)::

    class Launcher(Protocol):
        concurrent: bool                       # start every job before waiting for any?
        def start(self, job: JobSpec) -> Any   # submit / spawn; returns a handle
        def wait(self, handle: Any) -> int     # block until the job ends; its exit status

:class:`LocalLauncher` runs each job as ``python -m eopd_ray.cli ...`` in a subprocess, one after
another (each training run is a separate local Ray session), its output in ``job.log``. A Ray
Jobs launcher would set ``concurrent = True``, ``start`` = ``eopd_ray.jobs.submit(client,
job.kind, job.config, job.overrides, job_id=...)`` (the comparison's ``--out`` then on shared
storage), and ``wait`` = ``jobs.exit_code(client.follow(...))``; nothing else changes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from eopd_ray.compare.plan import JobSpec, RunSpec


class CompareError(RuntimeError):
    """A job of the comparison failed; the message is one line naming it and its log."""


class Launcher(Protocol):
    concurrent: bool

    def start(self, job: JobSpec) -> Any: ...

    def wait(self, handle: Any) -> int: ...


def read_summary(output_dir: Path) -> dict[str, Any] | None:
    path = output_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:  # cut short by a crash: the run is not finished
        return None


def is_finished(run: RunSpec) -> bool:
    """``summary.json`` present, with the expected iteration count when one is set."""
    summary = read_summary(run.output_dir)
    if summary is None:
        return False
    return run.expected_iterations is None or summary.get("iterations") == run.expected_iterations


class LocalLauncher:
    """Each job in a subprocess of this machine, one at a time; output appended to ``job.log``."""

    concurrent = False

    def __init__(self, python: str = sys.executable, cwd: Path | None = None) -> None:
        self.python = python
        self.cwd = cwd

    def start(self, job: JobSpec) -> subprocess.Popen[bytes]:
        job.log.parent.mkdir(parents=True, exist_ok=True)
        with job.log.open("ab") as log:
            log.write(f"\n$ eopd-ray {' '.join(job.argv())}\n".encode())
            log.flush()
            # the child inherits the file descriptor; closing ours after Popen is safe
            return subprocess.Popen(
                [self.python, "-m", "eopd_ray.cli", *job.argv()],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=os.environ.copy(),
            )

    def wait(self, handle: subprocess.Popen[bytes]) -> int:
        try:
            return handle.wait()
        except KeyboardInterrupt:  # the child got the same SIGINT: let it save and stop
            handle.wait()
            raise


def last_error(log: Path) -> str:
    """The child's one-line ``eopd-ray: error: ...`` (else its last line), for our message."""
    if not log.is_file():
        return "no log"
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("eopd-ray: error:")]
    return (errors or lines or ["empty log"])[-1].removeprefix("eopd-ray: error: ")


def run_jobs(
    jobs: Sequence[JobSpec], launcher: Launcher, log: Callable[[str], None] = print
) -> None:
    """Run ``jobs``, one after another (stopping at a failure) or, with a concurrent launcher,
    all at once (each to its end); a failure is a :class:`CompareError`."""

    def finish(job: JobSpec, handle: Any, started: float) -> CompareError | None:
        status = launcher.wait(handle)
        if status != 0:
            what = f"run {job.name}" if job.kind == "train" else "the evaluation"
            return CompareError(
                f"{what} failed (exit {status}): {last_error(job.log)} "
                f"(log: {job.log}); the same command again resumes"
            )
        log(f"{job.name}: done in {time.perf_counter() - started:.0f} s")
        return None

    if launcher.concurrent:  # every job runs to its end; then the first failure is raised
        started = [(job, launcher.start(job), time.perf_counter()) for job in jobs]
        failures = [finish(job, handle, t0) for job, handle, t0 in started]
        if first := next((f for f in failures if f is not None), None):
            raise first
        return
    for i, job in enumerate(jobs, 1):
        log(f"[{i}/{len(jobs)}] {job.name}: running (log: {job.log})")
        if failure := finish(job, launcher.start(job), time.perf_counter()):
            raise failure


def run_training(
    runs: Sequence[RunSpec], launcher: Launcher, log: Callable[[str], None] = print
) -> dict[str, dict[str, Any]]:
    """Run every unfinished run; returns each run's summary (name -> summary.json)."""
    todo = [run for run in runs if not is_finished(run)]
    for run in runs:
        if run not in todo:
            log(f"{run.name}: finished earlier, not re-run")
    run_jobs([run.job for run in todo], launcher, log)
    summaries: dict[str, dict[str, Any]] = {}
    for run in runs:
        summary = read_summary(run.output_dir)
        if summary is None or not is_finished(run):
            got = f"{summary.get('iterations')} iterations" if summary else "no summary.json"
            raise CompareError(
                f"run {run.name} did not finish: {got}, expected {run.expected_iterations} "
                f"(log: {run.job.log})"
            )
        summaries[run.name] = summary
    return summaries
