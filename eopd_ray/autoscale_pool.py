"""The pool side of sampler autoscaling: start, activate, drain and remove sampler actors.

``eopd_ray/autoscale.py`` decides when the pool grows or shrinks (``ScalingPolicy``) and applies
the decisions (``SamplerScaler``) through the methods here, which ``PoolScaling`` gives
``SamplerPool`` (``eopd_ray/actors/sampler_pool.py``). An actor's life in the pool:

- ``add_actor``: *starting*, its engine loads while the others work;
- ``activate_ready`` (also run by every ``submit``): *active* once its engine is up, at the
  current weights and version, and takes work;
- ``remove_actor``: *draining*, takes no new work, finishes its in-flight generations;
- ``reap``: removed once none of its results are left uncollected, so no rollout is lost.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from eopd_ray.actors.pool_slots import Job, Slot
from eopd_ray.actors.sampler_remote import control


class PoolScaling:
    """Growing and shrinking of ``SamplerPool``; uses the pool's slots, jobs, latest weights and
    version and its ``_start_actor``."""

    _slots: list[Slot]
    _jobs: dict[Any, Job]
    _weights: Any  # latest pushed: the learner (collective), an ObjectRef or a path
    deliver: Callable[[int], None]
    finish_push: Callable[[], dict[str, Any]]
    _version: int
    _started: int  # actors ever started: the seed offset of the next one
    _start_actor: Callable[[int], Any]

    @property
    def size(self) -> int:
        """Actors that count towards the pool's size: active and starting (not draining)."""
        return sum(slot.state != "draining" for slot in self._slots)

    def add_actor(self) -> int:
        """Start one more actor without waiting; it takes work once its engine is up and has the
        current weights (``activate_ready``, called by ``submit``). Returns its index."""
        actor = self._start_actor(self._started)
        self._started += 1
        ready = control(actor, "ready").remote()
        self._slots.append(Slot(actor, state="starting", ready_ref=ready))
        return len(self._slots) - 1

    def activate_ready(self) -> int:
        """Make started actors whose engine is up active, at the current weights and version
        (those pushed while they started included); returns how many."""
        import ray

        activated = 0
        for index, slot in enumerate(self._slots):
            if slot.state != "starting" or not ray.wait([slot.ready_ref], timeout=0)[0]:
                continue
            ray.get(slot.ready_ref)  # a failed start raises here, in the driver
            self.deliver(index)  # the latest weights (eopd_ray/actors/weight_sync.py)
            slot.state, slot.ready_ref = "active", None
            activated += 1
        return activated

    def remove_actor(self, index: int | None = None) -> int:
        """Stop giving work to actor ``index`` (default: the newest active one) and let it finish
        its in-flight generations; ``reap`` removes it once nothing of it is left uncollected, so
        no rollout is lost. Returns the index."""
        if index is None:
            active = [i for i, slot in enumerate(self._slots) if slot.state == "active"]
            if len(active) <= 1:
                raise ValueError("cannot remove the last active sampler actor")
            index = active[-1]
        self._slots[index].state = "draining"
        return index

    def reap(self) -> int:
        """Shut down drained actors: draining, and none of their jobs left uncollected (results
        still owed to a caller keep the actor). Returns how many were removed."""
        import ray

        if any(slot.state == "draining" for slot in self._slots):
            self.finish_push()  # an overlapped push addresses actors by index: land it first
        removed = 0
        index = len(self._slots) - 1
        while index >= 0:
            slot = self._slots[index]
            owed = any(job.actor_index == index for job in self._jobs.values())
            if slot.state == "draining" and not owed:
                with contextlib.suppress(Exception):
                    ray.get(control(slot.actor, "shutdown").remote(), timeout=60)
                ray.kill(slot.actor, no_restart=True)
                del self._slots[index]
                for job in self._jobs.values():  # later slots move down by one
                    if job.actor_index > index:
                        job.actor_index -= 1
                removed += 1
            index -= 1
        return removed

    def draining(self) -> int:
        return sum(slot.state == "draining" for slot in self._slots)

    def starting(self) -> int:
        return sum(slot.state == "starting" for slot in self._slots)
