"""Texts and files of the synthetic math task: the prompt, training corpus texts, JSONL rows."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from eopd_ray.data.synthetic_math.problems import Problem
from eopd_ray.data.synthetic_math.solutions import sample_solution

PROMPT_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."


def prompt_text(problem: Problem, suffix: str = PROMPT_SUFFIX) -> str:
    """The user message the trainer sends (problem + instruction), as in the paper's setup."""
    return f"{problem.problem} {suffix}" if suffix else problem.problem


def corpus_texts(
    problems: Sequence[Problem], *, solutions_per_problem: int = 1, seed: int = 0
) -> list[str]:
    """Prompt + sampled solution texts, e.g. to train a tokenizer on the task's language."""
    rng = random.Random(seed)
    return [
        f"{prompt_text(p)}\n{sample_solution(p, rng)}"
        for p in problems
        for _ in range(solutions_per_problem)
    ]


def write_jsonl(
    path: str | Path,
    problems: Sequence[Problem],
    *,
    seed: int = 0,
    with_solution: bool = True,
) -> Path:
    """Write one row per problem: ``problem``, ``answer``, ``family``, ``operands`` and (unless
    ``with_solution=False``) one sampled ``solution``; the standard fields the loader reads are
    ``problem`` and ``answer``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for p in problems:
            row: dict[str, object] = {
                "problem": p.problem,
                "answer": p.answer,
                "family": p.family,
                "operands": list(p.operands),
            }
            if with_solution:
                row["solution"] = sample_solution(p, rng)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[Problem]:
    """Problems back from ``write_jsonl`` rows (``family``/``operands`` optional)."""
    out: list[Problem] = []
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                out.append(
                    Problem(
                        row["problem"],
                        str(row["answer"]),
                        row.get("family", "unknown"),
                        tuple(row.get("operands", ())),
                    )
                )
    return out
