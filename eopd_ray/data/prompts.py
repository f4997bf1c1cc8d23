"""Training prompts: load rows (a built-in source, a local file, a Hugging Face dataset), skip bad
ones, stream epochs.

``load_prompts(config.data, seed)`` gives the rows, ``PromptStream(rows, epochs, seed)`` hands them
out batch by batch (``take``), reshuffled per epoch and resumable from a saved ``position``.

A row that is not UTF-8 or not valid JSON, has no prompt field, a prompt that is not a string or
is empty, is skipped and counted by reason with its first line (or row) numbers (printed at
start-up and in ``summary.json``), never silently trained on; a UTF-8 byte-order mark is ignored.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eopd_ray.config import HF_DATA_PREFIX, DataConfig

_LINES_KEPT = 5  # line numbers kept per skip reason


@dataclass(frozen=True)
class PromptRow:
    prompt_id: int
    problem: str
    answer: str | None


@dataclass
class PromptSet:
    rows: list[PromptRow]
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> count
    # reason -> the first few line numbers (1-based), so that a user can find the bad rows
    skipped_lines: dict[str, list[int]] = field(default_factory=dict)

    def skip(self, reason: str, line_no: int) -> None:
        self.skipped[reason] += 1
        lines = self.skipped_lines.setdefault(reason, [])
        if len(lines) < _LINES_KEPT:
            lines.append(line_no)

    def describe_skips(self) -> str:
        """``skipped 3 rows: not UTF-8 (line 4), invalid JSON (lines 7, 9)``; '' when none."""
        if not self.skipped:
            return ""
        parts = []
        for reason, count in self.skipped.items():
            lines = self.skipped_lines.get(reason, [])
            where = ", ".join(map(str, lines)) + (", ..." if count > len(lines) else "")
            label = "line" if count == 1 else "lines"
            parts.append(f"{reason} ({label} {where})" if lines else f"{reason} ({count})")
        total = sum(self.skipped.values())
        return f"skipped {total} row{'s' if total != 1 else ''}: " + "; ".join(parts)


def load_prompts(data: DataConfig, seed: int) -> PromptSet:
    """Rows of ``data.train``: ``synthetic`` (the task's problems outside its held-out set),
    ``math`` (MATH outside MATH-500, ``data.levels``), or the rows of a ``.jsonl`` / ``.json`` /
    ``.parquet`` file or an ``hf:<name>`` dataset, with ``prompt_field`` / ``answer_field``."""
    if data.train == "synthetic":
        from eopd_ray.data.synthetic_math.held_out import training_problems

        # Never the held-out problems the synthetic benchmark grades (any seed).
        problems = training_problems(
            data.synthetic_problems, seed=seed, difficulty=data.synthetic_difficulty
        )
        return PromptSet([PromptRow(i, p.problem, p.answer) for i, p in enumerate(problems)])
    if data.train == "math":
        from eopd_ray.data.math_train import math_training_problems

        problems = math_training_problems(data.levels)
        if not problems:
            raise ValueError(f"data.train: math has no problems at levels {data.levels}")
        return PromptSet([PromptRow(i, p.problem, p.answer) for i, p in enumerate(problems)])
    result = PromptSet(rows=[])
    for number, row in _source_rows(data, result):
        parsed = _check_row(row, data, result, number)
        if parsed is not None:
            result.rows.append(PromptRow(number - 1, *parsed))
    if not result.rows:
        raise ValueError(f"data.train: {data.train} has no usable rows ({result.describe_skips()})")
    return result


def _source_rows(data: DataConfig, result: PromptSet) -> Iterator[tuple[int, Any]]:
    """(row number from 1, decoded row) of ``data.train``: a Hugging Face dataset, a ``.json``
    list or ``.parquet`` table (``eopd_ray/eval/benchmarks.py`` reads them, as for benchmark
    files), or JSONL, whose undecodable lines are counted in ``result`` and skipped."""
    if data.train.startswith(HF_DATA_PREFIX):
        yield from enumerate(_hf_rows(data), start=1)
        return
    path = Path(data.train)
    if not path.is_file():
        raise FileNotFoundError(f"data.train: {path} does not exist")
    if path.suffix.lower() in (".json", ".parquet"):
        from eopd_ray.eval.benchmarks import BenchmarkError, read_rows

        try:
            yield from enumerate(read_rows(path), start=1)
        except BenchmarkError as exc:
            raise ValueError(f"data.train: {exc}") from None
        return
    for line_no, line in _lines(path, result):
        try:
            yield line_no, json.loads(line)
        except json.JSONDecodeError:
            result.skip("invalid JSON", line_no)


def _hf_rows(data: DataConfig) -> list[dict[str, Any]]:
    """The rows of ``hf:<name>`` (``hf_subset``, ``hf_split``) through ``datasets``; one-line
    errors when the package is missing or the dataset cannot be had (no hub, a wrong name)."""
    name = data.train.removeprefix(HF_DATA_PREFIX)
    try:
        import datasets
    except ImportError:
        raise ValueError(
            f"data.train: {data.train} needs the datasets package (pip install datasets)"
        ) from None
    try:
        rows = datasets.load_dataset(name, data.hf_subset, split=data.hf_split)
    except Exception as exc:  # no hub, no such dataset / subset / split: say which, in one line
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ValueError(f"data.train: {data.train} could not be loaded: {first}") from None
    return list(rows)


def _lines(path: Path, result: PromptSet) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-blank lines; a line that is not UTF-8 is skipped and counted
    (one bad byte must not refuse the whole file), a UTF-8 byte-order mark is dropped."""
    with path.open("rb") as raw:
        for line_no, data in enumerate(raw, start=1):
            if line_no == 1:
                data = data.removeprefix(b"\xef\xbb\xbf")
            try:
                line = data.decode("utf-8")
            except UnicodeDecodeError:
                result.skip("not UTF-8", line_no)
                continue
            if line.strip():
                yield line_no, line


def _check_row(
    row: Any, data: DataConfig, result: PromptSet, number: int
) -> tuple[str, str | None] | None:
    """(problem, answer) of one decoded row, or None after counting why it is skipped."""
    if not isinstance(row, dict) or row.get(data.prompt_field) is None:  # tables: missing = None
        result.skip(f"no '{data.prompt_field}' field", number)
        return None
    problem = row[data.prompt_field]
    if not isinstance(problem, str):
        result.skip(f"'{data.prompt_field}' is not a string", number)
        return None
    if not problem.strip():
        result.skip("empty prompt", number)
        return None
    answer = row.get(data.answer_field)
    return problem, None if answer is None else str(answer)


class PromptStream:
    """Endless-by-epochs iterator over prompt rows, reshuffled each epoch; resumable by position.

    An epoch's order depends on (seed, epoch) only; the current epoch's is cached (one shuffle
    per epoch, not one per prompt)."""

    def __init__(self, rows: list[PromptRow], epochs: int, seed: int) -> None:
        if not rows:
            raise ValueError("no prompts to train on")
        self.rows = rows
        self.epochs = epochs
        self.seed = seed
        self.position = 0  # prompts handed out so far, over all epochs
        self._cached: tuple[int, list[int]] | None = None  # (epoch, its order)

    @property
    def total(self) -> int:
        return len(self.rows) * self.epochs

    def remaining(self) -> int:
        return self.total - self.position

    def _order(self, epoch: int) -> list[int]:
        """The row indices of ``epoch`` in the order they are handed out."""
        if self._cached is None or self._cached[0] != epoch:
            order = list(range(len(self.rows)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            self._cached = (epoch, order)
        return self._cached[1]

    def take(self, n: int) -> list[PromptRow]:
        """Up to ``n`` next rows (fewer at the very end)."""
        out: list[PromptRow] = []
        while len(out) < n and self.position < self.total:
            epoch, index = divmod(self.position, len(self.rows))
            out.append(self.rows[self._order(epoch)[index]])
            self.position += 1
        return out
