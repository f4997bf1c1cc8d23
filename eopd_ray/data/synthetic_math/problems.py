"""The synthetic math problems: five families, their operand ranges, and ``generate_problems``.

Every problem keeps the numbers it was built from (``Problem.operands``), so ``solutions`` can
rebuild its solution grammar and answers can be re-checked from a JSONL row.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

FAMILIES: tuple[str, ...] = ("add_sub", "distribute", "linear", "fraction", "word")


@dataclass(frozen=True)
class Problem:
    """One problem: its text (without the prompt suffix), gold answer string and family.

    ``operands`` holds the numbers the problem was built from (family-specific layout, see the
    ``_make_*`` functions), so answers can be re-checked and solutions rebuilt from a JSONL row.
    """

    problem: str
    answer: str
    family: str
    operands: tuple[int, ...] = field(default=())


def format_answer(value: Fraction) -> str:
    """Gold answer string: an integer, or a reduced ``\\frac{p}{q}`` (sign in front)."""
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def latex_frac(num: int | str, den: int | str) -> str:
    """``\\frac{num}{den}`` (LaTeX)."""
    return f"\\frac{{{num}}}{{{den}}}"


@dataclass(frozen=True)
class NumberRanges:
    """How large the numbers of each family get (``generate_problems(difficulty=...)``).

    ``standard`` is the original task; ``easy`` and ``small`` keep every family and the whole
    solution grammar (so the same branching) but draw smaller operands, so intermediate results
    have fewer digits and the arithmetic is within reach of a few minutes of CPU pre-training."""

    term_max: int = 20  # add_sub: |term| in [1, term_max]
    extra_terms: tuple[int, int] = (2, 3)  # add_sub: terms after the first
    factor_max: int = 9  # distribute: a in [2, factor_max]
    inner_max: int = 12  # distribute: b, c in [1, inner_max]
    coef_max: int = 9  # linear: a in [2, coef_max]
    x_range: tuple[int, int] = (-9, 12)  # linear: x in [lo, hi], x != 0
    const_max: int = 20  # linear: |b| in [1, const_max]
    den_max: int = 9  # fraction: denominators in [2, den_max]
    groups_max: int = 6  # word: groups in [2, groups_max]
    per_group_max: int = 9  # word: items per group in [2, per_group_max]
    start_max: int = 30  # word: start in [1, start_max] (or k*m + [1, start_max] when giving away)


DIFFICULTIES: dict[str, NumberRanges] = {
    "standard": NumberRanges(),
    "easy": NumberRanges(
        term_max=9,
        extra_terms=(1, 2),
        factor_max=5,
        inner_max=9,
        coef_max=5,
        x_range=(-5, 9),
        const_max=9,
        den_max=6,
        groups_max=4,
        per_group_max=5,
        start_max=20,
    ),
    # The CPU preset's task: operands small enough that a 3.5M-parameter teacher pre-trained for
    # a few minutes gets most answers right, with the same families and solution grammar.
    "small": NumberRanges(
        term_max=5,
        extra_terms=(1, 2),
        factor_max=3,
        inner_max=5,
        coef_max=3,
        x_range=(-3, 5),
        const_max=5,
        den_max=4,
        groups_max=3,
        per_group_max=4,
        start_max=10,
    ),
}

# The word family's vocabulary (``Problem.operands`` of a word problem index into it).
WORD_NAMES = ("Maya", "Leo", "Sam", "Ava", "Noah", "Mia", "Ben", "Zoe", "Omar", "Lena")
WORD_ITEMS = ("apples", "pencils", "stickers", "marbles", "cookies", "books", "cards", "shells")
WORD_BOXES = ("bags", "boxes", "packs", "jars")


def _signed_expr(terms: Sequence[int]) -> str:
    parts = [str(terms[0])]
    for t in terms[1:]:
        parts.append(f"{'+' if t >= 0 else '-'} {abs(t)}")
    return " ".join(parts)


def _make_add_sub(rng: random.Random, r: NumberRanges) -> Problem:
    # operands: signed terms; the first is positive.
    terms = [rng.randint(1, r.term_max)]
    for _ in range(rng.randint(*r.extra_terms)):
        terms.append(rng.randint(1, r.term_max) * rng.choice((1, -1)))
    expr = _signed_expr(terms)
    text = rng.choice(("Compute {}.", "What is {}?", "Evaluate {}.")).format(expr)
    return Problem(text, format_answer(Fraction(sum(terms))), "add_sub", tuple(terms))


def _make_distribute(rng: random.Random, r: NumberRanges) -> Problem:
    # operands: (a, b, c, sign) for a * (b + sign*c); b > c when subtracting keeps things small.
    a, b, c = rng.randint(2, r.factor_max), rng.randint(1, r.inner_max), rng.randint(1, r.inner_max)
    sign = rng.choice((1, -1))
    if sign < 0 and b <= c:
        b, c = c + 1, b
    op = "+" if sign > 0 else "-"
    text = rng.choice(("Compute {}.", "What is {}?", "Evaluate {}.")).format(
        f"{a} \\times ({b} {op} {c})"
    )
    return Problem(text, format_answer(Fraction(a * (b + sign * c))), "distribute", (a, b, c, sign))


def _make_linear(rng: random.Random, r: NumberRanges) -> Problem:
    # operands: (a, x, b, c) with a*x + b = c; b may be negative (written "a x - |b|").
    lo, hi = r.x_range
    a, x = rng.randint(2, r.coef_max), rng.choice([v for v in range(lo, hi + 1) if v != 0])
    b = rng.randint(1, r.const_max) * rng.choice((1, -1))
    c = a * x + b
    op = "+" if b > 0 else "-"
    text = rng.choice(("Solve for x: {}.", "Find x if {}.", "Solve {} for x.")).format(
        f"{a}x {op} {abs(b)} = {c}"
    )
    return Problem(text, format_answer(Fraction(x)), "linear", (a, x, b, c))


def _make_fraction(rng: random.Random, r: NumberRanges) -> Problem:
    # operands: (n1, d1, n2, d2, sign); proper fractions, positive result when subtracting.
    d1, d2 = rng.randint(2, r.den_max), rng.randint(2, r.den_max)
    n1, n2 = rng.randint(1, d1 - 1), rng.randint(1, d2 - 1)
    sign = rng.choice((1, -1))
    if sign < 0 and Fraction(n1, d1) <= Fraction(n2, d2):
        if Fraction(n1, d1) == Fraction(n2, d2):
            sign = 1
        else:
            n1, d1, n2, d2 = n2, d2, n1, d1
    value = Fraction(n1, d1) + sign * Fraction(n2, d2)
    op = "+" if sign > 0 else "-"
    text = rng.choice(("Compute {}.", "What is {}?", "Simplify {}.")).format(
        f"{latex_frac(n1, d1)} {op} {latex_frac(n2, d2)}"
    )
    return Problem(text, format_answer(value), "fraction", (n1, d1, n2, d2, sign))


def _make_word(rng: random.Random, r: NumberRanges) -> Problem:
    # operands: (start, groups, per_group, sign, name_idx, item_idx, box_idx):
    # start + sign * groups * per_group items; the indices pick the words from the tables above.
    ni, ii, bi = (
        rng.randrange(len(WORD_NAMES)),
        rng.randrange(len(WORD_ITEMS)),
        rng.randrange(len(WORD_BOXES)),
    )
    name, item, box = WORD_NAMES[ni], WORD_ITEMS[ii], WORD_BOXES[bi]
    k, m = rng.randint(2, r.groups_max), rng.randint(2, r.per_group_max)
    sign = rng.choice((1, -1))
    start = rng.randint(k * m + 1, k * m + r.start_max) if sign < 0 else rng.randint(1, r.start_max)
    verb = "buys" if sign > 0 else "gives away"
    text = (
        f"{name} has {start} {item}. {name} {verb} {k} {box} with {m} {item} in each. "
        f"How many {item} does {name} have now?"
    )
    operands = (start, k, m, sign, ni, ii, bi)
    return Problem(text, format_answer(Fraction(start + sign * k * m)), "word", operands)


_MAKERS: dict[str, Callable[[random.Random, NumberRanges], Problem]] = {
    "add_sub": _make_add_sub,
    "distribute": _make_distribute,
    "linear": _make_linear,
    "fraction": _make_fraction,
    "word": _make_word,
}


def generate_problems(
    n: int,
    seed: int = 0,
    families: Sequence[str] = FAMILIES,
    difficulty: str | NumberRanges = "standard",
) -> list[Problem]:
    """``n`` problems, families drawn uniformly; deterministic in ``seed``; no duplicate texts
    unless the families' problem space is exhausted. ``difficulty`` (a ``DIFFICULTIES`` name or
    ``NumberRanges``) sets the operand sizes; the default ``standard`` is the original task."""
    unknown = set(families) - set(_MAKERS)
    if unknown:
        raise ValueError(f"unknown families {sorted(unknown)}; known: {list(FAMILIES)}")
    if isinstance(difficulty, str):
        if difficulty not in DIFFICULTIES:
            raise ValueError(f"unknown difficulty {difficulty!r}; known: {list(DIFFICULTIES)}")
        difficulty = DIFFICULTIES[difficulty]
    rng = random.Random(seed)
    out: list[Problem] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n:
        attempts += 1
        problem = _MAKERS[rng.choice(list(families))](rng, difficulty)
        # After many rejections the space is nearly exhausted: accept duplicates rather than loop.
        if problem.problem in seen and attempts < 50 * n:
            continue
        seen.add(problem.problem)
        out.append(problem)
    return out
