"""Training prompts: load rows from JSONL (or the synthetic task), skip bad ones, stream epochs.

A row without the prompt field, with an empty prompt or that is not valid JSON is skipped and
counted by reason (reported at the end of a run), never silently trained on.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from eopd_ray.config import DataConfig


@dataclass(frozen=True)
class PromptRow:
    prompt_id: int
    problem: str
    answer: str | None


@dataclass
class PromptSet:
    rows: list[PromptRow]
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> count


def load_prompts(data: DataConfig, seed: int) -> PromptSet:
    """Rows of ``data.train``: ``synthetic``, or JSONL with ``prompt_field`` / ``answer_field``."""
    if data.train == "synthetic":
        from eopd_ray.data.synthetic_math import generate_problems

        problems = generate_problems(
            data.synthetic_problems, seed=seed, difficulty=data.synthetic_difficulty
        )
        return PromptSet([PromptRow(i, p.problem, p.answer) for i, p in enumerate(problems)])
    path = Path(data.train)
    if not path.is_file():
        raise FileNotFoundError(f"data.train: {path} does not exist")
    result = PromptSet(rows=[])
    with path.open() as lines:
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                result.skipped["invalid JSON"] += 1
                continue
            if not isinstance(row, dict) or data.prompt_field not in row:
                result.skipped[f"no '{data.prompt_field}' field"] += 1
                continue
            problem = row[data.prompt_field]
            if not isinstance(problem, str) or not problem.strip():
                result.skipped["empty prompt"] += 1
                continue
            answer = row.get(data.answer_field)
            answer = None if answer is None else str(answer)
            result.rows.append(PromptRow(line_no - 1, problem, answer))
    if not result.rows:
        raise ValueError(f"data.train: {path} has no usable rows (skipped: {dict(result.skipped)})")
    return result


class PromptStream:
    """Endless-by-epochs iterator over prompt rows, reshuffled each epoch; resumable by position."""

    def __init__(self, rows: list[PromptRow], epochs: int, seed: int) -> None:
        if not rows:
            raise ValueError("no prompts to train on")
        self.rows = rows
        self.epochs = epochs
        self.seed = seed
        self.position = 0  # prompts handed out so far, over all epochs

    @property
    def total(self) -> int:
        return len(self.rows) * self.epochs

    def remaining(self) -> int:
        return self.total - self.position

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.rows)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def take(self, n: int) -> list[PromptRow]:
        """Up to ``n`` next rows (fewer at the very end)."""
        out: list[PromptRow] = []
        while len(out) < n and self.position < self.total:
            epoch, index = divmod(self.position, len(self.rows))
            out.append(self.rows[self._order(epoch)[index]])
            self.position += 1
        return out
