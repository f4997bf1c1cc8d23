"""Prompt loading: bad rows are counted and skipped; the stream shuffles per epoch and resumes."""

import json
import random
from pathlib import Path

import pytest

from eopd_ray.config import DataConfig
from eopd_ray.data.prompts import PromptRow, PromptStream, load_prompts


def test_jsonl_rows_and_skips(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    lines = [
        json.dumps({"problem": "1+1?", "answer": 2}),
        json.dumps({"question": "no problem field"}),
        json.dumps({"problem": "   "}),
        "{not json",
        "",
        json.dumps({"problem": "2+2?"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    prompts = load_prompts(DataConfig(train=str(path)), seed=0)
    assert prompts.rows == [PromptRow(0, "1+1?", "2"), PromptRow(5, "2+2?", None)]
    assert prompts.skipped == {"no 'problem' field": 1, "empty prompt": 1, "invalid JSON": 1}


def test_configurable_fields(tmp_path: Path) -> None:
    path = tmp_path / "aime.jsonl"
    path.write_text(json.dumps({"question": "q", "solution": "7"}) + "\n")
    prompts = load_prompts(
        DataConfig(train=str(path), prompt_field="question", answer_field="solution"), seed=0
    )
    assert prompts.rows == [PromptRow(0, "q", "7")]


def test_unusable_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_prompts(DataConfig(train=str(tmp_path / "nope.jsonl")), seed=0)
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"x": 1}) + "\n")
    with pytest.raises(ValueError, match="no usable rows"):
        load_prompts(DataConfig(train=str(empty)), seed=0)


def test_stream_epochs_shuffle_and_resume() -> None:
    rows = [PromptRow(i, str(i), None) for i in range(5)]
    stream = PromptStream(rows, epochs=2, seed=3)
    first = stream.take(3)
    rest = stream.take(100)
    assert len(first) + len(rest) == 10
    seen = [r.prompt_id for r in first + rest]
    assert sorted(seen[:5]) == sorted(seen[5:]) == list(range(5))  # each epoch is a permutation
    assert seen[:5] != seen[5:]  # reshuffled
    assert stream.remaining() == 0
    assert stream.take(1) == []
    resumed = PromptStream(rows, epochs=2, seed=3)
    resumed.position = 3
    assert [r.prompt_id for r in resumed.take(100)] == seen[3:]


def test_synthetic_prompts_follow_the_configured_difficulty() -> None:
    from eopd_ray.data.synthetic_math.held_out import training_problems

    data = DataConfig(train="synthetic", synthetic_problems=20, synthetic_difficulty="easy")
    rows = load_prompts(data, seed=3).rows
    expected = training_problems(20, seed=3, difficulty="easy")
    assert [(r.problem, r.answer) for r in rows] == [(p.problem, p.answer) for p in expected]
    assert [r.prompt_id for r in rows] == list(range(20))
    assert rows != load_prompts(DataConfig(train="synthetic", synthetic_problems=20), seed=3).rows


@pytest.mark.parametrize("seed", [0, 1, 2, 7])
def test_synthetic_prompts_never_include_the_benchmark_problems(seed: int) -> None:
    from eopd_ray.eval.benchmarks import load_benchmark
    from eopd_ray.eval.config import BenchmarkSpec

    benchmark, _ = load_benchmark(BenchmarkSpec(name="s", source="synthetic"))
    data = DataConfig(train="synthetic", synthetic_problems=512, synthetic_difficulty="small")
    rows = load_prompts(data, seed=seed).rows
    assert len(rows) == 512 and len({r.problem for r in rows}) == 512
    assert not {r.problem for r in rows} & {p.problem for p in benchmark}


def test_stream_shuffles_once_per_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [PromptRow(i, str(i), None) for i in range(50)]
    # The order the stream has always used: a Random(seed * 1_000_003 + epoch) shuffle per epoch.
    expected = []
    for epoch in range(3):
        order = list(range(50))
        random.Random(7 * 1_000_003 + epoch).shuffle(order)
        expected += order
    shuffles = 0
    shuffle = random.Random.shuffle

    def counting(self: random.Random, x: list[int]) -> None:
        nonlocal shuffles
        shuffles += 1
        shuffle(self, x)

    monkeypatch.setattr(random.Random, "shuffle", counting)
    stream = PromptStream(rows, epochs=3, seed=7)
    taken = [r.prompt_id for _ in range(15) for r in stream.take(10)]
    assert taken == expected
    assert shuffles == 3  # one per epoch, not one per prompt
    resumed = PromptStream(rows, epochs=3, seed=7)
    resumed.position = 77  # resume mid-epoch 1, after a fresh start
    assert [r.prompt_id for r in resumed.take(100)] == expected[77:]


def test_bad_bytes_bom_and_non_string_prompts_are_counted_rows(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    good = json.dumps({"problem": "1+1?", "answer": 2}).encode()
    lines = [
        b"\xef\xbb\xbf" + good,  # a BOM before the first row is not part of it
        b'{"problem": "caf\xe9"}',  # latin-1, not UTF-8: only this row is lost
        json.dumps({"problem": 7}).encode(),
        json.dumps({"problem": ["a"]}).encode(),
        json.dumps({"problem": "2+2?"}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    prompts = load_prompts(DataConfig(train=str(path)), seed=0)
    assert prompts.rows == [PromptRow(0, "1+1?", "2"), PromptRow(4, "2+2?", None)]
    assert prompts.skipped == {"not UTF-8": 1, "'problem' is not a string": 2}
    assert prompts.skipped_lines == {"not UTF-8": [2], "'problem' is not a string": [3, 4]}
    assert prompts.describe_skips() == (
        "skipped 3 rows: not UTF-8 (line 2); 'problem' is not a string (lines 3, 4)"
    )


def test_only_the_first_line_numbers_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(["{bad"] * 7 + [json.dumps({"problem": "p"})]) + "\n")
    prompts = load_prompts(DataConfig(train=str(path)), seed=0)
    assert prompts.skipped == {"invalid JSON": 7}
    assert prompts.describe_skips() == "skipped 7 rows: invalid JSON (lines 1, 2, 3, 4, 5, ...)"


def test_builtin_math_is_the_training_split_outside_math500() -> None:
    from eopd_ray.eval.benchmarks import load_benchmark
    from eopd_ray.eval.config import BenchmarkSpec

    every = load_prompts(DataConfig(train="math"), seed=0)
    assert len(every.rows) == 4500  # 5,000 MATH test problems minus MATH-500
    math500, _ = load_benchmark(BenchmarkSpec(name="m", source="math500"))
    assert not {r.problem for r in every.rows} & {p.problem for p in math500}
    easy = load_prompts(DataConfig(train="math", levels=[1]), seed=0)
    assert 0 < len(easy.rows) < len(every.rows) // 4
    assert all(r.answer for r in easy.rows[:50])  # the last \boxed{} of the solution


def test_levels_without_math_are_refused() -> None:
    with pytest.raises(ValueError, match="levels filter the MATH problems"):
        DataConfig(train="synthetic", levels=[1])


ROWS = [
    {"problem": "1+1?", "answer": 2},
    {"question": "no problem field"},
    {"problem": "   "},
    {"problem": 7},
    {"problem": "2+2?"},
]
USABLE = [PromptRow(0, "1+1?", "2"), PromptRow(4, "2+2?", None)]
SKIPPED = {"no 'problem' field": 1, "empty prompt": 1, "'problem' is not a string": 1}


def test_json_and_parquet_files_give_the_same_rows_and_skips(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    as_json = tmp_path / "train.json"
    as_json.write_text(json.dumps(ROWS))
    as_parquet = tmp_path / "train.parquet"
    # one column type per field, as real tables have: the non-string prompt becomes a row of
    # its own table, read after the first
    pq.write_table(pa.Table.from_pylist([{"problem": "1+1?", "answer": "2"}, {"problem": ""}]),
                   as_parquet)  # fmt: skip
    prompts = load_prompts(DataConfig(train=str(as_json)), seed=0)
    assert prompts.rows == USABLE and prompts.skipped == SKIPPED
    table = load_prompts(DataConfig(train=str(as_parquet)), seed=0)
    assert table.rows == [PromptRow(0, "1+1?", "2")] and table.skipped == {"empty prompt": 1}
    (tmp_path / "object.json").write_text(json.dumps({"problem": "not a list"}))
    with pytest.raises(ValueError, match="expected a JSON list of rows"):
        load_prompts(DataConfig(train=str(tmp_path / "object.json")), seed=0)


def test_a_hugging_face_dataset_by_name(tmp_path: Path) -> None:
    """``hf:<name>`` goes through ``datasets.load_dataset`` (here a local dataset folder, as the
    hub's cache would be: no network in tests), with the subset and split settings."""
    folder = tmp_path / "my-math"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    data = DataConfig(train=f"hf:{folder}", hf_split="train")
    assert data.train == f"hf:{folder}"  # a name, not resolved as a local path
    prompts = load_prompts(data, seed=0)
    assert prompts.rows == USABLE and prompts.skipped == SKIPPED  # a missing field is None there
    with pytest.raises(ValueError, match=f"data.train: hf:{folder} could not be loaded: ") as bad:
        load_prompts(DataConfig(train=f"hf:{folder}", hf_split="validation"), seed=0)
    assert "\n" not in str(bad.value)


def test_a_hugging_face_dataset_without_the_package_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(ValueError, match=r"needs the datasets package \(pip install datasets\)"):
        load_prompts(DataConfig(train="hf:openai/gsm8k", hf_subset="main"), seed=0)
