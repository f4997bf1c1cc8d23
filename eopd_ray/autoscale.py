"""Sampler-pool autoscaling: grow when the learner starves, shrink when the buffer is full.

The signal (per training iteration, from the driver's own timings):

- **learner wait** = time the driver waited for a batch / the iteration's wall time. High: the
  samplers cannot keep up, the learner starves; one more sampler actor shortens the wait.
- **sampler busy** = summed ``generate`` seconds of the actors / (actors x wall time). Low while the
  learner does not wait: the buffer is full, admission control (``(η + 1) · batch_prompts`` groups
  admitted) holds the samplers back, and an actor can go.

:class:`ScalingPolicy` turns the two fractions into +1 / 0 / -1 with hysteresis (a signal must hold
``patience`` iterations in a row; the two thresholds leave a dead band) and a cooldown between
changes. :class:`SamplerScaler` applies the decisions to a ``SamplerPool``: growing first asks the
Ray autoscaler for the resources of the grown pool (``ray.autoscaler.sdk.request_resources``; on a
fixed cluster a no-op hint), then starts an actor that takes work once its engine is up; shrinking
drains an actor (no new work; its in-flight rollouts are collected as usual) and removes it only
when nothing of it is left uncollected, so no rollout is lost (these pool operations are in
``eopd_ray/autoscale_pool.py``). Every step returns ``autoscale/*`` metrics for metrics.jsonl /
TensorBoard.

Teacher replicas scale inside Ray Serve (``teacher_service.*`` autoscaling options);
:func:`serve_replicas` reads their count for the same metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from eopd_ray.config import SamplerAutoscaleConfig, SamplerConfig

if TYPE_CHECKING:
    from eopd_ray.autoscale_pool import PoolScaling


@dataclass(frozen=True)
class Signals:
    iteration_s: float  # wall time of the iteration
    wait_s: float  # the driver waited this long for a batch (learner starved)
    sampler_busy_s: float  # summed generate seconds of all actors in the iteration
    actors: int  # active actors during the iteration

    @property
    def wait_frac(self) -> float:
        return min(1.0, self.wait_s / self.iteration_s) if self.iteration_s > 0 else 0.0

    @property
    def busy_frac(self) -> float:
        capacity = self.actors * self.iteration_s
        return min(1.0, self.sampler_busy_s / capacity) if capacity > 0 else 0.0

    @classmethod
    def from_metrics(cls, metrics: dict[str, float], actors: int) -> Signals:
        return cls(
            iteration_s=float(metrics["time/iteration_s"]),
            wait_s=float(metrics["time/wait_for_batch_s"]),
            sampler_busy_s=float(metrics["time/sampler_busy_s"]),
            actors=actors,
        )


class ScalingPolicy:
    """Pure decision rule: ``decide(signals, size, now)`` -> +1 (grow), 0, -1 (shrink)."""

    def __init__(self, config: SamplerAutoscaleConfig, min_actors: int, max_actors: int) -> None:
        if not 1 <= min_actors <= max_actors:
            raise ValueError(f"need 1 <= min_actors <= max_actors, got {min_actors}, {max_actors}")
        self.config = config
        self.min_actors, self.max_actors = min_actors, max_actors
        self._streak = 0  # > 0: iterations in a row asking to grow; < 0: to shrink
        self._last_change: float | None = None

    def want(self, signals: Signals) -> int:
        """What this iteration alone asks for (no hysteresis, no bounds)."""
        c = self.config
        if signals.wait_frac >= c.grow_wait_frac:
            return 1
        if signals.wait_frac <= c.shrink_wait_frac and signals.busy_frac <= c.shrink_busy_frac:
            return -1
        return 0

    def decide(self, signals: Signals, size: int, now: float) -> int:
        want = self.want(signals)
        if want == 0 or (want > 0) != (self._streak > 0):
            self._streak = 0
        self._streak += want
        if abs(self._streak) < self.config.patience:
            return 0
        cooling = self._last_change is not None and now - self._last_change < self.config.cooldown_s
        if cooling:
            return 0
        if (want > 0 and size >= self.max_actors) or (want < 0 and size <= self.min_actors):
            return 0
        self._streak = 0
        self._last_change = now
        return want


def actor_bundle(config: SamplerConfig) -> dict[str, float]:
    """The resources one sampler actor reserves (for the autoscaler's resource request)."""
    bundle = {"CPU": config.num_cpus, "GPU": config.num_gpus, **config.resources}
    return {k: v for k, v in bundle.items() if v > 0}


def request_pool_resources(config: SamplerConfig, actors: int) -> None:
    """Ask the Ray autoscaler to make room for ``actors`` sampler actors (replaces the last ask)."""
    from ray.autoscaler.sdk import request_resources

    bundles = [actor_bundle(config)] * actors
    selectors = [dict(config.label_selector)] * actors if config.label_selector else None
    request_resources(bundles=bundles, bundle_label_selectors=selectors)


class SamplerScaler:
    """Applies :class:`ScalingPolicy` to a running ``SamplerPool`` once per training iteration."""

    def __init__(
        self,
        pool: PoolScaling,  # SamplerPool
        config: SamplerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        request: Callable[[SamplerConfig, int], None] = request_pool_resources,
    ) -> None:
        low, high = config.actor_range
        self.pool = pool
        self.config = config
        self.policy = ScalingPolicy(config.autoscale, low, high)
        self.clock = clock
        self._request = request
        self.added = 0
        self.removed = 0
        self.events: list[dict[str, float]] = []

    def step(self, metrics: dict[str, float]) -> dict[str, float]:
        """One decision from this iteration's metrics; returns the ``autoscale/*`` metrics."""
        self.pool.reap()  # drained actors whose rollouts were all collected
        self.pool.activate_ready()
        active = self.pool.size - self.pool.starting()
        signals = Signals.from_metrics(metrics, max(1, active))
        size = self.pool.size
        decision = self.policy.decide(signals, size, self.clock())
        if decision > 0:
            if self.config.autoscale.request_resources:
                self._request(self.config, size + 1)
            self.pool.add_actor()
            self.added += 1
        elif decision < 0:
            self.pool.remove_actor()
            self.removed += 1
            if self.config.autoscale.request_resources:
                self._request(self.config, size - 1)
        out = {
            "autoscale/sampler_decision": float(decision),
            "autoscale/sampler_actors": float(self.pool.size),
            "autoscale/sampler_draining": float(self.pool.draining()),
            "autoscale/sampler_added": float(self.added),
            "autoscale/sampler_removed": float(self.removed),
            "autoscale/learner_wait_frac": signals.wait_frac,
            "autoscale/sampler_busy_frac": signals.busy_frac,
        }
        if decision:
            self.events.append(out)
        return out


def serve_replicas(app_name: str) -> int:
    """Running replicas of the (single) deployment of Serve application ``app_name``."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return 0
    return sum(
        deployment.replica_states.get("RUNNING", 0) for deployment in app.deployments.values()
    )
