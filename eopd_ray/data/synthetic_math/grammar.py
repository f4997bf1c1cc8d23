"""A tiny probabilistic grammar: a node is a literal, a sequence of nodes, or a weighted choice.

Sampling draws one path; enumeration lists every text with its probability (small grammars only:
paths multiply); ``branching`` gets the ideal entropies without enumerating. The solutions of the
synthetic math task (``solutions``) are written in it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias


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
