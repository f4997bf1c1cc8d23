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


def test_cli_bad_config_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(CONFIG), "sampling.top_p=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sampling.top_p" in err
    assert main(["eval", str(CONFIG), "checkpoints=[]"]) == 2
    assert "checkpoints" in capsys.readouterr().err
    assert main(["eval", str(CONFIG), "benchmarks=[{name: x, source: file}]"]) == 2
    assert "needs a path" in capsys.readouterr().err
