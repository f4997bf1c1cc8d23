"""pass_at_k / avg_at_k against hand-computed values and brute-force enumeration; summarize."""

import itertools
import math

import numpy as np
import pytest

from eopd_ray.eval.metrics import (
    avg_at_k,
    default_ks,
    entropy_edges,
    entropy_histogram,
    pass_at_k,
    summarize,
)


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (2, 1, 1, 0.5),  # one of two samples right
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
        (8, 0, 8, 0.0),
        (8, 8, 1, 1.0),
        (8, 1, 8, 1.0),  # k = n: any correct sample is in the only subset
        (8, 4, 5, 1.0),  # n - c < k
        (1000, 1, 1, 0.001),
    ],
)
def test_pass_at_k_hand_computed(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def brute_force(n: int, c: int, k: int) -> float:
    """Share of all k-subsets of n samples (the first c correct) with a correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 10])
def test_pass_at_k_matches_enumeration(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force(n, c, k), abs=1e-12)


def test_pass_at_k_large_n_is_stable() -> None:
    # C(1024, 512) overflows a float; the product form does not need it.
    expected = 1 - math.comb(1000, 512) / math.comb(1024, 512)
    assert pass_at_k(1024, 24, 512) == pytest.approx(expected, rel=1e-9)
    assert 0.0 < pass_at_k(128, 1, 8) < 1.0
    assert pass_at_k(128, 1, 8) == pytest.approx(8 / 128)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)])
def test_pass_at_k_rejects_bad_arguments(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_avg_at_k() -> None:
    assert avg_at_k([True, False, False, True, True, False, False, False]) == 3 / 8
    assert avg_at_k([0, 0]) == 0.0
    with pytest.raises(ValueError):
        avg_at_k([])


def test_default_ks() -> None:
    assert default_ks(8) == [1, 2, 4, 8]
    assert default_ks(128) == [1, 2, 4, 8, 16, 32, 64, 128]
    assert default_ks(6) == [1, 2, 4, 6]
    assert default_ks(1) == [1]


def test_entropy_histogram_puts_overflow_in_last_bin() -> None:
    edges = entropy_edges(0.5, 2.0)
    assert np.allclose(edges, [0.0, 0.5, 1.0, 1.5, 2.0])
    assert entropy_histogram([0.1, 0.6, 0.7, 1.9, 2.0, 7.5], edges) == [1, 2, 0, 3]


def test_summarize_two_problems() -> None:
    records = [
        {
            "id": "a",
            "correct": [True, False, False, False],
            "lengths": [10, 20, 30, 40],
            "finish_reasons": ["stop", "stop", "length", "stop"],
            "entropy_counts": [3, 1],
            "entropy_high": 1,
        },
        {
            "id": "b",
            "correct": [True, True, False, False],
            "lengths": [5, 5, 5, 5],
            "finish_reasons": ["stop"] * 4,
            "entropy_counts": [2, 2],
            "entropy_high": 2,
        },
        {"id": "c", "skipped": "no gold answer"},
    ]
    out = summarize(records)
    assert out["problems"] == 2 and out["skipped"] == 1 and out["samples"] == 4
    assert out["avg_at_k"] == pytest.approx((0.25 + 0.5) / 2)
    # Pass@2: problem a 1 - C(3,2)/C(4,2) = 0.5; b 1 - C(2,2)/C(4,2) = 5/6
    assert out["pass_at_k"]["2"] == pytest.approx((0.5 + 5 / 6) / 2)
    assert out["pass_at_k"]["4"] == 1.0
    assert set(out["pass_at_k"]) == {"1", "2", "4"}
    assert out["mean_response_tokens"] == pytest.approx(120 / 8)
    assert out["truncated"] == pytest.approx(1 / 8)
    assert out["entropy_counts"] == [5, 3] and out["entropy_tokens"] == 8
    assert out["high_entropy_fraction"] == pytest.approx(3 / 8)
