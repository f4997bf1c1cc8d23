"""The teacher's Ray Serve deployment: one :class:`~eopd_ray.actors.teacher.TeacherModel` per
replica, concurrent requests gathered into one padded forward.

:func:`deployment_options` turns a ``TeacherServiceConfig`` into resources and replica scaling;
the driver-side client that deploys and calls it is ``eopd_ray/actors/teacher_service.py``.
Importing this module starts nothing (``ray.serve`` is imported: the class is declared with
``@serve.deployment``); the model is loaded in the replica.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import uuid
from typing import TYPE_CHECKING, Any

from ray import serve

from eopd_ray.actors.teacher import TeacherModel
from eopd_ray.ray_env import role_placement
from eopd_ray.rollout import TeacherScores

if TYPE_CHECKING:
    from eopd_ray.config import TeacherServiceConfig

__all__ = ["TeacherDeployment", "deployment_options", "unique_app_name"]


@serve.deployment(name="TeacherDeployment")
class TeacherDeployment:
    """One teacher replica. Concurrent :meth:`score` calls are gathered by ``@serve.batch`` into
    one padded forward (up to ``max_batch_size`` requests, waiting at most
    ``batch_wait_timeout_s`` for a batch to fill); the forward runs in a worker thread so the
    replica stays responsive. Each request is validated on its own first, so a bad request fails
    alone instead of failing the batch it would have joined."""

    def __init__(
        self,
        path: str,
        dtype: str,
        top_k: int,
        chunk_size: int,
        vocab_limit: int | None,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        fp32_head: bool = False,
    ) -> None:
        self.model = TeacherModel(path, dtype, top_k, chunk_size, vocab_limit, fp32_head=fp32_head)
        # The decorator's arguments are defaults; the configured values are set per replica.
        self._score_batch.set_max_batch_size(max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._batch_sizes: list[int] = []
        self._replica = _replica_name()
        self._tokens_scored = 0
        self._busy_s = 0.0

    async def score(self, prompt_ids: list[int], response_ids: list[int]) -> TeacherScores:
        """The teacher's statistics of one response (batched with concurrent calls)."""
        self.model.validate(prompt_ids, response_ids)
        return await self._score_batch(prompt_ids, response_ids)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _score_batch(
        self, prompt_ids: list[list[int]], response_ids: list[list[int]]
    ) -> list[TeacherScores]:
        self._batch_sizes.append(len(prompt_ids))
        start, wall = time.perf_counter(), time.time()
        requests = list(zip(prompt_ids, response_ids, strict=True))
        results = await asyncio.to_thread(self.model.score_batch, requests)
        self._busy_s += time.perf_counter() - start
        self._tokens_scored += sum(len(p) + len(r) for p, r in requests)
        span = (self._replica, wall, time.time(), len(requests))  # for the run's trace
        return [dataclasses.replace(r, forward_span=span) for r in results]

    def info(self) -> dict[str, Any]:
        """Vocabulary and scoring settings of the teacher (``TeacherModel.info``)."""
        return self.model.info()

    def stats(self) -> dict[str, Any]:
        """This replica's batch sizes seen so far, tokens prefilled and seconds spent scoring."""
        return {
            "batch_sizes": list(self._batch_sizes),
            "tokens_scored": self._tokens_scored,
            "busy_s": self._busy_s,
        }


def _replica_name() -> str:
    """This replica's short id (Serve's replica id; the pid outside Serve)."""
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # constructed directly (tests), not by Serve
        return str(os.getpid())


def deployment_options(service: TeacherServiceConfig) -> dict[str, Any]:
    """``TeacherDeployment.options(...)`` for a service config: resources and replica scaling.

    A fixed ``num_replicas`` when min == max, else Serve autoscaling on ongoing requests. Each
    replica accepts two batches' worth of requests, so the next batch fills while one runs."""
    options: dict[str, Any] = {
        "ray_actor_options": role_placement(
            service.num_cpus, service.num_gpus, service.resources, service.label_selector
        ),
        "max_ongoing_requests": 2 * service.max_batch_size,
    }
    if service.min_replicas == service.max_replicas:
        options["num_replicas"] = service.min_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": service.min_replicas,
            "initial_replicas": service.min_replicas,
            "max_replicas": service.max_replicas,
            "target_ongoing_requests": service.target_ongoing_requests,
            "upscale_delay_s": service.upscale_delay_s,
            "downscale_delay_s": service.downscale_delay_s,
            "look_back_period_s": service.look_back_period_s,
        }
    return options


def unique_app_name(prefix: str = "eopd-teacher") -> str:
    """``prefix`` plus 8 random hex digits: a Serve application name no other run is using."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
