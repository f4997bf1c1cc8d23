"""``eopd-ray submit`` / ``eopd-ray jobs`` against a real local cluster (``ray start --head`` on
loopback, token authentication on): the tiny training job, then an evaluation job of its
checkpoint, both submitted through the Jobs API and both ending SUCCEEDED; a missing or wrong
token is a one-line error. Slow: starts a cluster and runs real jobs (~3-5 min)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import local_cluster
import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[local_cluster.LocalCluster]:
    head = local_cluster.start(num_cpus=8)
    try:
        yield head
    finally:
        local_cluster.stop(head)


def eopd(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eopd_ray.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_missing_or_wrong_token_is_one_clear_line(
    cluster: local_cluster.LocalCluster, tmp_path: Path
) -> None:
    # No token anywhere: HOME without ~/.ray/auth_token, no RAY_AUTH_TOKEN.
    env = cluster.client_env(HOME=str(tmp_path))
    del env["RAY_AUTH_TOKEN"]
    missing = eopd("jobs", "list", "--address", cluster.address, env=env, timeout=120)
    assert missing.returncode == 2, missing.stderr
    assert "requires an authentication token" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr

    wrong = eopd(
        "submit", "train", "configs/tiny.yaml", "--address", cluster.address,
        "--token", "not-the-token", "--no-wait", env=env, timeout=120,
    )  # fmt: skip
    assert wrong.returncode == 2, wrong.stderr
    assert "rejected the authentication token" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr

    ok = eopd("jobs", "list", "--address", cluster.address, env=cluster.client_env())
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("JOB ID")


def test_bad_config_fails_before_submission(cluster: local_cluster.LocalCluster) -> None:
    bad = eopd(
        "submit", "train", "configs/tiny.yaml", "loss.tua=1", "--address", cluster.address,
        env=cluster.client_env(), timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "loss.tua: unknown key" in bad.stderr


def test_submit_train_then_eval_succeed(
    cluster: local_cluster.LocalCluster, tiny_models: tuple[Path, Path], tmp_path: Path
) -> None:
    teacher, student = tiny_models
    out = tmp_path / "run"  # absolute: the job (same machine) writes where the test reads
    train = eopd(
        "submit", "train", "configs/tiny.yaml",
        f"teacher.path={teacher}", f"student.path={student}", f"output_dir={out}",
        "pipeline.iterations=3", "pipeline.checkpoint_every=3", "rollout.batch_prompts=8",
        "rollout.mini_batch_prompts=4", "rollout.max_response_tokens=24",
        "--address", cluster.address, "--python", sys.executable,
        env=cluster.client_env(),
    )  # fmt: skip
    assert train.returncode == 0, train.stdout[-4000:] + train.stderr[-4000:]
    assert "submitted job " in train.stdout
    assert train.stdout.rstrip().endswith("SUCCEEDED")
    assert "done: 3 iterations" in train.stdout  # the job's own log, followed live
    checkpoint = out / "checkpoints" / "step_3"
    assert (checkpoint / "config.json").is_file()

    job_id = train.stdout.split("submitted job ", 1)[1].split()[0]
    status = eopd("jobs", "status", job_id, "--address", cluster.address, env=cluster.client_env())
    assert status.stdout.strip() == "SUCCEEDED"
    listed = eopd("jobs", "list", "--address", cluster.address, env=cluster.client_env())
    assert job_id in listed.stdout
    logs = eopd("jobs", "logs", job_id, "--address", cluster.address, env=cluster.client_env())
    assert "done: 3 iterations" in logs.stdout

    evaluation = eopd(
        "submit", "eval", "configs/eval-tiny.yaml",
        f"checkpoints=[{{name: step3, path: {checkpoint}}}]", f"teacher.path={teacher}",
        "benchmarks=[{name: gsm8k, source: gsm8k, limit: 2}]",
        "sampling.samples=2", "sampling.max_tokens=16", "entropy.samples_per_problem=0",
        f"output_dir={tmp_path / 'eval'}",
        "--address", cluster.address, "--python", sys.executable,
        env=cluster.client_env(),
    )  # fmt: skip
    assert evaluation.returncode == 0, evaluation.stdout[-4000:] + evaluation.stderr[-4000:]
    assert evaluation.stdout.rstrip().endswith("SUCCEEDED")
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert "step3" in json.dumps(results)
