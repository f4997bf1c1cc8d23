"""The main job as a user runs it: ``eopd-ray train configs/tiny.yaml`` with the preset's own
relative paths and default ``output_dir``, started from another working directory; then what it
produced is used: the checkpoint loads in transformers, the run resumes from it, and
``eopd-ray eval`` evaluates it (a vLLM engine over the folder).

Slow: three CLI runs (~1 min each) after the tiny pair's pre-training (shared, cached)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eopd_ray.metrics import read_metrics
from eopd_ray.trace import read_trace

REPO = Path(__file__).resolve().parents[1]
EOPD_RAY = str(Path(sys.executable).with_name("eopd-ray"))
# The pre-training of the shared fixture may run in this test's set-up (~15 min on CI).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]


def _cli(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        [EOPD_RAY, *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return done.stdout


def test_preset_defaults_from_another_directory_give_a_usable_checkpoint(
    pretrained_models: tuple[Path, Path], tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    work = tmp_path / "elsewhere"
    (work / "runs").mkdir(parents=True)
    (work / "runs" / "tiny-models").symlink_to(pretrained_models[0].parent)
    preset = str(REPO / "configs" / "tiny.yaml")
    short = ("rollout.max_response_tokens=32", "--no-progress")

    out = _cli(work, "train", preset, "pipeline.iterations=2", *short)
    assert (
        out.strip()
        .splitlines()[-1]
        .startswith("done: 2 iterations, checkpoint runs/tiny-eopd/checkpoints/step_2,")
    )
    run = work / "runs" / "tiny-eopd"
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [0, 1]
    assert [r["version"] for r in rows] == [1, 2]
    for row in rows:
        assert row["train/num_tokens"] > 0
        assert row["train/staleness_max"] == 0  # η = 0: every token has the learner's version
        assert row["buffer/stale"] == 0
        assert 0.0 <= row["train/high_entropy_frac"] <= 1.0
        assert row["train/logprob_mismatch_max"] < 1e-3  # sampler vs learner at equal version
    for produced in ("summary.json", "config.yaml"):
        assert (run / produced).is_file()
    assert any((run / "tensorboard").iterdir())
    # the run's timeline: every stage's spans, and the overlap picture
    stages = {e["name"]: e["cat"] for e in read_trace(run / "trace.json") if e["ph"] == "X"}
    assert stages == {
        "iteration": "iteration", "wait for batch": "driver", "learner step": "learner",
        "publish weights": "weights", "generate": "sampler", "update weights": "sampler",
        "score batch": "teacher", "checkpoint": "driver",
    }  # fmt: skip
    assert (run / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    step2 = run / "checkpoints" / "step_2"
    assert json.loads((step2 / "trainer_state.json").read_text())["version"] == 2
    assert (step2 / "deepspeed").is_dir()  # the learner wrote where the driver said
    trained = AutoModelForCausalLM.from_pretrained(step2)
    start = AutoModelForCausalLM.from_pretrained(pretrained_models[1])
    deltas = [
        (a - b).abs().max().item()
        for a, b in zip(trained.parameters(), start.parameters(), strict=True)
    ]
    assert all(torch.isfinite(p).all() for p in trained.parameters())
    assert max(deltas) > 0  # two iterations moved the weights

    out = _cli(work, "train", preset, "pipeline.iterations=3", *short)  # resumes at step_2
    assert "done: 3 iterations, checkpoint runs/tiny-eopd/checkpoints/step_3," in out
    assert [r["iteration"] for r in read_metrics(run / "metrics.jsonl")] == [0, 1, 2]
    assert json.loads((run / "summary.json").read_text())["iterations"] == 3

    _cli(
        work,
        "eval",
        str(REPO / "configs" / "eval-tiny.yaml"),
        "checkpoints=[{name: student, path: runs/tiny-eopd/checkpoints/step_3}]",
        "benchmarks=[{name: gsm8k, source: gsm8k, limit: 2}]",
        "sampling.samples=2",
        "sampling.max_tokens=16",
    )
    results = json.loads((work / "runs" / "eval-tiny" / "results.json").read_text())
    assert "student" in json.dumps(results)
    samples = work / "runs" / "eval-tiny" / "student" / "gsm8k" / "samples.jsonl"
    assert len(samples.read_text().splitlines()) == 2


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
