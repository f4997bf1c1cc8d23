"""Mean ± std over seeds, paired / pooled differences and curve bands, by hand."""

from __future__ import annotations

import math

import pytest

from eopd_ray.compare.aggregate import curve, difference, mean_band, seed_stat


def test_seed_stat_is_mean_and_sample_std() -> None:
    stat = seed_stat({0: 1.0, 1: 2.0, 2: 4.0})
    assert stat is not None
    # mean 7/3; squared deviations 16/9 + 1/9 + 25/9 = 42/9, over n - 1 = 2 -> 7/3
    assert stat.mean == pytest.approx(7 / 3)
    assert stat.std == pytest.approx(math.sqrt(7 / 3))
    assert stat.n == 3


def test_seed_stat_skips_missing_seeds_and_has_no_std_for_one() -> None:
    stat = seed_stat({0: 0.5, 1: None, 2: float("nan")})
    assert stat is not None
    assert (stat.mean, stat.std, stat.n, stat.values) == (0.5, None, 1, {0: 0.5})
    assert seed_stat({0: None}) is None


def test_difference_pairs_common_seeds() -> None:
    diff = difference({0: 0.5, 1: 0.7, 2: 0.6}, {0: 0.4, 1: 0.5, 2: 0.6})
    assert diff is not None
    # per-seed deltas 0.1, 0.2, 0.0: mean 0.1, sample std sqrt((0 + 0.01 + 0.01) / 2) = 0.1
    assert diff.kind == "paired" and diff.n == 3
    assert diff.mean == pytest.approx(0.1)
    assert diff.spread == pytest.approx(0.1)


def test_difference_pools_when_seeds_do_not_pair() -> None:
    diff = difference({0: 1.0, 1: 3.0}, {2: 2.0, 3: 6.0})
    assert diff is not None
    # means 2 and 4; squared deviations 1 + 1 and 4 + 4 over 2 + 2 - 2 dof -> sqrt(5)
    assert (diff.kind, diff.n) == ("pooled", 4)
    assert diff.mean == pytest.approx(-2.0)
    assert diff.spread == pytest.approx(math.sqrt(5))
    # one common seed is no pairing either: means 2 and 2, ss 2 + 0 over 1 dof
    one = difference({0: 1.0, 1: 3.0}, {0: 2.0})
    assert one is not None and one.kind == "pooled"
    assert (one.mean, one.spread) == (pytest.approx(0.0), pytest.approx(math.sqrt(2)))


def test_difference_of_single_runs_has_no_spread() -> None:
    diff = difference({0: 1.0}, {0: 2.5})
    assert diff is not None
    assert (diff.mean, diff.spread, diff.kind) == (pytest.approx(-1.5), None, "paired")
    other = difference({0: 1.0}, {1: 2.5})
    assert other is not None
    assert (other.mean, other.spread, other.kind) == (pytest.approx(-1.5), None, "pooled")
    assert difference({0: None}, {0: 1.0}) is None


def test_curve_and_band_over_seeds() -> None:
    rows = [
        {"iteration": 0, "m": 1.0},
        {"iteration": 1, "m": None},
        {"iteration": 2},
        {"iteration": 3, "m": 2.0},
    ]
    assert curve(rows, "m") == {0: 1.0, 3: 2.0}
    its, mean, std = mean_band([{0: 1.0, 1: 2.0}, {0: 3.0, 2: 5.0}])
    assert its == [0, 1, 2]
    assert mean == pytest.approx([2.0, 2.0, 5.0])
    assert std == pytest.approx([math.sqrt(2), 0.0, 0.0])  # one seed: a band of no width
