"""Branching of the solutions: the next-token entropy an ideal model of the corpus would have.

``measure_branching`` computes it exactly on a problem's solution grammar (or estimates it from a
prefix trie of sampled solutions) under a given tokenizer; ``BranchingStats`` summarises the share
of positions where EOPD's entropy gate (0.8 nats) would open.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from eopd_ray.data.synthetic_math.grammar import Choice, Node, sample_literals, sample_node
from eopd_ray.data.synthetic_math.problems import Problem
from eopd_ray.data.synthetic_math.solutions import solution_grammar

# Empirical next-token entropy over the prefix trie of solution token sequences.

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
