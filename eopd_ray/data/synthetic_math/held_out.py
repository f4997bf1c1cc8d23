"""The synthetic task's held-out problems: graded by ``eopd-ray eval``, never trained on.

The tiny teacher and student are pre-trained on ``generate_problems(PRETRAIN_PROBLEMS,
PRETRAIN_SEED, difficulty)`` (``eopd_ray.models.pretrain``, ``PretrainSettings``' defaults).
:func:`held_out_problems` draws candidates from a seed that draw never uses and drops the repeats
of pre-training problems (with small operands a fresh draw repeats many); pre-training grades the
tiny models on the first 256 of them, the ``source: synthetic`` benchmark serves them, and
:func:`training_problems` (``data.train: synthetic``, any seed) leaves them out, so an evaluation
never scores a problem the model was pre-trained or distilled on.
"""

from __future__ import annotations

from functools import lru_cache

from eopd_ray.data.synthetic_math.problems import Problem, generate_problems

# PretrainSettings' defaults (seed, num_problems, eval_problems): the cached tiny models' split.
PRETRAIN_SEED = 0
PRETRAIN_PROBLEMS = 2000
HELD_OUT_PROBLEMS = 256
# Held-out candidates are drawn with a seed the pre-training problems never use.
HELD_OUT_SEED_OFFSET = 10_000


def held_out_problems(
    difficulty: str = "small",
    count: int = HELD_OUT_PROBLEMS,
    *,
    seed: int = PRETRAIN_SEED,
    pretrain_problems: int = PRETRAIN_PROBLEMS,
) -> list[Problem]:
    """``count`` distinct problems none of which is among the ``pretrain_problems`` pre-training
    problems of ``seed`` at ``difficulty``; raises ``ValueError`` when the space is exhausted."""
    return list(_held_out(difficulty, count, seed, pretrain_problems))


@lru_cache(maxsize=8)
def _held_out(
    difficulty: str, count: int, seed: int, pretrain_problems: int
) -> tuple[Problem, ...]:
    seen = {p.problem for p in generate_problems(pretrain_problems, seed, difficulty=difficulty)}
    candidates = generate_problems(8 * count, seed + HELD_OUT_SEED_OFFSET, difficulty=difficulty)
    fresh = [p for p in candidates if p.problem not in seen]
    if len(fresh) < count:
        raise ValueError(
            f"only {len(fresh)} of {len(candidates)} candidate problems are not training "
            f"problems; lower eval_problems ({count}) or num_problems"
        )
    return tuple(fresh[:count])


def training_problems(n: int, seed: int, difficulty: str = "small") -> list[Problem]:
    """``n`` training problems of ``seed``: the first ``n`` problems of ``generate_problems`` that
    are not held out at ``difficulty``. Deterministic; when none of the first ``n`` is held out
    (seed 0: a prefix of the pre-training problems) these are ``generate_problems(n, seed)``."""
    held = {
        p.problem
        for p in _held_out(difficulty, HELD_OUT_PROBLEMS, PRETRAIN_SEED, PRETRAIN_PROBLEMS)
    }
    drawn = n + len(held)
    while True:
        problems = generate_problems(drawn, seed, difficulty=difficulty)
        kept = [p for p in problems if p.problem not in held]
        if len(kept) >= n:
            return kept[:n]
        # Only near an exhausted space (generate_problems then repeats problems, held-out ones
        # too); the pre-training problems are never held out, so a larger draw gets there.
        drawn *= 2
