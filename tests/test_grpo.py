"""GRPO as a user runs it: ``eopd-ray train configs/tiny-grpo.yaml`` from another directory starts
no teacher, grades the pre-trained tiny student's own samples with math-verify and raises that
reward; rows without a gold answer are skipped and counted, a data set without any is refused in
one line before Ray starts.

Slow: one CLI run (~2.5 min on 2 cores) after the tiny pair's pre-training (shared, cached)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eopd_ray.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
EOPD_RAY = str(Path(sys.executable).with_name("eopd-ray"))
PRESET = str(REPO / "configs" / "tiny-grpo.yaml")


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_rows_without_a_gold_answer_are_skipped_and_counted(
    tiny_models: tuple[Path, Path], tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    from eopd_ray.config import load_config
    from eopd_ray.train import render_requests

    rows = [{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?"}, {"problem": "3?", "answer": 3}]
    data = _jsonl(tmp_path / "train.jsonl", rows)
    overrides = [f"student.path={tiny_models[1]}", f"data.train={data}"]
    config = load_config(PRESET, [*overrides, f"output_dir={tmp_path / 'run'}"])
    requests, skipped = render_requests(config, AutoTokenizer.from_pretrained(tiny_models[1]))
    assert [(pid, gold) for pid, _, gold in requests] == [(0, "2"), (2, "3")]
    assert skipped == {"no gold answer (grpo)": 1}


def test_a_data_set_without_answers_is_refused_in_one_line(
    tiny_models: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from eopd_ray.cli import main

    def no_ray(*args: object, **kwargs: object) -> None:
        raise AssertionError("Ray was started before the data set was checked")

    monkeypatch.setattr("eopd_ray.train.init_ray", no_ray)

    data = _jsonl(tmp_path / "train.jsonl", [{"problem": "1 + 1?"}, {"problem": "2 + 2?"}])
    overrides = [f"student.path={tiny_models[1]}", f"data.train={data}", f"output_dir={tmp_path}"]
    assert main(["train", PRESET, *overrides, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"eopd-ray: error: data.train: no row of {data} has the 'answer' field: loss.variant "
        "grpo needs gold answers for its reward"
    ]


# The pre-training of the shared fixture may run in this test's set-up (~15 min on CI).
@pytest.mark.slow
@pytest.mark.timeout(2700)
def test_tiny_grpo_raises_the_reward(pretrained_models: tuple[Path, Path], tmp_path: Path) -> None:
    work = tmp_path / "elsewhere"
    (work / "runs").mkdir(parents=True)
    (work / "runs" / "tiny-models").symlink_to(pretrained_models[0].parent)
    out = tmp_path / "run"
    # 32 problems for 7 epochs: 14 iterations of 16 prompts, each epoch the same 32 problems, so
    # the first and the last epoch measure the reward on exactly the same prompts
    short = ("data.synthetic_problems=32", "data.epochs=7", f"output_dir={out}")
    done = subprocess.run(
        [EOPD_RAY, "train", PRESET, *short, "--no-progress"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert done.stdout.strip().splitlines()[-1].startswith("done: 14 iterations, checkpoint ")
    rows = read_metrics(out / "metrics.jsonl")
    assert len(rows) == 14
    for row in rows:
        assert row["time/teacher_s"] == 0.0  # no teacher was started
        assert row["rollout/accuracy"] == pytest.approx(row["reward/mean"])
        assert 0.0 <= row["reward/zero_variance_group_frac"] <= 1.0
        assert row["train/num_tokens"] > 0
    first = (rows[0]["reward/mean"] + rows[1]["reward/mean"]) / 2
    last = (rows[-2]["reward/mean"] + rows[-1]["reward/mean"]) / 2
    print(f"reward on the 32 problems: first epoch {first:.3f}, last epoch {last:.3f}")
    # measured: 0.125 -> 0.348 (each epoch mean is over 256 samples of the same 32 problems)
    assert last > first + 0.1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["variant"] == "grpo" and summary["pipeline/reward_retries"] == 0
    assert summary["last"]["reward/mean"] == rows[-1]["reward/mean"]
