"""Solution grammars of the synthetic math problems: every valid solution with its probability.

Each family's grammar branches at decision points (method, step order, optional lines, equivalent
forms, phrasing) and is deterministic everywhere else; ``sample_solution`` draws one path and
``solution_distribution`` lists them all.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from fractions import Fraction

from eopd_ray.data.synthetic_math.grammar import (
    Choice,
    Node,
    count_paths,
    enumerate_node,
    one_of,
    sample_node,
)
from eopd_ray.data.synthetic_math.problems import (
    WORD_BOXES,
    WORD_ITEMS,
    WORD_NAMES,
    Problem,
    latex_frac,
)

# Conventions that keep tokenization compositional at literal boundaries (so the exact entropy
# computation in ``branching`` can tokenize each literal on its own): a literal that follows
# another one starts with a space or a newline, or the previous one ends with a newline; a
# lead-in word and the expression it introduces are one literal ("Then 38 + 10").

_FIRST = ("", "First, ", "Start with ")
_THEN = ("", "Then ", "Next, ", "Now ")


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
        if fr is not latex_frac:
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

    return (one_of(solve(latex_frac), solve(_slash)), _closer(p.answer))


def _slash(num: int | str, den: int | str) -> str:
    return f"{num}/{den}"


def _word_grammar(p: Problem) -> Node:
    start, k, m, sign, ni, ii, bi = p.operands
    name, item, box = WORD_NAMES[ni], WORD_ITEMS[ii], WORD_BOXES[bi]
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
