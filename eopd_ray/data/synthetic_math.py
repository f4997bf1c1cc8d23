"""Synthetic math task with branching solutions, for the offline tiny teacher/student preset.

Small integer problems (five families) whose gold answers are math-verify-compatible strings
(``7``, ``-2``, ``\\frac{3}{4}``) and whose solutions branch the way real reasoning does: each
solution is drawn from a small probabilistic grammar with choices of method, step order, optional
lines, equivalent forms and phrasing at decision points. A teacher trained on such text is uncertain
(next-token entropy above 0.8 nats) at the decision points and confident everywhere else, which is
the regime EOPD's entropy gate needs; ``measure_branching`` checks that property on token level.

Run ``python -m eopd_ray.data.synthetic_math --n 512 --seed 0 --out data/synthetic.jsonl`` to write
a JSONL file (fields ``problem``, ``answer``, ``family``, ``operands``, ``solution``) and print the
branching statistics under the tiny models' tokenizer (about 13% of solution positions above
0.8 nats for the ideal model of the corpus; the paper's teacher shows 15-20%).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TypeAlias

PROMPT_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."
FAMILIES: tuple[str, ...] = ("add_sub", "distribute", "linear", "fraction", "word")


# --------------------------------------------------------------------------------------------
# A tiny probabilistic grammar: a node is a literal, a sequence of nodes, or a weighted choice.
# Sampling draws one path; enumeration lists every text with its probability (small grammars
# only: paths multiply); ``_Automaton`` further down gets the ideal entropies without enumerating.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """A decision point: one of ``options`` with probability proportional to its weight."""

    options: tuple[tuple[float, Node], ...]


Node: TypeAlias = "str | Choice | tuple[Node, ...]"


def one_of(*options: Node, weights: Sequence[float] | None = None) -> Choice:
    """Uniform (or weighted) choice between alternative continuations."""
    ws = list(weights) if weights is not None else [1.0] * len(options)
    if len(ws) != len(options) or not options or min(ws) <= 0:
        raise ValueError("one_of needs one positive weight per option")
    return Choice(tuple(zip(ws, options, strict=True)))


def sample_literals(node: Node, rng: random.Random) -> list[str]:
    """One random path as its list of literals (their concatenation is the text)."""
    out: list[str] = []
    stack: list[Node] = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, str):
            out.append(cur)
        elif isinstance(cur, Choice):
            (picked,) = rng.choices(
                [o for _, o in cur.options], weights=[w for w, _ in cur.options]
            )
            stack.append(picked)
        else:
            stack.extend(reversed(cur))
    return out


def sample_node(node: Node, rng: random.Random) -> str:
    """One random text of the grammar."""
    return "".join(sample_literals(node, rng))


def count_paths(node: Node) -> int:
    """Number of paths through the grammar (without enumerating them)."""
    if isinstance(node, str):
        return 1
    if isinstance(node, Choice):
        return sum(count_paths(opt) for _, opt in node.options)
    return math.prod(count_paths(part) for part in node)


def enumerate_node(node: Node) -> dict[str, float]:
    """Every distinct text the node can produce, with its probability (identical texts merged)."""
    if isinstance(node, str):
        return {node: 1.0}
    if isinstance(node, Choice):
        total = sum(w for w, _ in node.options)
        out: dict[str, float] = {}
        for w, opt in node.options:
            for text, p in enumerate_node(opt).items():
                out[text] = out.get(text, 0.0) + p * w / total
        return out
    acc: dict[str, float] = {"": 1.0}
    for part in node:
        sub = enumerate_node(part)
        nxt: dict[str, float] = {}
        for head, p in acc.items():
            for tail, q in sub.items():
                nxt[head + tail] = nxt.get(head + tail, 0.0) + p * q
        acc = nxt
    return acc


# --------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------


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


def _frac(num: int | str, den: int | str) -> str:
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

_NAMES = ("Maya", "Leo", "Sam", "Ava", "Noah", "Mia", "Ben", "Zoe", "Omar", "Lena")
_ITEMS = ("apples", "pencils", "stickers", "marbles", "cookies", "books", "cards", "shells")
_BOXES = ("bags", "boxes", "packs", "jars")


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
        f"{_frac(n1, d1)} {op} {_frac(n2, d2)}"
    )
    return Problem(text, format_answer(value), "fraction", (n1, d1, n2, d2, sign))


def _make_word(rng: random.Random, r: NumberRanges) -> Problem:
    # operands: (start, groups, per_group, sign, name_idx, item_idx, box_idx):
    # start + sign * groups * per_group items; the indices pick the words from the tables above.
    ni, ii, bi = rng.randrange(len(_NAMES)), rng.randrange(len(_ITEMS)), rng.randrange(len(_BOXES))
    name, item, box = _NAMES[ni], _ITEMS[ii], _BOXES[bi]
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


# --------------------------------------------------------------------------------------------
# Solutions. Conventions that keep tokenization compositional at literal boundaries (so the
# exact entropy computation below can tokenize each literal on its own): a literal that follows
# another one starts with a space or a newline, or the previous one ends with a newline; a
# lead-in word and the expression it introduces are one literal ("Then 38 + 10").
# --------------------------------------------------------------------------------------------

_FIRST = ("", "First, ", "Start with ")
_THEN = ("", "Then ", "Next, ", "Now ")


def _signed_expr(terms: Sequence[int]) -> str:
    parts = [str(terms[0])]
    for t in terms[1:]:
        parts.append(f"{'+' if t >= 0 else '-'} {abs(t)}")
    return " ".join(parts)


def _verb(rhs: str, end: str = ".\n") -> Choice:
    # Three equivalent verbs: a >0.8-nat decision right after every left-hand side. The line end
    # is part of each option: "}" + "." would merge into one token across literals.
    return one_of(f" = {rhs}{end}", f" is {rhs}{end}", f" gives {rhs}{end}")


def _step(lhs: str, rhs: object, leads: Sequence[str] = _THEN) -> Node:
    """One computation line "<lead><lhs> <verb> <rhs>.": two decision points."""
    return (one_of(*(f"{w}{lhs}" for w in leads)), _verb(str(rhs)))


def _opener(*lines: str) -> Choice:
    """An optional first line announcing the method (absent or one of ``lines``)."""
    return one_of("", *(f"{line}\n" for line in lines))


def _closer(answer: str, var: str | None = None) -> Node:
    # Two decision points: the connective and the phrase before the box.
    phrases = [" the answer is", " the final answer is", " the result is", " we get"]
    if var is not None:
        phrases.append(f" {var} =")
    return (
        one_of("So", "Therefore,", "Thus", "Hence"),
        one_of(*phrases),
        f" \\boxed{{{answer}}}.",
    )


def _add_sub_grammar(p: Problem) -> Node:
    terms = list(p.operands)
    steps: list[Node] = []
    acc = terms[0]
    for i, t in enumerate(terms[1:]):
        lhs = f"{acc} {'+' if t >= 0 else '-'} {abs(t)}"
        steps.append(_step(lhs, acc + t, _FIRST if i == 0 else _THEN))
        acc += t
    in_order: Node = (
        _opener("We go from left to right.", "Work left to right.", "Take the terms in order."),
        tuple(steps),
    )
    pos, neg = [t for t in terms if t > 0], [-t for t in terms if t < 0]
    if not neg:
        return (in_order, _closer(p.answer))
    sp, sn = sum(pos), sum(neg)

    def total(label: str, xs: list[int], s: int) -> Node:
        if len(xs) == 1:
            head = one_of(f"The {label} term is", f"The only {label} term is", f"{label.title()}:")
            return (head, f" {xs[0]}.\n")
        head = one_of(f"Add the {label} terms:", f"{label.title()} terms:", f"The {label} part:")
        return (head, f" {' + '.join(map(str, xs))}", _verb(str(s)))

    grouped: Node = (
        _opener(
            "Group the terms by sign.", "Collect positive and negative terms.", "Sort by sign."
        ),
        one_of(
            (total("positive", pos, sp), total("negative", neg, sn)),
            (total("negative", neg, sn), total("positive", pos, sp)),
        ),
        _step(f"{sp} - {sn}", sp - sn, (*_THEN, "Finally, ")),
    )
    return (one_of(in_order, grouped, weights=(0.6, 0.4)), _closer(p.answer))


def _distribute_grammar(p: Problem) -> Node:
    a, b, c, sign = p.operands
    op = "+" if sign > 0 else "-"
    inner, pb, pc = b + sign * c, a * b, a * c
    direct: Node = (
        _opener(
            "Evaluate the parentheses first.",
            "Start inside the parentheses.",
            "Work inside the parentheses first.",
        ),
        _step(f"{b} {op} {c}", inner, ("", "First, ", "Inside, ")),
        _step(f"{a} \\times {inner}", a * inner),
    )
    ab, ac = f"{a} \\times {b}", f"{a} \\times {c}"
    products: Node = one_of(
        (_step(ab, pb, ("", "First, ")), _step(ac, pc, ("", "Then ", "Also, ", "And "))),
        (_step(ac, pc, ("", "First, ")), _step(ab, pb, ("", "Then ", "Also, ", "And "))),
    )
    distributed: Node = (
        _opener(f"Distribute the {a}.", "Use the distributive property.", f"Multiply each by {a}."),
        one_of(
            (products, _step(f"{pb} {op} {pc}", pb + sign * pc)),
            (
                f"{a} \\times ({b} {op} {c}) = {ab} {op} {ac}",
                one_of(f" = {pb} {op} {pc} = {p.answer}.\n", f" = {p.answer}.\n"),
            ),
        ),
    )
    return (one_of(direct, distributed), _closer(p.answer))


def _linear_grammar(p: Problem) -> Node:
    a, x, b, c = p.operands
    rhs = c - b
    # Options start with different words, so each decision is a >= 3-way split at one token.
    if b > 0:
        move = one_of(
            f"Subtract {b} from both sides:",
            f"Move {b} to the right side:",
            f"Subtracting {b} gives",
            f"Take {b} away on both sides:",
        )
        expand = f"{c} - {b}"
    else:
        move = one_of(
            f"Add {-b} to both sides:",
            f"Move {b} to the right side:",
            f"Adding {-b} gives",
            f"Cancel the {b} by adding {-b}:",
        )
        expand = f"{c} + {-b}"
    divide = one_of(
        f"Divide both sides by {a}:",
        f"Dividing by {a} gives",
        f"Now divide by {a}:",
        f"Then divide by {a}:",
    )
    check = f"Check: {a} \\times {x} {'+' if b > 0 else '-'} {abs(b)} = {c}.\n"
    return (
        _opener("We isolate x.", "Get x by itself.", "We solve step by step."),
        move,
        one_of(f" {a}x = {expand} = {rhs}.\n", f" {a}x = {rhs}.\n"),
        divide,
        one_of(
            f" x = {rhs} / {a} = {x}.\n", f" x = \\frac{{{rhs}}}{{{a}}} = {x}.\n", f" x = {x}.\n"
        ),
        one_of("", check, weights=(0.6, 0.4)),
        _closer(p.answer, var="x"),
    )


def _fraction_grammar(p: Problem) -> Node:
    n1, d1, n2, d2, sign = p.operands
    op = "+" if sign > 0 else "-"
    value = Fraction(n1, d1) + sign * Fraction(n2, d2)
    lcd = math.lcm(d1, d2)
    m1, m2 = n1 * lcd // d1, n2 * lcd // d2

    def solve(fr: Callable[[int | str, int | str], str]) -> Node:
        # ``fr`` is the notation of the intermediate lines: \frac{a}{b} or a/b.
        def simplify(num: int, den: int) -> Node:
            if (num, den) == (value.numerator, value.denominator):
                return ""
            head = one_of("Simplify:", "Reduce:", "Simplifying,", "In lowest terms,")
            return (head, f" {fr(num, den)} = {p.answer}.\n")

        def rewrite(num: int, den: int, new_num: int) -> Node:
            old, new = fr(num, den), fr(new_num, lcd)
            if den == lcd:
                return ""
            return one_of(
                f"{old} = {new}.\n",
                f"Write {old} as {new}.\n",
                f"{old} becomes {new}.\n",
                f"Rewrite {old} as {new}.\n",
            )

        rewrite_1, rewrite_2 = rewrite(n1, d1, m1), rewrite(n2, d2, m2)
        common: Node = (
            one_of(
                f"The least common denominator is {lcd}.\n",
                f"The common denominator is {lcd}.\n",
                f"Use the denominator {lcd}.\n",
                f"Both fractions can have denominator {lcd}.\n",
            ),
            # Optional rewriting of the fractions that need it, in either order; only in the
            # short a/b notation, which keeps every solution within ~96 tokens.
            one_of("", (rewrite_1, rewrite_2), (rewrite_2, rewrite_1), weights=(0.4, 0.3, 0.3))
            if fr is _slash
            else "",
            _step(f"{fr(m1, lcd)} {op} {fr(m2, lcd)}", fr(m1 + sign * m2, lcd)),
            simplify(m1 + sign * m2, lcd),
        )
        cross_num, times = n1 * d2 + sign * n2 * d1, "\\times"
        spelled = fr(f"{n1} {times} {d2} {op} {n2} {times} {d1}", f"{d1} {times} {d2}")
        if fr is not _frac:
            spelled = f"({n1} {times} {d2} {op} {n2} {times} {d1}) / ({d1} {times} {d2})"
        cross: Node = (
            _opener(
                "Cross multiply.", "Use a product of denominators.", "Multiply the denominators."
            ),
            f"{fr(n1, d1)} {op} {fr(n2, d2)}",
            one_of(f" = {spelled}", ""),
            _verb(fr(cross_num, d1 * d2)),
            simplify(cross_num, d1 * d2),
        )
        return one_of(common, cross)

    return (one_of(solve(_frac), solve(_slash)), _closer(p.answer))


def _slash(num: int | str, den: int | str) -> str:
    return f"{num}/{den}"


def _word_grammar(p: Problem) -> Node:
    start, k, m, sign, ni, ii, bi = p.operands
    name, item, box = _NAMES[ni], _ITEMS[ii], _BOXES[bi]
    moved, end = k * m, start + sign * k * m
    op = "+" if sign > 0 else "-"
    verb = "buys" if sign > 0 else "gives away"
    stepwise: Node = (
        _step(f"{k} \\times {m}", moved, ("", "First, ", f"In the {box}, ", f"The {box} hold ")),
        one_of("", f"So {moved} {item} change hands.\n", weights=(0.6, 0.4)),
        _step(f"{start} {op} {moved}", end),
    )
    expression: Node = (
        one_of("The total is", "We compute", "Write one expression:", "In one line:"),
        f" {start} {op} {k} \\times {m}",
        one_of(f" = {start} {op} {moved} = {end}.\n", f" = {end}.\n"),
    )
    return (
        _opener(
            f"{name} starts with {start} {item}.",
            f"{name} {verb} {k} {box}.",
            f"Each of the {box} holds {m} {item}.",
        ),
        one_of(stepwise, expression, weights=(0.6, 0.4)),
        _closer(p.answer),
    )


_GRAMMARS: dict[str, Callable[[Problem], Node]] = {
    "add_sub": _add_sub_grammar,
    "distribute": _distribute_grammar,
    "linear": _linear_grammar,
    "fraction": _fraction_grammar,
    "word": _word_grammar,
}


def solution_grammar(problem: Problem) -> Node:
    """The grammar of all valid solutions of ``problem`` (needs ``operands``)."""
    if problem.family not in _GRAMMARS:
        raise ValueError(f"unknown family {problem.family!r}")
    if not problem.operands:
        raise ValueError("problem has no operands (rows read without them cannot be solved)")
    return _GRAMMARS[problem.family](problem)


def sample_solution(problem: Problem, rng: random.Random) -> str:
    """One random valid solution path, ending with ``\\boxed{answer}``."""
    return sample_node(solution_grammar(problem), rng)


def count_solution_paths(problem: Problem) -> int:
    """Number of paths through the grammar (distinct choices; texts are distinct in practice)."""
    return count_paths(solution_grammar(problem))


def solution_distribution(problem: Problem, max_paths: int = 200_000) -> dict[str, float]:
    """Every distinct solution text with its exact sampling probability (exponential in the
    number of decision points: refused above ``max_paths`` paths)."""
    grammar = solution_grammar(problem)
    if count_paths(grammar) > max_paths:
        raise ValueError(f"{count_paths(grammar)} paths > max_paths={max_paths}")
    return enumerate_node(grammar)


def solution_paths(problem: Problem, max_paths: int = 200_000) -> list[str]:
    """Every distinct solution text, most likely first."""
    dist = solution_distribution(problem, max_paths)
    return sorted(dist, key=lambda s: (-dist[s], s))


# --------------------------------------------------------------------------------------------
# Branching: empirical next-token entropy over the prefix trie of solution token sequences
# --------------------------------------------------------------------------------------------

END = -1  # trie label of "sequence ends here" (the EOS prediction counts as a position too)


class _TrieNode:
    __slots__ = ("children", "counts")

    def __init__(self) -> None:
        self.counts: dict[int, float] = {}
        self.children: dict[int, _TrieNode] = {}


def trie_entropies(
    sequences: Sequence[Sequence[int]], weights: Sequence[float] | None = None
) -> tuple[list[float], list[float]]:
    """Per trie node: the entropy (nats) of the empirical next-token distribution and the node's
    visit mass (share of sequences passing through it; masses sum to the mean positions per
    sequence, end-of-sequence included). This is what an ideal model of the corpus would predict,
    so its entropy at a position is the corpus' irreducible uncertainty there."""
    ws = list(weights) if weights is not None else [1.0] * len(sequences)
    root = _TrieNode()
    for seq, w in zip(sequences, ws, strict=True):
        node = root
        for tok in [*seq, END]:
            node.counts[tok] = node.counts.get(tok, 0.0) + w
            if tok == END:
                break
            node = node.children.setdefault(tok, _TrieNode())
    total = sum(ws)
    entropies: list[float] = []
    masses: list[float] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if not node.counts:
            continue
        visits = sum(node.counts.values())
        entropies.append(-sum(c / visits * math.log(c / visits) for c in node.counts.values()))
        masses.append(visits / total)
        stack.extend(node.children.values())
    return entropies, masses


@dataclass(frozen=True)
class BranchingStats:
    """Visit-weighted summary of ``trie_entropies`` for one problem (or pooled over several)."""

    entropies: list[float]  # per trie node
    masses: list[float]  # per trie node: expected visits per solution
    threshold: float

    @property
    def positions(self) -> float:
        """Expected solution length in positions (tokens + the end prediction)."""
        return sum(self.masses)

    @property
    def share_above(self) -> float:
        """Share of positions whose entropy exceeds ``threshold`` (EOPD's gate would open)."""
        return (
            sum(m for h, m in zip(self.entropies, self.masses, strict=True) if h > self.threshold)
            / self.positions
        )

    @property
    def share_zero(self) -> float:
        """Share of deterministic positions (a single continuation)."""
        return (
            sum(m for h, m in zip(self.entropies, self.masses, strict=True) if h < 1e-12)
            / self.positions
        )

    @property
    def mean_entropy(self) -> float:
        return sum(h * m for h, m in zip(self.entropies, self.masses, strict=True)) / self.positions


class _Automaton:
    """The grammar as an acyclic weighted automaton over token ids.

    Each literal becomes a chain of token-emitting states; choices and sequences become
    probability-weighted epsilon edges. State numbers grow along every edge, which gives a
    topological order for free. Determinising it (a "belief" = distribution over automaton states
    consistent with the tokens so far) gives exactly the prefix trie of all solution paths, but
    with identical futures merged, so independent decisions cost a sum instead of a product."""

    def __init__(self, grammar: Node, encode: Callable[[str], list[int]]) -> None:
        self.emit: dict[int, tuple[int, int]] = {}  # state -> (token, next state)
        self.eps: dict[int, list[tuple[int, float]]] = {}  # state -> [(next state, prob)]
        self._n = 0
        self._encode = encode
        self._cache: dict[str, list[int]] = {}
        self.entry, self.final = self._build(grammar)

    def encode(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = list(self._encode(text)) if text else []
        return self._cache[text]

    def _new(self) -> int:
        self._n += 1
        return self._n - 1

    def _build(self, node: Node) -> tuple[int, int]:
        if isinstance(node, str):
            entry = cur = self._new()
            for tok in self.encode(node):
                nxt = self._new()
                self.emit[cur] = (tok, nxt)
                cur = nxt
            return entry, cur
        if isinstance(node, Choice):
            entry = self._new()
            total = sum(w for w, _ in node.options)
            built = [(self._build(opt), w / total) for w, opt in node.options]
            exit_ = self._new()
            self.eps[entry] = [(e, w) for (e, _), w in built]
            for (_, x), _w in built:
                self.eps[x] = [(exit_, 1.0)]
            return entry, exit_
        entry = exit_ = self._new()
        for part in node:
            e, x = self._build(part)
            self.eps[exit_] = [(e, 1.0)]
            exit_ = x
        return entry, exit_

    def closure(self, belief: dict[int, float]) -> dict[int, float]:
        """Follow epsilon edges until only emitting states (and the final state) hold mass."""
        pending = dict(belief)
        heap = list(pending)
        heapq.heapify(heap)
        out: dict[int, float] = {}
        while heap:
            state = heapq.heappop(heap)
            mass = pending.pop(state)
            if state in self.eps:  # all mass into ``state`` has arrived: edges only go upwards
                for nxt, w in self.eps[state]:
                    if nxt not in pending:
                        heapq.heappush(heap, nxt)
                    pending[nxt] = pending.get(nxt, 0.0) + mass * w
            else:
                out[state] = out.get(state, 0.0) + mass
        return out

    def entropies(self) -> tuple[list[float], list[float]]:
        """(entropy, visit mass) per node of the determinised trie, as ``trie_entropies``."""

        def key(belief: dict[int, float]) -> tuple[tuple[int, float], ...]:
            return tuple(sorted((s, round(p, 12)) for s, p in belief.items()))

        start = self.closure({self.entry: 1.0})
        beliefs = {key(start): start}
        masses = {key(start): 1.0}
        heap = [(min(start), key(start))]
        out_h: list[float] = []
        out_m: list[float] = []
        while heap:
            _, k = heapq.heappop(heap)
            if k not in beliefs:
                continue  # already processed (pushed twice)
            belief, mass = beliefs.pop(k), masses.pop(k)
            nxt: dict[int, dict[int, float]] = {}
            probs: dict[int, float] = {}
            for state, p in belief.items():
                tok, target = (END, -1) if state == self.final else self.emit[state]
                probs[tok] = probs.get(tok, 0.0) + p
                if tok != END:
                    nxt.setdefault(tok, {})[target] = nxt.get(tok, {}).get(target, 0.0) + p
            out_h.append(-sum(p * math.log(p) for p in probs.values() if p > 0))
            out_m.append(mass)
            for tok, targets in nxt.items():
                succ = self.closure({s: p / probs[tok] for s, p in targets.items()})
                sk = key(succ)
                if sk not in beliefs:
                    beliefs[sk], masses[sk] = succ, 0.0
                    heapq.heappush(heap, (min(succ), sk))
                masses[sk] += mass * probs[tok]
        return out_h, out_m


def measure_branching(
    problem: Problem,
    encode: Callable[[str], list[int]],
    *,
    n_samples: int | None = None,
    seed: int = 0,
    threshold: float = 0.8,
    verify_samples: int = 8,
) -> BranchingStats:
    """Next-token entropy profile of ``problem``'s solutions under the tokenizer ``encode``.

    ``n_samples=None`` (default) is exact: the ideal model of the solution distribution, computed
    on the grammar (each literal tokenized alone, which ``verify_samples`` sampled paths check
    against tokenizing the whole text; a mismatch raises ValueError). An integer instead builds
    the prefix trie of that many sampled solutions; deep in the trie few samples remain, so this
    underestimates the entropy of later decisions."""
    return grammar_branching(
        solution_grammar(problem),
        encode,
        n_samples=n_samples,
        seed=seed,
        threshold=threshold,
        verify_samples=verify_samples,
    )


def grammar_branching(
    grammar: Node,
    encode: Callable[[str], list[int]],
    *,
    n_samples: int | None = None,
    seed: int = 0,
    threshold: float = 0.8,
    verify_samples: int = 8,
) -> BranchingStats:
    """``measure_branching`` for any grammar."""
    rng = random.Random(seed)
    if n_samples is None:
        automaton = _Automaton(grammar, encode)
        for _ in range(verify_samples):
            literals = sample_literals(grammar, rng)
            pieced = [t for lit in literals for t in automaton.encode(lit)]
            if pieced != list(encode("".join(literals))):
                raise ValueError(
                    f"tokenization is not compositional for {''.join(literals)!r}; "
                    "use n_samples=<int> for this tokenizer"
                )
        entropies, masses = automaton.entropies()
    else:
        texts = [sample_node(grammar, rng) for _ in range(n_samples)]
        entropies, masses = trie_entropies([encode(t) for t in texts])
    return BranchingStats(entropies, masses, threshold)


def pooled_branching(stats: Iterable[BranchingStats]) -> BranchingStats:
    """Pool several problems' profiles, each problem weighted by its expected length."""
    stats = list(stats)
    if not stats or len({s.threshold for s in stats}) != 1:
        raise ValueError("need at least one profile, all with the same threshold")
    return BranchingStats(
        [h for s in stats for h in s.entropies],
        [m for s in stats for m in s.masses],
        stats[0].threshold,
    )


# --------------------------------------------------------------------------------------------
# I/O
# --------------------------------------------------------------------------------------------


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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=512, help="number of problems")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSONL file to write")
    parser.add_argument("--threshold", type=float, default=0.8)
    args = parser.parse_args(argv)
    problems = generate_problems(args.n, args.seed)
    if args.out is not None:
        print(f"wrote {write_jsonl(args.out, problems, seed=args.seed)}")

    # The tiny models' tokenizer (imported here only: this module itself needs no ML stack).
    from eopd_ray.models.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(corpus_texts(problems, solutions_per_problem=4, seed=args.seed))
    backend = tokenizer.backend_tokenizer
    pooled = pooled_branching(
        measure_branching(
            p, lambda t: backend.encode(t, add_special_tokens=False).ids, threshold=args.threshold
        )
        for p in problems
    )
    print(
        f"ideal next-token entropy over solution positions ({len(tokenizer)}-token BPE): "
        f"> {args.threshold} nats at {pooled.share_above:.1%}, zero at {pooled.share_zero:.1%}, "
        f"mean {pooled.mean_entropy:.3f} nats, {pooled.positions / len(problems):.1f} positions"
    )


if __name__ == "__main__":
    main()
