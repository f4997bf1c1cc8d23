"""A user's driver killed without warning (SIGKILL): no process of its local Ray is left, and
running the same command again (relative ``output_dir``, from another directory) resumes exactly.
(The preset's defaults from another directory, then loading and evaluating what they produced:
``tests/test_learning.py``.)

Slow: two CLI runs (~1 min each)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eopd_ray.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
EOPD_RAY = str(Path(sys.executable).with_name("eopd-ray"))
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _cli(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        [EOPD_RAY, *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return done.stdout


def test_a_sigkilled_driver_leaves_no_processes_and_the_rerun_resumes_exactly(
    tiny_models: tuple[Path, Path], tmp_path: Path
) -> None:
    import signal
    import time

    import psutil

    teacher, student = tiny_models
    args = [
        "train",
        str(REPO / "configs" / "tiny.yaml"),
        f"teacher.path={teacher}",
        f"student.path={student}",
        "output_dir=run",
        "pipeline.iterations=4",
        "pipeline.checkpoint_every=1",
        "rollout.max_response_tokens=16",
        "rollout.batch_prompts=8",
        "rollout.mini_batch_prompts=8",
        "rollout.samples_per_prompt=1",
        "--no-progress",
    ]
    driver = subprocess.Popen(
        [EOPD_RAY, *args], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    step = tmp_path / "run" / "checkpoints" / "step_2"
    deadline = time.monotonic() + 400
    while not step.is_dir() and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert step.is_dir(), "no checkpoint before the kill"
    family = psutil.Process(driver.pid).children(recursive=True)  # the local Ray it started
    assert family
    driver.send_signal(signal.SIGKILL)  # no clean-up of its own: the reaper stops its Ray
    driver.wait()
    _, alive = psutil.wait_procs(family, timeout=60)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [p.cmdline()[:2] for p in alive]

    out = _cli(tmp_path, *args)  # the same command again: resumes from the newest checkpoint
    assert "done: 4 iterations, checkpoint run/checkpoints/step_4," in out
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3]  # redone iterations once each
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["iterations"] == 4
