"""A failure inside a role is one line: the role and the original exception, not Ray's wrapper."""

from __future__ import annotations

import subprocess
import sys

from ray.exceptions import RayTaskError

from eopd_ray.errors import describe_failure


def _wrapped(function_name: str, cause: BaseException) -> BaseException:
    header = f"{function_name} (pid=1, ip=127.0.0.1)"  # how Ray's remote traceback starts
    error = RayTaskError(function_name, f"{header}\nTraceback (most recent call last): ...", cause)
    return error.as_instanceof_cause()


def test_ray_wrappers_are_unwrapped_to_the_original_exception_and_its_role() -> None:
    inner = _wrapped("ray::ServeReplica:TeacherDeployment.__call__()", KeyError("tokens"))
    outer = _wrapped("ray::_score_rollouts()", inner)
    assert describe_failure(outer) == "teacher scoring failed: KeyError: 'tokens'"
    sampler = _wrapped("ray::SamplerActor.generate()", ValueError("prompt too long\nmore"))
    assert describe_failure(sampler) == "sampler failed: prompt too long"


def test_an_exception_outside_any_role_is_its_own_first_line() -> None:
    assert describe_failure(RuntimeError("boom\ndetails")) == "RuntimeError: boom"
    assert describe_failure(ValueError("no usable prompts")) == "no usable prompts"


def test_cli_prints_one_line_and_no_traceback(tmp_path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"question": "no problem field"}\n')
    models = tmp_path / "m"
    models.mkdir()
    (models / "config.json").write_text("{}")
    result = subprocess.run(
        [sys.executable, "-m", "eopd_ray.cli", "train", "configs/tiny.yaml",
         f"data.train={data}", f"student.path={models}", f"teacher.path={models}",
         f"output_dir={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[0].startswith("eopd-ray: error: ")
