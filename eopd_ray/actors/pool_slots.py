"""The sampler pool's bookkeeping: one slot per sampler actor, one job per ``generate`` in flight.

Shared by the pool's dispatch (``eopd_ray/actors/sampler_pool.py``), its weight publication
(``eopd_ray/actors/weight_sync.py``) and its scaling (``eopd_ray/autoscale_pool.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eopd_ray.actors.stream import RolloutStream
from eopd_ray.rollout import Request


@dataclass
class Job:
    """One ``generate`` call in flight: enough to run it again on another actor."""

    actor_index: int
    requests: list[Request]
    kwargs: dict[str, Any]
    attempts: int = 1
    stream: RolloutStream | None = None  # where its finished requests can be taken early


@dataclass
class Slot:
    """One sampler actor of the pool and what the pool knows about it."""

    actor: Any
    generation: int = 0  # bumped at each restart
    in_flight: set[Any] = field(default_factory=set)
    # active: takes work; starting: engine loading (add_actor); draining: finishes its in-flight
    # work, takes no new work, then is removed (remove_actor / reap)
    state: str = "active"
    ready_ref: Any = None
