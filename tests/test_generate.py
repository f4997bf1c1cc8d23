"""The teacher-responses file of ``eopd-ray generate`` (``eopd_ray/generate.py``): settings header,
rows, resume after a kill, refusals. No Ray, no vLLM: rows are written with the module's own
record and append functions, as the generation job writes them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from eopd_ray.config import RunConfig, load_config
from eopd_ray.config_io import ConfigError
from eopd_ray.generate import (
    add_generate_parser,
    open_for_append,
    plan,
    prompt_record,
    read_responses,
    response_settings,
    responses_path,
)
from eopd_ray.rollout import Rollout

REPO = Path(__file__).resolve().parents[1]


class _Tokens:
    """Decodes ids as their digits: the ``text`` field is not what these tests check."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))


def _config(tmp_path: Path, *overrides: str) -> RunConfig:
    return load_config(REPO / "configs" / "tiny-kd.yaml", [f"output_dir={tmp_path}", *overrides])


def _rollouts(prompt_id: int, n: int = 1) -> list[Rollout]:
    return [
        Rollout(
            prompt_id=prompt_id,
            sample_index=i,
            prompt_ids=[1, 2, prompt_id],
            response_ids=[10 + i, 11, 12],
            behaviour_logprobs=[-0.5, -0.25, -0.125],
            versions=[0, 0, 0],
            finish_reason="stop" if i == 0 else "length",
            answer=str(prompt_id * 2),
        )
        for i in range(n)
    ]


def _requests(*prompt_ids: int) -> list[tuple[int, list[int], str]]:
    return [(p, [1, 2, p], str(p * 2)) for p in prompt_ids]


def _write(path: Path, settings: dict, *prompt_ids: int, n: int = 1) -> None:
    with open_for_append(read_responses(path), settings) as sink:
        for p in prompt_ids:
            row = prompt_record(f"problem {p}", _rollouts(p, n), _Tokens())
            sink.write((json.dumps(row) + "\n").encode())


def test_default_path_and_settings_name_what_shapes_the_responses(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert responses_path(config) == tmp_path / "teacher_responses.jsonl"
    assert responses_path(_config(tmp_path, "data.teacher_responses=x.jsonl")) == Path("x.jsonl")
    settings = response_settings(config)
    assert settings["teacher.path"] == "runs/tiny-models/teacher"
    assert settings["rollout.temperature"] == 1.0
    assert settings["data.synthetic_problems"] == 128
    assert settings["seed"] == 0
    hotter = response_settings(_config(tmp_path, "rollout.temperature=0.7"))
    assert hotter["rollout.temperature"] == 0.7
    # what training alone reads does not make the responses differ
    same = _config(tmp_path, "optim.lr=1e-4", "data.epochs=1", "rollout.batch_prompts=16")
    assert response_settings(same) == settings


def test_rows_round_trip_and_only_missing_prompts_are_planned(tmp_path: Path) -> None:
    path = tmp_path / "responses.jsonl"
    settings = response_settings(_config(tmp_path, "rollout.samples_per_prompt=2"))
    assert plan(path, settings, _requests(0, 1))[1] == _requests(0, 1)  # no file yet
    _write(path, settings, 0, 1, n=2)
    file, missing = plan(path, settings, _requests(0, 1, 2))
    assert missing == _requests(2)
    assert file.settings == settings
    cached = file.prompts[1]
    assert cached.prompt_ids == [1, 2, 1] and cached.answer == "2"
    assert [r.response_ids.tolist() for r in cached.responses] == [[10, 11, 12], [11, 11, 12]]
    assert cached.responses[0].logprobs.tolist() == [-0.5, -0.25, -0.125]
    assert [r.finish_reason for r in cached.responses] == ["stop", "length"]
    row = json.loads(path.read_text().splitlines()[1])
    assert row["prompt"] == "problem 0" and row["responses"][0]["text"] == "10 11 12"

    _write(path, settings, 2, n=2)  # resumed: appended after the rows already there
    file, missing = plan(path, settings, _requests(0, 1, 2))
    assert missing == [] and sorted(file.prompts) == [0, 1, 2]
    assert path.read_text().count('"format"') == 1  # one header


def test_a_line_cut_by_a_kill_is_dropped_and_regenerated(tmp_path: Path) -> None:
    path = tmp_path / "responses.jsonl"
    settings = response_settings(_config(tmp_path))
    _write(path, settings, 0, 1)
    whole = path.stat().st_size
    row = json.dumps(prompt_record("problem 2", _rollouts(2), _Tokens()))
    with path.open("ab") as f:
        f.write(row[: len(row) // 2].encode())  # killed mid-write: no newline
    file, missing = plan(path, settings, _requests(0, 1, 2))
    assert missing == _requests(2) and file.end == whole
    _write(path, settings, 2)
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line) for line in lines)
    assert sorted(read_responses(path).prompts) == [0, 1, 2]


def test_a_file_of_other_settings_is_refused_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "responses.jsonl"
    _write(path, response_settings(_config(tmp_path)), 0)
    other = response_settings(_config(tmp_path, "rollout.temperature=0.7", "seed=3"))
    with pytest.raises(ConfigError) as err:
        plan(path, other, _requests(0))
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "rollout.temperature 1.0 in the file, 0.7 here" in message
    assert "seed 0 in the file, 3 here" in message


def test_prompts_rendered_otherwise_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "responses.jsonl"
    settings = response_settings(_config(tmp_path))
    _write(path, settings, 0)
    with pytest.raises(ConfigError, match="prompt 0 was rendered to other tokens"):
        plan(path, settings, [(0, [1, 2, 99], "0")])


# lines of a file of prompts 0 and 1 (header, row 0, row 1) -> the damaged lines
_DAMAGES = {
    "no header": (lambda lines: lines[1:], "line 1: not a file of `eopd-ray generate`"),
    "broken row": (lambda lines: [lines[0], "{not json\n", lines[2]], "line 2: not a valid row"),
    "duplicate": (lambda lines: [lines[0], lines[1], lines[1]], "line 3: prompt 0 appears twice"),
}


@pytest.mark.parametrize("damage", sorted(_DAMAGES))
def test_damaged_files_are_refused_naming_the_line(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "responses.jsonl"
    _write(path, response_settings(_config(tmp_path)), 0, 1)
    edit, error = _DAMAGES[damage]
    path.write_text("".join(edit(path.read_text().splitlines(keepends=True))))
    with pytest.raises(ConfigError, match=error):
        read_responses(path)


def test_generate_command_refuses_another_runs_file_before_ray(
    tiny_models: tuple[Path, Path], tmp_path: Path
) -> None:
    teacher, student = tiny_models
    out = tmp_path / "responses.jsonl"
    _write(out, response_settings(_config(tmp_path, f"teacher.path={student}")), 0)
    parser = argparse.ArgumentParser()
    add_generate_parser(parser.add_subparsers())
    args = parser.parse_args(
        [
            "generate",
            str(REPO / "configs" / "tiny-kd.yaml"),
            f"teacher.path={teacher}",
            f"student.path={student}",
            f"output_dir={tmp_path}",
            "--out",
            str(out),
        ]
    )
    with pytest.raises(ConfigError, match=r"teacher\.path .* in the file, .* here"):
        args.func(args)
