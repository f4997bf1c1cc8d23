"""What the rollout pipeline and the train loop need of each running role, as typing Protocols.

The roles are Ray actors and deployments behind driver-side objects: the sampler pool
(``eopd_ray/actors/sampler_pool.py``: ``SamplerPool``), the scoring stage, which is the teacher
service (``eopd_ray/actors/teacher_service.py``: ``TeacherService``) or, for GRPO, the reward
pool (``eopd_ray/actors/reward.py``: ``RewardScorer``), and the learner group
(``eopd_ray/learners/learner_group.py``: ``LearnerGroup``). Each Protocol lists exactly the
methods and attributes that ``RolloutPipeline`` (``eopd_ray/pipeline.py``) or the train loop
(``eopd_ray/train.py``) use, so another implementation (a test double, another engine) knows what
it must provide. They are for type checkers and readers only: nothing checks them at run time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from eopd_ray.rollout import Request, ScoredRollout

if TYPE_CHECKING:
    import os
    from pathlib import Path

    from ray.serve.handle import DeploymentHandle

    from eopd_ray.actors.stream import RolloutStream
    from eopd_ray.actors.weight_broadcast import WeightGroup


class RolloutSamplers(Protocol):
    """The sampler pool as ``RolloutPipeline`` uses it: asynchronous generation with replay."""

    @property
    def version(self) -> int:
        """The weights version new requests are generated at (or a newer one)."""
        ...

    def submit(
        self,
        requests: Sequence[Request],
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int = 256,
        seed: int | None = None,
    ) -> list[Any]:
        """Start generating; one ``ObjectRef`` of ``list[Rollout]`` per chunk of requests."""
        ...

    def job_requests(self, ref: Any) -> list[Request]:
        """The requests behind a ref of ``submit`` / ``resubmit``."""
        ...

    def resubmit(self, ref: Any) -> Any:
        """After the actor behind ``ref`` died: the same requests again; the replacement ref."""
        ...

    def forget(self, ref: Any) -> None:
        """Drop the bookkeeping of a ref whose result was collected."""
        ...

    def stream_of(self, ref: Any) -> RolloutStream | None:
        """Where the call behind ``ref`` reports finished requests early (None: it does not)."""
        ...


class SamplerRole(RolloutSamplers, Protocol):
    """The sampler pool as the train loop uses it, besides handing it to the pipeline."""

    # False: the rollouts do not depend on the student (kd replays the teacher's responses), so
    # the loop neither gathers nor pushes weights.
    needs_weights: bool

    def push_weights(
        self, weights: WeightSource | Any, version: int, overlap: bool = False
    ) -> dict[str, Any]:
        """Send new weights to every sampler and wait; the timings (``seconds`` at least).
        ``weights``: the learner (broadcast, or its state dict, per ``sampler.weight_sync``),
        or a state dict / its ``ObjectRef`` / a safetensors folder. ``overlap``: return once
        the learner's background send has started (``finish_push`` waits for it)."""
        ...

    def finish_push(self) -> dict[str, Any]:
        """Wait for an overlapped push still in flight; its timings (empty if none)."""
        ...

    def discard_push(self) -> None:
        """Forget an overlapped push whose learner was restarted."""
        ...

    def pop_stats(self) -> list[dict[str, float]]:
        """Per-call records of every sampler since the last pop (``seconds`` of each call)."""
        ...

    def shutdown(self) -> None: ...


class RolloutScorer(Protocol):
    """The scoring stage as ``RolloutPipeline`` uses it: a chunk's rollouts -> scored rollouts.

    ``chain`` returns at once: Ray runs the scoring as soon as the sampler's result exists, so it
    overlaps the learner's step without the driver. A failed chain is run again (same rollouts)
    when ``retryable`` says the scorer's replica or worker was gone, charged to the pipeline
    counter ``retry_counter``; any other failure is raised."""

    retry_counter: str  # e.g. "teacher_retries"

    def chain(self, rollouts_ref: Any, stream: RolloutStream | None = None) -> Any:
        """For an ``ObjectRef`` of ``list[Rollout]`` (one chunk, whole prompt groups in request
        order): an ``ObjectRef`` of ``list[ScoredRollout]``, in the same order. ``stream``: where
        the chunk's finished requests can be taken before the whole chunk is done."""
        ...

    def retryable(self, exc: BaseException) -> bool:
        """Whether ``exc`` (raised by ``ray.get`` of a ``chain`` ref) is the scorer's replica or
        worker being unavailable rather than an error of its code or input."""
        ...


class ScorerRole(RolloutScorer, Protocol):
    """The scoring stage as the train loop holds it: GRPO's reward pool (the teacher, which is
    more, is a :class:`TeacherRole`)."""

    def shutdown(self) -> None: ...


class TeacherRole(ScorerRole, Protocol):
    """The teacher as the train loop uses it."""

    # ``handle.remote(prompt_ids, response_ids)`` -> DeploymentResponse of TeacherScores
    handle: DeploymentHandle
    app_name: str  # the Serve application, for its replica count


class WeightSource(Protocol):
    """Where the sampler pool gets the student's weights from: the learner group."""

    def state_dict(self) -> Mapping[str, Any]:
        """The full weights, in Hugging Face checkpoint names (object-store and disk sync)."""
        ...

    def weight_group(
        self,
        world_size: int,
        backend: str,
        timeout_s: float,
        bucket_bytes: int,
        reuse: WeightGroup | None = None,
    ) -> WeightGroup:
        """A broadcast group of the source's rank 0 and ``world_size - 1`` receivers (``reuse``
        itself while the source still hosts it)."""
        ...

    def broadcast_weights(self, group: WeightGroup) -> dict[str, Any]:
        """Send the weights to ``group`` (receivers already waiting); ``error`` if one failed."""
        ...

    def stage_weights(self, group: WeightGroup) -> dict[str, float]:
        """Copy the current weights for a later ``start_weight_send`` (overlapped publication)."""
        ...

    def start_weight_send(self, group: WeightGroup) -> None:
        """Send the staged copy to ``group`` in the background; returns at once."""
        ...

    def join_weight_send(self) -> dict[str, Any]:
        """The background send's timings once done; ``error`` if a receiver failed."""
        ...


class LearnerRole(WeightSource, Protocol):
    """The learner group as the train loop uses it."""

    @property
    def version(self) -> int:
        """Completed training iterations (plus the starting version): the policy version."""
        ...

    def train_batch(self, batch: Sequence[ScoredRollout], *, mini_batches: int) -> dict[str, float]:
        """One training iteration on ``batch``; its metrics."""
        ...

    def save_checkpoint(self, folder: str | os.PathLike[str]) -> Path: ...

    def load_checkpoint(self, folder: str | os.PathLike[str]) -> int:
        """Restore a ``save_checkpoint`` folder; the restored version."""
        ...

    @property
    def consecutive_skipped(self) -> int:
        """Optimizer steps skipped in a row for a non-finite loss or gradient norm."""
        ...

    def restart(self, checkpoint: str | os.PathLike[str] | None = None) -> int:
        """A fresh group (after a worker died), from ``checkpoint`` if given; its version."""
        ...

    def shutdown(self) -> None: ...
