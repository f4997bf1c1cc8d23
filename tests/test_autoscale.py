"""The sampler-pool scaling policy (pure): thresholds, hysteresis, cooldown, bounds; its config."""

from __future__ import annotations

import pytest

from eopd_ray.autoscale import ScalingPolicy, Signals, actor_bundle
from eopd_ray.config import SamplerAutoscaleConfig, SamplerConfig, validate
from eopd_ray.config_io import ConfigError

STARVED = Signals(iteration_s=10.0, wait_s=6.0, sampler_busy_s=10.0, actors=1)
FULL = Signals(iteration_s=10.0, wait_s=0.1, sampler_busy_s=4.0, actors=2)  # busy 0.2
BALANCED = Signals(iteration_s=10.0, wait_s=1.0, sampler_busy_s=18.0, actors=2)


def policy(**overrides: float) -> ScalingPolicy:
    config = SamplerAutoscaleConfig(**{"patience": 2, "cooldown_s": 30.0, **overrides})
    return ScalingPolicy(config, min_actors=1, max_actors=3)


def test_signal_fractions() -> None:
    assert STARVED.wait_frac == pytest.approx(0.6)
    assert FULL.busy_frac == pytest.approx(0.2)
    assert Signals(0.0, 0.0, 0.0, 1).wait_frac == 0.0
    metrics = {"time/iteration_s": 4.0, "time/wait_for_batch_s": 1.0, "time/sampler_busy_s": 2.0}
    assert Signals.from_metrics(metrics, actors=2).busy_frac == pytest.approx(0.25)


def test_grows_only_after_patience_and_within_bounds() -> None:
    p = policy()
    assert p.want(STARVED) == 1 and p.want(FULL) == -1 and p.want(BALANCED) == 0
    assert p.decide(STARVED, size=1, now=0.0) == 0  # one iteration is not a trend
    assert p.decide(STARVED, size=1, now=1.0) == 1
    assert p.decide(STARVED, size=2, now=100.0) == 0  # the streak starts over after a change
    assert p.decide(STARVED, size=2, now=101.0) == 1
    assert p.decide(STARVED, size=3, now=200.0) == 0
    assert p.decide(STARVED, size=3, now=201.0) == 0  # at max_actors


def test_cooldown_and_hysteresis() -> None:
    p = policy()
    p.decide(STARVED, 1, 0.0)
    assert p.decide(STARVED, 1, 1.0) == 1
    p.decide(FULL, 2, 2.0)
    assert p.decide(FULL, 2, 3.0) == 0  # within cooldown_s of the last change
    assert p.decide(FULL, 2, 40.0) == -1
    # alternating signals never build a streak
    q = policy()
    for t in range(10):
        assert q.decide(STARVED if t % 2 else FULL, 2, 100.0 * t) == 0
    # the dead band between the thresholds asks for nothing
    assert q.decide(BALANCED, 2, 1e4) == 0 and q.decide(BALANCED, 2, 2e4) == 0


def test_shrink_needs_idle_samplers_and_stops_at_min() -> None:
    p = policy(cooldown_s=0.0)
    busy_but_fed = Signals(iteration_s=10.0, wait_s=0.1, sampler_busy_s=18.0, actors=2)
    assert p.want(busy_but_fed) == 0  # the learner is fed only because samplers work flat out
    p.decide(FULL, 1, 0.0)
    assert p.decide(FULL, 1, 1.0) == 0  # at min_actors


def test_actor_bundle_for_the_autoscaler() -> None:
    config = SamplerConfig(num_cpus=2, num_gpus=1, resources={"sampler_slot": 1})
    assert actor_bundle(config) == {"CPU": 2, "GPU": 1, "sampler_slot": 1}
    assert actor_bundle(SamplerConfig()) == {"CPU": 1.0}


def test_config_ranges_are_validated() -> None:
    assert SamplerConfig().actor_range == (1, 1)  # default: a fixed pool
    assert SamplerConfig(num_actors=2, min_actors=1, max_actors=4).actor_range == (1, 4)
    with pytest.raises(ConfigError, match="min_actors <= num_actors <= max_actors"):
        validate({"num_actors": 5, "max_actors": 4}, "test", SamplerConfig)
    with pytest.raises(ConfigError, match="shrink_wait_frac"):
        validate({"grow_wait_frac": 0.1, "shrink_wait_frac": 0.2}, "test", SamplerAutoscaleConfig)
    with pytest.raises(ValueError):
        ScalingPolicy(SamplerAutoscaleConfig(), min_actors=3, max_actors=2)
