"""The learner group as the sampler pool's weight source (collective weight sync).

``LearnerGroup`` (``eopd_ray/learners/learner_group.py``) inherits these methods: rank 0 hosts
the broadcast groups' rendezvous (``open_weight_sender``), ``broadcast_weights`` sends straight
from the training engine and blocks, and the overlapped publication of η >= 1 runs in three
steps: ``stage_weights`` (a copy of this version, every rank: ZeRO-3 gathers),
``start_weight_send`` (rank 0 sends the copy from a background thread, so the next
``train_batch`` may run meanwhile) and ``join_weight_send``. The protocol is
``eopd_ray.roles.WeightSource``; the sender itself: ``eopd_ray/actors/weight_broadcast.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from eopd_ray.actors.weight_broadcast import TensorSpec, WeightGroup

if TYPE_CHECKING:
    from eopd_ray.config import LearnerConfig
    from eopd_ray.learners.worker_group import WorkerGroup


class LearnerWeights:
    """The weight-source half of ``LearnerGroup``: uses its worker group and settings."""

    name: str
    learner: LearnerConfig
    command_timeout_s: float
    _group: WorkerGroup
    _sender: tuple[str, int, tuple[TensorSpec, ...]] | None  # rank 0's store and what it sends

    _check_usable: Callable[[], None]
    _call: Callable[..., list[Any]]  # (method, args): method(*args) on every rank

    def weight_group(
        self,
        world_size: int,
        backend: str,
        timeout_s: float,
        bucket_bytes: int,
        reuse: WeightGroup | None = None,
    ) -> WeightGroup:
        """A broadcast group of rank 0 and ``world_size - 1`` engine workers (collective weight
        sync, ``eopd_ray/actors/weight_broadcast.py``); rank 0 hosts its rendezvous. ``reuse``
        is returned when these workers (not restarted since) host it and its size fits."""
        self._check_usable()
        if self._sender is None:
            self._sender = self._call("open_weight_sender")[0]
        host, port, specs = self._sender
        if reuse is not None and (reuse.host, reuse.port, reuse.world_size) == (
            host, port, world_size,
        ):  # fmt: skip
            return reuse
        backend = backend if self.learner.use_gpu else "gloo"  # NCCL needs GPUs on both sides
        name = f"{self.name}-{uuid.uuid4().hex[:8]}"
        return WeightGroup(name, host, port, world_size, backend, timeout_s, specs, bucket_bytes)

    def broadcast_weights(self, group: WeightGroup) -> dict[str, Any]:
        """Broadcast the current weights to ``group``'s members (who must be receiving); rank
        0's timings, or ``error`` when a receiver failed (the learners themselves are fine)."""
        self._check_usable()
        return self._call("broadcast_weights", (group,))[0]

    def stage_weights(self, group: WeightGroup) -> dict[str, float]:
        """Overlapped publication, step 1: rank 0 copies the current weights (bucketed for
        ``group``; ZeRO-3 ranks gather), so that the next step may run while they are sent."""
        self._check_usable()
        return self._call("stage_weights", (group,))[0]

    def start_weight_send(self, group: WeightGroup) -> None:
        """Step 2: rank 0 broadcasts the staged copy to ``group`` from a background thread."""
        self._check_usable()
        self._group.call_rank(
            0, "start_weight_send", group, timeout_s=self.command_timeout_s, what="weight send"
        )

    def join_weight_send(self) -> dict[str, Any]:
        """Step 3: the send's timings once it is done (``error`` when a receiver failed)."""
        self._check_usable()
        return self._group.call_rank(
            0, "join_weight_send", timeout_s=self.command_timeout_s, what="weight send"
        )
