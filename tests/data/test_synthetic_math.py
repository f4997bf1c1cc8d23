"""Synthetic math task: determinism, correct gold answers and arithmetic, and real branching."""

from __future__ import annotations

import ast
import json
import math
import random
import re
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import pytest

from eopd_ray.data.synthetic_math.branching import (
    BranchingStats,
    grammar_branching,
    measure_branching,
    pooled_branching,
    trie_entropies,
)
from eopd_ray.data.synthetic_math.corpus import read_jsonl, write_jsonl
from eopd_ray.data.synthetic_math.grammar import count_paths, enumerate_node, one_of, sample_node
from eopd_ray.data.synthetic_math.held_out import (
    HELD_OUT_PROBLEMS,
    PRETRAIN_PROBLEMS,
    PRETRAIN_SEED,
    held_out_problems,
)
from eopd_ray.data.synthetic_math.held_out import training_problems as synthetic_training_problems
from eopd_ray.data.synthetic_math.problems import (
    FAMILIES,
    Problem,
    format_answer,
    generate_problems,
)
from eopd_ray.data.synthetic_math.solutions import (
    count_solution_paths,
    sample_solution,
    solution_distribution,
    solution_paths,
)

INT = r"(-?\d+)"
FRAC = r"\\frac\{(\d+)\}\{(\d+)\}"


@pytest.fixture(scope="module")
def encode() -> Callable[[str], list[int]]:
    """The tiny models' tokenizer, trained on the task as ``build_tiny_pair`` does."""
    from eopd_ray.data.synthetic_math.corpus import corpus_texts
    from eopd_ray.models.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(corpus_texts(generate_problems(1000, 0), solutions_per_problem=4))
    backend = tokenizer.backend_tokenizer
    return lambda text: backend.encode(text, add_special_tokens=False).ids


def gold_from_text(p: Problem) -> Fraction:
    """Recompute the answer from the problem text alone (independent of the generator)."""
    text = p.problem
    if p.family == "add_sub":
        expr = re.search(r"(\d+(?: [+-] \d+)+)", text).group(1)  # type: ignore[union-attr]
        tokens = expr.split()
        total = int(tokens[0])
        for op, num in zip(tokens[1::2], tokens[2::2], strict=True):
            total += int(num) if op == "+" else -int(num)
        return Fraction(total)
    if p.family == "distribute":
        a, b, op, c = re.search(r"(\d+) \\times \((\d+) ([+-]) (\d+)\)", text).groups()  # type: ignore[union-attr]
        return Fraction(int(a) * (int(b) + (int(c) if op == "+" else -int(c))))
    if p.family == "linear":
        a, op, b, c = re.search(rf"(\d+)x ([+-]) (\d+) = {INT}", text).groups()  # type: ignore[union-attr]
        return Fraction(int(c) - (int(b) if op == "+" else -int(b)), int(a))
    if p.family == "fraction":
        n1, d1, op, n2, d2 = re.search(rf"{FRAC} ([+-]) {FRAC}", text).groups()  # type: ignore[union-attr]
        second = Fraction(int(n2), int(d2))
        return Fraction(int(n1), int(d1)) + (second if op == "+" else -second)
    if p.family == "word":
        start = int(re.search(r"has (\d+) ", text).group(1))  # type: ignore[union-attr]
        verb, k, m = re.search(r"(buys|gives away) (\d+) \w+ with (\d+)", text).groups()  # type: ignore[union-attr]
        return Fraction(start + (1 if verb == "buys" else -1) * int(k) * int(m))
    raise AssertionError(p.family)


def _eval(expr: str) -> Fraction:
    """Exact value of + - * / ( ) integer arithmetic."""

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, ast.BinOp):
            left, right = walk(node.left), walk(node.right)
            ops = {ast.Add: left + right, ast.Sub: left - right, ast.Mult: left * right}
            if isinstance(node.op, ast.Div):
                return left / right
            return ops[type(node.op)]
        raise ValueError(ast.dump(node))

    return walk(ast.parse(expr.strip(), mode="eval").body)


def equations(solution: str) -> list[list[str]]:
    """Chains "e1 = e2 = ..." of pure arithmetic in a solution ("is", "gives", "as" and
    "becomes" read as "="; terms with x are cut out), for checking every intermediate step."""
    text = solution.replace("\\times", "*")
    text = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", text)
    text = re.sub(r"-?\d+x|\bx\b", " X ", text)
    text = re.sub(r"(?<=[0-9)]) (is|gives|as|becomes) (?=[-0-9(])", " = ", text)
    chains = []
    for span in re.findall(r"[-+*/() 0-9]+(?:=[-+*/() 0-9]+)+", text):
        parts = [part for part in span.split("=") if re.search(r"\d", part)]
        if len(parts) >= 2:
            chains.append(parts)
    return chains


def test_generate_problems_is_deterministic_varied_and_unique() -> None:
    problems = generate_problems(400, seed=0)
    assert problems == generate_problems(400, seed=0)
    assert problems != generate_problems(400, seed=1)
    assert len({p.problem for p in problems}) == 400
    assert {p.family for p in problems} == set(FAMILIES)
    assert generate_problems(50, seed=0, families=["linear"])[0].family == "linear"
    with pytest.raises(ValueError, match="unknown families"):
        generate_problems(1, families=["calculus"])


def test_sample_solution_is_deterministic() -> None:
    problems = generate_problems(50, seed=3)
    first = [sample_solution(p, random.Random(7)) for p in problems]
    assert first == [sample_solution(p, random.Random(7)) for p in problems]
    assert first != [sample_solution(p, random.Random(8)) for p in problems]


def test_gold_answers_are_right_and_well_formed() -> None:
    for p in generate_problems(1000, seed=1):
        value = gold_from_text(p)
        assert p.answer == format_answer(value), p
        assert re.fullmatch(r"-?\d+|\\frac\{\d+\}\{\d+\}", p.answer), p.answer
    assert format_answer(Fraction(-3, 4)) == "-\\frac{3}{4}"
    assert format_answer(Fraction(8, 4)) == "2"


def test_every_solution_is_correct_and_ends_with_the_boxed_gold() -> None:
    rng = random.Random(0)
    checked = 0
    for p in generate_problems(300, seed=2):
        for _ in range(6):
            solution = sample_solution(p, rng)
            assert solution.endswith(f"\\boxed{{{p.answer}}}."), solution
            assert solution.count("\\boxed") == 1
            for chain in equations(solution):
                values = {_eval(part) for part in chain}
                assert len(values) == 1, (p.problem, solution, chain)
                checked += 1
    assert checked > 3000  # the equation extractor really sees the intermediate steps


def test_math_verify_accepts_gold_in_solutions() -> None:
    math_verify = pytest.importorskip("math_verify")
    rng = random.Random(1)
    for p in generate_problems(40, seed=4):
        gold = math_verify.parse(f"${p.answer}$")
        answer = math_verify.parse(sample_solution(p, rng))
        assert math_verify.verify(gold, answer), (p.answer, answer)


def test_problems_have_many_distinct_solution_paths() -> None:
    rng = random.Random(0)
    problems = generate_problems(100, seed=5)
    distinct = [len({sample_solution(p, rng) for _ in range(30)}) for p in problems]
    assert sum(d >= 3 for d in distinct) >= 0.95 * len(problems)
    assert min(count_solution_paths(p) for p in problems) >= 100


def test_enumeration_matches_sampling_frequencies() -> None:
    grammar = ("a", one_of("b", ("c", one_of("d", "e")), weights=(3, 1)))
    assert enumerate_node(grammar) == pytest.approx({"ab": 0.75, "acd": 0.125, "ace": 0.125})
    assert count_paths(grammar) == 3
    rng = random.Random(0)
    draws = [sample_node(grammar, rng) for _ in range(8000)]
    assert draws.count("ab") / 8000 == pytest.approx(0.75, abs=0.03)
    p = Problem("Solve for x: 2x + 1 = 7.", "3", "linear", (2, 3, 1, 7))
    dist = solution_distribution(p)
    assert sum(dist.values()) == pytest.approx(1.0)
    assert len(dist) == count_solution_paths(p) == len(solution_paths(p))
    assert sample_solution(p, random.Random(0)) in dist


def test_trie_entropies_by_hand() -> None:
    # Paths a-b, a-c, d: root {a: 2/3, d: 1/3}; after a {b, c} uniform; leaves end surely.
    entropies, masses = trie_entropies([[1, 2], [1, 3], [4]])
    table = sorted(zip(entropies, masses, strict=True))
    h_root = -(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3)
    expected = sorted([(h_root, 1.0), (math.log(2), 2 / 3)] + [(0.0, 1 / 3)] * 3)
    assert [h for h, _ in table] == pytest.approx([h for h, _ in expected])
    assert [m for _, m in table] == pytest.approx([m for _, m in expected])


def test_exact_branching_equals_the_trie_of_all_paths(encode: Callable[[str], list[int]]) -> None:
    # Optional lines, shared first words and merged identical texts: what the automaton must get
    # exactly right. 486 paths are few enough for the brute-force trie.
    grammar = (
        one_of("", "Let us go.\n", "Go.\n"),
        one_of("Then 12 + 3", "12 + 3", "Then, 12 + 3"),
        one_of(" = 15.\n", " is 15.\n", " gives 15.\n"),
        one_of("", "Check: 15 - 3 = 12.\n", weights=(0.7, 0.3)),
        one_of("So", "Thus", "So"),
        one_of(" the answer is", " the result is", " we get"),
        " \\boxed{15}.",
    )
    dist = enumerate_node(grammar)
    for enc in (encode, lambda text: list(text.encode())):
        brute = BranchingStats(*trie_entropies([enc(t) for t in dist], list(dist.values())), 0.8)
        exact = grammar_branching(grammar, enc)
        assert exact.share_above == pytest.approx(brute.share_above, abs=1e-9)
        assert exact.share_zero == pytest.approx(brute.share_zero, abs=1e-9)
        assert exact.mean_entropy == pytest.approx(brute.mean_entropy, abs=1e-9)
        assert exact.positions == pytest.approx(brute.positions, abs=1e-9)
        assert 0 < exact.share_above < 1


def test_branching_property_under_the_trained_tokenizer(
    encode: Callable[[str], list[int]],
) -> None:
    problems = generate_problems(250, seed=11)
    per_problem = [measure_branching(p, encode) for p in problems]
    mean_share = sum(s.share_above for s in per_problem) / len(per_problem)
    pooled = pooled_branching(per_problem)
    # The paper sees 15-20% of positions above tau = 0.8; the ideal teacher here:
    assert 0.05 < mean_share < 0.40
    assert 0.05 < pooled.share_above < 0.40
    assert pooled.share_zero > 0.5  # most positions (digits, fixed phrases) are deterministic
    assert all(s.share_zero > 0 and s.share_above > 0 for s in per_problem)
    for family in FAMILIES:
        fam = pooled_branching(
            s for s, p in zip(per_problem, problems, strict=True) if p.family == family
        )
        assert fam.share_above > 0.05, family


def test_sampled_trie_estimate(encode: Callable[[str], list[int]]) -> None:
    p = generate_problems(5, seed=0)[0]
    sampled = measure_branching(p, encode, n_samples=300, seed=0)
    assert sampled == measure_branching(p, encode, n_samples=300, seed=0)
    # Few samples reach deep decisions, so a sample trie sees less branching than the ideal.
    assert 0 < sampled.share_above <= measure_branching(p, encode).share_above + 0.02


def test_non_compositional_tokenizer_is_refused() -> None:
    p = generate_problems(1, seed=0)[0]
    with pytest.raises(ValueError, match="not compositional"):
        measure_branching(p, lambda text: [len(text)])


def test_grammar_helpers_validate() -> None:
    with pytest.raises(ValueError):
        one_of("a", "b", weights=[1.0])
    with pytest.raises(ValueError, match="operands"):
        sample_solution(Problem("Compute 1 + 2.", "3", "add_sub"), random.Random(0))


def test_jsonl_round_trip(tmp_path: Path) -> None:
    problems = generate_problems(20, seed=9)
    path = write_jsonl(tmp_path / "sub" / "train.jsonl", problems, seed=0)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["problem"] for r in rows] == [p.problem for p in problems]
    assert all(r["solution"].endswith(f"\\boxed{{{r['answer']}}}.") for r in rows)
    assert read_jsonl(path) == problems
    bare = write_jsonl(tmp_path / "bare.jsonl", problems, with_solution=False)
    assert "solution" not in json.loads(bare.read_text().splitlines()[0])


def test_held_out_problems_are_the_pretraining_split() -> None:
    # The cached tiny models were graded on pretrain.held_out_problems; the benchmark must serve
    # the same problems, so the constants here must stay PretrainSettings' defaults.
    from eopd_ray.models.pretrain import PretrainSettings, training_problems
    from eopd_ray.models.pretrain import held_out_problems as pretrain_held_out

    settings = PretrainSettings()
    assert (settings.seed, settings.num_problems, settings.eval_problems) == (
        PRETRAIN_SEED,
        PRETRAIN_PROBLEMS,
        HELD_OUT_PROBLEMS,
    )
    held = held_out_problems(settings.difficulty)
    assert held == pretrain_held_out(settings)
    assert len({p.problem for p in held}) == HELD_OUT_PROBLEMS
    assert not {p.problem for p in held} & {p.problem for p in training_problems(settings)}


@pytest.mark.parametrize("difficulty", ["small", "easy"])
def test_training_problems_skip_the_held_out_ones_for_every_seed(difficulty: str) -> None:
    held = {p.problem for p in held_out_problems(difficulty)}
    overlapping = 0
    for seed in range(6):
        drawn = generate_problems(512, seed, difficulty=difficulty)
        kept = synthetic_training_problems(512, seed, difficulty)
        assert len(kept) == 512 and len({p.problem for p in kept}) == 512
        assert not held & {p.problem for p in kept}
        # the draw's order, held-out problems dropped and the gap filled from further along
        fresh = [p for p in drawn if p.problem not in held]
        assert kept[: len(fresh)] == fresh
        assert kept == synthetic_training_problems(512, seed, difficulty)  # deterministic
        overlapping += len(drawn) - len(fresh)
    assert overlapping > 0  # seed 1 alone draws 8 held-out "small" problems among its 512


def test_seed_zero_training_prompts_are_unchanged() -> None:
    # Seed 0's first problems are pre-training problems, none held out: the tiny preset's prompts
    # are what they were before held-out problems were excluded.
    assert synthetic_training_problems(512, 0, "small") == generate_problems(
        512, 0, difficulty="small"
    )
