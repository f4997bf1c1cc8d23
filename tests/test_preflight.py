"""Checks before Ray starts: each bad path is one line naming the key, in well under a second."""

from __future__ import annotations

from pathlib import Path

import pytest

from eopd_ray.config import load_config
from eopd_ray.config_io import ConfigError
from eopd_ray.preflight import check_model_path, check_output_dir, check_run_config

REPO = Path(__file__).resolve().parents[1]


def _model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def test_missing_and_mistyped_model_paths_are_local_errors_not_hub_lookups(tmp_path: Path) -> None:
    good = _model(tmp_path / "runs" / "tiny-models" / "student")
    check_model_path("student.path", str(good))
    check_model_path("teacher.path", "Qwen/Qwen3-8B")  # owner/name: left to the hub
    typo = load_config(
        REPO / "configs" / "tiny.yaml", ["student.path=runs/tiny-model/student"], base_dir=tmp_path
    )
    with pytest.raises(
        ConfigError, match=r"student.path: .*runs/tiny-model/student does not exist"
    ):
        check_model_path("student.path", typo.student.path)
    word = load_config(REPO / "configs" / "tiny.yaml", ["student.path=studnet"], base_dir=tmp_path)
    with pytest.raises(ConfigError, match="studnet does not exist"):
        check_model_path("student.path", word.student.path)  # a one-word typo: never the hub
    with pytest.raises(ConfigError, match="not a Hugging Face model folder"):
        check_model_path("student.path", str(tmp_path))


def test_output_dir_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    assert check_output_dir(str(tmp_path / "a" / "b")).is_dir()
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(ConfigError, match=r"output_dir: cannot write to .*file/run"):
        check_output_dir(str(file / "run"))
    # (permission bits do not stop root, as CI runs: /proc refuses everyone)
    with pytest.raises(ConfigError, match="cannot write to /proc"):
        check_output_dir("/proc/eopd-run")


def test_the_whole_run_config_is_checked(tmp_path: Path) -> None:
    student, teacher = _model(tmp_path / "s"), _model(tmp_path / "t")
    paths = [f"student.path={student}", f"teacher.path={teacher}", f"output_dir={tmp_path}/o"]
    config = load_config(REPO / "configs" / "tiny.yaml", paths)
    check_run_config(config)
    bad = load_config(REPO / "configs" / "tiny.yaml", [*paths, f"data.train={tmp_path}/no.jsonl"])
    with pytest.raises(ConfigError, match=r"data.train: .*no.jsonl does not exist"):
        check_run_config(bad)
