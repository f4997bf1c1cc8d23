"""math-verify scoring on real MATH-500 rows, in a child process with a hard time bound."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from eopd_ray.eval.benchmarks import load_benchmark
from eopd_ray.eval.config import BenchmarkSpec
from eopd_ray.eval.scoring import Verifier

# A tower of powers: sympy tries to evaluate it; only a timeout stops it.
PATHOLOGICAL = "\\boxed{9^{9^{9^{9}}}}"


@pytest.fixture(scope="module")
def math500() -> dict[str, str]:
    problems, skipped = load_benchmark(BenchmarkSpec(name="math500", source="math500"))
    assert not skipped
    return {p.id: p.gold for p in problems}


@pytest.fixture(scope="module")
def verifier() -> Iterator[Verifier]:
    with Verifier(timeout_s=2) as v:
        yield v


@pytest.mark.parametrize(
    ("row", "response", "expected"),
    [
        ("219", "so the probability is \\boxed{0.5}.", True),  # gold \frac{1}{2}
        ("219", "\\boxed{\\frac{2}{4}}", True),
        ("219", "\\boxed{\\dfrac12}", True),
        ("219", "\\boxed{0.6}", False),
        ("155", "\\boxed{0.25}", True),  # gold \frac{1}{4}
        ("7", "the angle is \\boxed{90}", True),  # gold 90^\circ
        ("8", "\\boxed{\\sqrt{117}}", True),  # gold 3\sqrt{13}
        ("8", "\\boxed{3\\sqrt{12}}", False),
        ("0", "\\boxed{(3, \\pi/2)}", True),  # gold \left( 3, \frac{\pi}{2} \right)
        ("0", "\\boxed{(3, \\pi)}", False),
        ("4", "\\boxed{Evelyn}", True),  # gold \text{Evelyn}
        ("1", "\\boxed{-q + p}", True),  # gold p - q
        ("1", "first \\boxed{p - q}, no wait: \\boxed{q - p}", False),  # the last box counts
    ],
)
def test_equivalent_forms_on_math500_rows(
    math500: dict[str, str], verifier: Verifier, row: str, response: str, expected: bool
) -> None:
    verdict = verifier.check(response, math500[row])
    assert verdict.correct is expected
    assert verdict.status == "verified"


def test_missing_and_unparsable_answers_count_as_wrong(
    math500: dict[str, str], verifier: Verifier
) -> None:
    gold = math500["219"]
    assert verifier.check("I think it is one half.", gold).status == "no_answer"
    assert verifier.check("\\boxed{}", gold).status == "no_answer"
    for garbage in ("\\boxed{\\frac{}{}}", "\\boxed{@#!}", "\\boxed{\\left(}"):
        assert verifier.check(garbage, gold).correct is False


def test_reference_solutions_verify_against_their_gold(math500: dict[str, str]) -> None:
    from eopd_ray.eval.benchmarks import _olmo_docs

    docs = _olmo_docs("math500")[:25]
    with Verifier(timeout_s=2) as v:
        verdicts = [v.check(doc["solution"], math500[str(doc["index"])]) for doc in docs]
    assert all(verdict.correct for verdict in verdicts)


def test_pathological_answer_is_bounded_and_wrong(verifier: Verifier) -> None:
    started = time.monotonic()
    verdict = verifier.check(PATHOLOGICAL, "1")
    assert time.monotonic() - started < verifier.hard_timeout_s + 1
    assert verdict.correct is False
    assert verifier.check("\\boxed{2}", "2").correct  # still serving


def test_hard_bound_kills_and_restarts_the_worker() -> None:
    # math-verify's own timeout far away: only the hard bound can stop the pathological answer.
    with Verifier(timeout_s=120, hard_timeout_s=2) as v:
        assert v.check("\\boxed{1}", "1").correct  # worker up (start-up not counted below)
        started = time.monotonic()
        verdict = v.check(PATHOLOGICAL, "1")
        assert time.monotonic() - started < 4
        assert verdict == verdict.__class__(False, "9^{9^{9^{9}}}", "killed")
        assert v.restarts == 1
        assert v.check("\\boxed{0.5}", "\\frac{1}{2}").correct  # a fresh worker takes over


def test_works_off_the_main_thread(math500: dict[str, str], verifier: Verifier) -> None:
    # math-verify's signal timeouts fail off the main thread; the child process has its own.
    results: list[bool] = []
    thread = threading.Thread(
        target=lambda: results.append(verifier.check("\\boxed{0.5}", math500["219"]).correct)
    )
    thread.start()
    thread.join(60)
    assert results == [True]
