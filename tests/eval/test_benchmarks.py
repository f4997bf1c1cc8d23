"""Benchmark loaders on the real MATH-500 / GSM8K rows and on local files in public formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eopd_ray.eval.benchmarks import BenchmarkError, gsm8k_gold, load_benchmark, normalize_gold
from eopd_ray.eval.config import BenchmarkSpec


def test_math500_gold_is_the_last_boxed_of_the_solution() -> None:
    problems, skipped = load_benchmark(BenchmarkSpec(name="m", source="math500"))
    assert len(problems) == 500 and skipped == []
    by_id = {p.id: p for p in problems}
    assert by_id["0"].problem.startswith("Convert the point $(0,3)$")
    # the row's own "answer" field is "\le(3,\frac{\pi}{2}\right)": post-processed and wrong
    assert by_id["0"].gold == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert by_id["219"].gold == "\\frac{1}{2}"
    assert by_id["4"].gold == "\\text{Evelyn}"


def test_math500_limit() -> None:
    problems, _ = load_benchmark(BenchmarkSpec(name="m", source="math500", limit=3))
    assert [p.id for p in problems] == ["0", "1", "2"]


def test_synthetic_serves_the_held_out_problems() -> None:
    from eopd_ray.data.synthetic_math.held_out import held_out_problems

    problems, skipped = load_benchmark(BenchmarkSpec(name="s", source="synthetic"))
    held = held_out_problems("small")
    assert skipped == [] and len(problems) == 256
    assert [(p.id, p.problem, p.gold) for p in problems[:2]] == [
        ("0", held[0].problem, held[0].answer),
        ("1", held[1].problem, held[1].answer),
    ]
    few, _ = load_benchmark(BenchmarkSpec(name="s", source="synthetic", limit=64))
    assert few == problems[:64]
    easy, _ = load_benchmark(BenchmarkSpec(name="s", source="synthetic", difficulty="easy"))
    assert [p.problem for p in easy] == [p.problem for p in held_out_problems("easy")]
    with pytest.raises(ValueError, match="difficulty is for source 'synthetic' only"):
        BenchmarkSpec(name="m", source="math500", difficulty="easy")


def test_gsm8k_gold_from_hashes() -> None:
    problems, skipped = load_benchmark(BenchmarkSpec(name="g", source="gsm8k"))
    assert len(problems) == 1319 and skipped == []
    assert problems[0].gold == "18" and problems[0].problem.startswith("Janet")
    assert all(p.gold.lstrip("-").replace(".", "").isdigit() for p in problems)
    assert gsm8k_gold("so 1,000 + 200\n#### 1,200") == "1200"
    assert gsm8k_gold("no final line") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (204, "204"),
        (33.0, "33"),
        (0.5, "0.5"),
        ("$\\frac{1}{2}$", "\\frac{1}{2}"),
        (["$\\sqrt{2}$"], "\\sqrt{2}"),
        (["1", "2"], "1, 2"),
        ("so \\boxed{7}.", "7"),
        ("  ", None),
        (None, None),
        ([], None),
        (float("nan"), None),
    ],
)
def test_normalize_gold(value: object, expected: str | None) -> None:
    assert normalize_gold(value) == expected


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_aime_style_jsonl_reports_rows_without_gold(tmp_path: Path) -> None:
    rows = [
        {"ID": "2024-I-1", "Problem": "Find x.", "Answer": 204},
        {"ID": "2024-I-2", "Problem": "Find y.", "Answer": None},
        {"ID": "2024-I-3", "Problem": "Find z.", "Answer": "$25$"},
        {"ID": "2024-I-4", "Problem": "", "Answer": 3},
    ]
    spec = BenchmarkSpec(
        name="aime24", source="file", path=str(_write_jsonl(tmp_path / "a.jsonl", rows))
    )
    problems, skipped = load_benchmark(spec)
    assert [(p.id, p.gold) for p in problems] == [("2024-I-1", "204"), ("2024-I-3", "25")]
    assert [s["id"] for s in skipped] == ["2024-I-2", "2024-I-4"]
    assert "gold" in skipped[0]["reason"] and "question" in skipped[1]["reason"]


def test_fields_are_detected_over_all_rows_and_a_bom_is_ignored(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "question": "No answer here."},  # the first row lacks the answer field
        {"id": "b", "question": "Find x.", "answer": "3"},
    ]
    path = tmp_path / "b.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows).encode())
    problems, skipped = load_benchmark(BenchmarkSpec(name="b", source="file", path=str(path)))
    assert [(p.id, p.gold) for p in problems] == [("b", "3")]
    assert [s["id"] for s in skipped] == ["a"] and "gold" in skipped[0]["reason"]


def test_olympiadbench_style_parquet_with_configured_fields(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "olympiad.parquet"
    table = pa.table(
        {
            "id": [1, 2],
            "question": ["Compute a.", "Compute b."],
            "final_answer": [["$\\frac{1}{3}$"], ["$2$"]],
        }
    )
    pq.write_table(table, path)
    spec = BenchmarkSpec(
        name="olympiadbench", source="file", path=str(path), answer_field="final_answer", limit=1
    )
    problems, skipped = load_benchmark(spec)
    assert [(p.id, p.problem, p.gold) for p in problems] == [("1", "Compute a.", "\\frac{1}{3}")]
    assert skipped == []


def test_file_errors_are_one_line(tmp_path: Path) -> None:
    rows = [{"q": "x", "a": 1}]
    path = _write_jsonl(tmp_path / "b.jsonl", rows)
    with pytest.raises(BenchmarkError, match="none of the fields"):
        load_benchmark(BenchmarkSpec(name="b", source="file", path=str(path)))
    with pytest.raises(BenchmarkError, match="field 'answer' not in the rows"):
        load_benchmark(
            BenchmarkSpec(
                name="b", source="file", path=str(path), question_field="q", answer_field="answer"
            )
        )
    with pytest.raises(BenchmarkError, match="not found"):
        load_benchmark(BenchmarkSpec(name="b", source="file", path=str(tmp_path / "none.jsonl")))
    dupes = _write_jsonl(tmp_path / "d.jsonl", [{"id": 1, "problem": "x", "answer": 1}] * 2)
    with pytest.raises(BenchmarkError, match="not unique"):
        load_benchmark(BenchmarkSpec(name="d", source="file", path=str(dupes)))
