"""Resumable sample store, report outputs and the eval CLI's error path (no Ray, no vLLM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eopd_ray.cli import main
from eopd_ray.config import load_config
from eopd_ray.config_io import ConfigError
from eopd_ray.eval.config import EvalConfig
from eopd_ray.eval.metrics import summarize
from eopd_ray.eval.report import markdown_table, write_report
from eopd_ray.eval.store import SampleStore, sample_settings

CONFIG = Path(__file__).parents[2] / "configs" / "eval-tiny.yaml"


def _record(pid: str, correct: list[bool]) -> dict[str, object]:
    return {
        "id": pid,
        "correct": correct,
        "lengths": [4] * len(correct),
        "finish_reasons": ["stop"] * len(correct),
        "entropy_counts": [2, 1, 0, 1],
        "entropy_high": 2,
    }


def test_store_resumes_and_ignores_a_cut_line(tmp_path: Path) -> None:
    config = load_config(CONFIG, [], model=EvalConfig)
    settings = sample_settings(config, config.checkpoints[0])
    store = SampleStore(tmp_path / "teacher" / "math500", settings)
    store.append([_record("0", [True, False]), _record("1", [False, False])])
    with store.path.open("a") as f:
        f.write('{"id": "2", "correct": [tr')  # a crash in the middle of a line
    again = SampleStore(tmp_path / "teacher" / "math500", settings)
    assert again.done_ids() == {"0", "1"}
    again.append([_record("2", [True, True])])
    assert again.done_ids() == {"0", "1", "2"}
    assert [r["correct"] for r in again.records()] == [[True, False], [False, False], [True, True]]


def test_store_refuses_samples_of_other_settings(tmp_path: Path) -> None:
    config = load_config(CONFIG, [], model=EvalConfig)
    SampleStore(tmp_path / "s", sample_settings(config, config.checkpoints[0]))
    other = load_config(CONFIG, ["sampling.temperature=0.6"], model=EvalConfig)
    with pytest.raises(ConfigError, match=r"other settings \(sampling\)"):
        SampleStore(tmp_path / "s", sample_settings(other, other.checkpoints[0]))
    # more problems (a larger limit) or more actors do not change the samples
    more = load_config(CONFIG, ["actors.num_actors=2"], model=EvalConfig)
    SampleStore(tmp_path / "s", sample_settings(more, more.checkpoints[0]))


@pytest.mark.parametrize("override", ["teacher.tau=1.0", "teacher.top_k=4", "teacher=null"])
def test_store_refuses_another_reference_teacher(tmp_path: Path, override: str) -> None:
    config = load_config(CONFIG, [], model=EvalConfig)
    SampleStore(tmp_path / "s", sample_settings(config, config.checkpoints[0]))
    other = load_config(CONFIG, [override], model=EvalConfig)
    with pytest.raises(ConfigError, match=r"other settings \(teacher\)"):
        SampleStore(tmp_path / "s", sample_settings(other, other.checkpoints[0]))
    # the teacher's chunking does not change what is measured
    chunked = load_config(CONFIG, ["teacher.chunk_size=7"], model=EvalConfig)
    SampleStore(tmp_path / "s", sample_settings(chunked, chunked.checkpoints[0]))


def test_store_without_a_teacher_keeps_the_old_settings(tmp_path: Path) -> None:
    # Folders written before the teacher section existed have no "teacher" key: still resumable.
    config = load_config(CONFIG, ["teacher=null"], model=EvalConfig)
    settings = sample_settings(config, config.checkpoints[0])
    assert "teacher" not in settings
    assert set(settings) == {"checkpoint", "dtype", "chat_template", "sampling", "entropy"}


def test_report_files_and_table(tmp_path: Path) -> None:
    summaries = {
        "teacher": {
            "math500": summarize([_record("0", [True, False]), _record("1", [True, True])])
        },
        "student": {
            "math500": summarize([_record("0", [False, False]), _record("1", [True, False])])
        },
    }
    skipped = {"math500": [{"id": "9", "reason": "no usable gold answer"}]}
    results = write_report(tmp_path, summaries, skipped, samples=2, bin_width=1.0, max_nats=4.0)
    for name in ("results.json", "results.md", "pass_at_k.png", "entropy.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text()) == results
    assert results["entropy_edges"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    table = markdown_table(results).splitlines()
    assert table[0] == (
        "| checkpoint | math500 Avg@2 | math500 Pass@2 | mean Avg@2 | mean Pass@2 |"
    )
    # teacher: Avg@2 = (0.5 + 1) / 2; Pass@2 = 1 for both problems
    assert table[2] == "| teacher | 75.0 | 100.0 | 75.0 | 100.0 |"
    assert table[3] == "| student | 25.0 | 50.0 | 25.0 | 50.0 |"
    assert (tmp_path / "pass_at_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _reference(tokens: int, rkl: float, high: int) -> dict[str, object]:
    return {
        "samples": 1,
        "unscored": 0,
        "tokens": tokens,
        "rkl_sum": rkl,
        "fkl_sum": 2.0 * rkl,
        "fkl_high_sum": rkl,
        "high_tokens": high,
        "teacher_entropy_counts": [tokens - high, high, 0, 0],
        "student_entropy_counts": [tokens, 0, 0, 0],
    }


def test_report_teacher_reference_table_and_figure(tmp_path: Path) -> None:
    from eopd_ray.eval.reference import summarize_reference

    records = [
        {**_record("0", [True, False]), "teacher_ref": _reference(4, 0.5, 1)},
        {**_record("1", [True, True]), "teacher_ref": _reference(4, 1.5, 1)},
    ]
    summary = summarize(records)
    summary["teacher_ref"] = summarize_reference(records, tau=0.8)
    results = write_report(
        tmp_path, {"student": {"synthetic": summary}}, {"synthetic": []}, 2, 1.0, 4.0
    )
    ref = results["checkpoints"]["student"]["synthetic"]["teacher_ref"]
    assert ref["rkl_per_token"] == pytest.approx(0.25) and ref["high_entropy_frac"] == 0.25
    assert (tmp_path / "teacher_entropy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "results.md").read_text().splitlines()
    assert "| checkpoint | benchmark | tokens | RKL | FKL | FKL@H>0.8 | share H>0.8 |" in table
    # RKL 2/8, FKL 4/8, FKL over the 2 high-entropy tokens 2/2, share 2/8
    assert "| student | synthetic | 8 | 0.250 | 0.500 | 1.000 | 25.0% |" in table
    # without a teacher: no table section, no figure
    plain = tmp_path / "plain"
    plain.mkdir()
    write_report(plain, {"student": {"synthetic": summarize(records)}}, {"synthetic": []}, 2, 1, 4)
    assert "RKL" not in (plain / "results.md").read_text()
    assert not (plain / "teacher_entropy.png").exists()


def test_cli_bad_config_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(CONFIG), "sampling.top_p=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sampling.top_p" in err
    assert main(["eval", str(CONFIG), "checkpoints=[]"]) == 2
    assert "checkpoints" in capsys.readouterr().err
    assert main(["eval", str(CONFIG), "benchmarks=[{name: x, source: file}]"]) == 2
    assert "needs a path" in capsys.readouterr().err
    assert main(["eval", str(CONFIG), "teacher.samples_per_problem=0"]) == 2
    assert "teacher.samples_per_problem" in capsys.readouterr().err


def test_cli_refuses_a_missing_or_foreign_teacher_before_ray(
    tiny_models: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from eopd_ray.models.tokenizer import train_tokenizer

    teacher, student = tiny_models
    base = [
        f"output_dir={tmp_path / 'eval'}",
        f"checkpoints=[{{name: student, path: {student}}}]",
    ]
    assert main(["eval", str(CONFIG), *base, f"teacher.path={tmp_path / 'none'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "teacher.path:" in err and "does not exist" in err
    foreign = tmp_path / "foreign"
    shutil.copytree(teacher, foreign)
    train_tokenizer(["lorem ipsum dolor sit amet " * 4] * 20, vocab_size=300).save_pretrained(
        foreign
    )
    assert main(["eval", str(CONFIG), *base, f"teacher.path={foreign}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "teacher vs checkpoint student: teacher and student tokenizers differ" in err
