"""The teacher's driver-side client: deploy :class:`TeacherDeployment`, score rollouts, shut down.

:class:`TeacherService` is what the rollout pipeline and the train loop hold as the teacher
(``eopd_ray/roles.py``): the pipeline's scoring stage (``chain``: a Ray task,
:func:`_score_rollouts`, sends every rollout of a sampler's chunk to the deployment once the chunk
exists) and the handle for single requests. The deployment itself is
``eopd_ray/actors/teacher_deployment.py``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import ray
from ray import serve

from eopd_ray.actors.stream import POLL_S, RolloutStream
from eopd_ray.actors.teacher_deployment import TeacherDeployment, deployment_options
from eopd_ray.errors import root_cause
from eopd_ray.rollout import Rollout, ScoredRollout, TeacherScores

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle, DeploymentResponse

    from eopd_ray.config import ModelConfig, TeacherServiceConfig

__all__ = ["TeacherService"]

# Failures of the teacher's replicas (killed, restarting) rather than of its code: the chunk's
# rollouts are scored again (the pipeline bounds how often).
_TEACHER_UNAVAILABLE = ("RayActorError", "ActorDiedError", "ActorUnavailableError",
                        "DeploymentUnavailableError", "BackPressureError")  # fmt: skip


def _score_rollouts(
    boxed: list[ray.ObjectRef], teacher_handle: Any, stream: RolloutStream | None
) -> list[ScoredRollout]:
    """Ray task body: score a chunk's rollouts on the teacher (requests batched by Serve).

    ``boxed``: ``[the sampler's ObjectRef]`` (in a list, so that Ray does not wait for it before
    the task starts). With ``stream``, each request's rollouts go to the teacher as soon as the
    sampler reports them finished (``eopd_ray/actors/stream.py``); the result is built from the
    call's final rollouts either way, in their order."""
    (sampler_ref,) = boxed
    started: float | None = None  # the first request to the teacher: its time, not sampling's
    early: dict[tuple[int, int], tuple[list[int], Any]] = {}  # (request, sample) -> response
    while stream is not None:
        done, _ = ray.wait([sampler_ref], timeout=POLL_S)
        for index, rollouts in ray.get(stream.take_ref()):
            started = started or time.perf_counter()
            for r in rollouts:
                early[index, r.sample_index] = (r.response_ids, _score(teacher_handle, r))
        if done:
            break
    rollouts = ray.get(sampler_ref)  # a dead sampler fails the chunk here, as without a stream
    started = started or time.perf_counter()
    responses, index = [], -1
    for r in rollouts:  # request order, samples 0..n-1 of each request together
        index += r.sample_index == 0
        sent = early.get((index, r.sample_index))
        same = sent is not None and sent[0] == r.response_ids
        responses.append(sent[1] if same else _score(teacher_handle, r))
    scores = [response.result() for response in responses]
    seconds = time.perf_counter() - started
    return [
        ScoredRollout(r, s, {"teacher_s": seconds / max(len(rollouts), 1)})
        for r, s in zip(rollouts, scores, strict=True)
    ]


def _score(teacher_handle: Any, rollout: Rollout) -> Any:
    return teacher_handle.remote(rollout.prompt_ids, rollout.response_ids)


# No CPU of its own (it waits on the deployment); no Ray retries: the pipeline decides.
_SCORE_TASK = ray.remote(num_cpus=0, max_retries=0)(_score_rollouts)


class TeacherService:
    """A running teacher Serve application, seen from sync driver code.

    ``score(rollout)`` returns a :class:`DeploymentResponse` at once. To wait on teacher results
    together with other Ray work (sampler refs, learner refs), turn responses into ObjectRefs with
    :meth:`to_ref` (Serve's ``DeploymentResponse._to_object_ref_sync``, a DeveloperAPI in Ray 2.60)
    and ``ray.wait`` on everything in flight; ``ray.get`` of such a ref is a TeacherScores. Note
    that ``to_ref`` blocks until the request is assigned to a replica: immediate while replicas
    have free slots (``max_ongoing_requests`` = 2 x max_batch_size each), otherwise until one frees
    up, a natural back-pressure on the driver. :meth:`results` simply waits for many responses.
    """

    retry_counter = "teacher_retries"

    def __init__(self, handle: DeploymentHandle, app_name: str, info: dict[str, Any]) -> None:
        self.handle = handle
        self.app_name = app_name
        self.info = info  # TeacherModel.info() of a replica
        self.startup_s: float | None = None

    @classmethod
    def start(
        cls,
        teacher: ModelConfig,
        service: TeacherServiceConfig,
        top_k: int,
        app_name: str = "eopd-teacher",
        vocab_limit: int | None = None,
        fp32_head: bool = False,
    ) -> TeacherService:
        """Deploy the teacher as Serve application ``app_name`` and block until it is running.

        Ray must be initialised. Serve is started without an HTTP proxy if it is not running yet
        (the teacher is reached through handles only). ``vocab_limit``:
        ``check_shared_vocabulary(...).scoring_vocab_size``; ``fp32_head``: see TeacherModel."""
        begin = time.perf_counter()
        serve.start(proxy_location="Disabled")
        app = TeacherDeployment.options(**deployment_options(service)).bind(
            teacher.path,
            teacher.dtype,
            top_k,
            service.chunk_size,
            vocab_limit,
            service.max_batch_size,
            service.batch_wait_timeout_s,
            fp32_head,
        )
        handle = serve.run(app, name=app_name, route_prefix=None)
        info = handle.info.remote().result()
        # By reference, so that responses can become ObjectRefs (to_ref) whatever the defaults.
        out = cls(handle.options(method_name="score", _by_reference=True), app_name, info)
        out.startup_s = time.perf_counter() - begin
        return out

    def chain(
        self, rollouts_ref: ray.ObjectRef, stream: RolloutStream | None = None
    ) -> ray.ObjectRef:
        """The pipeline's scoring stage: an ObjectRef of the chunk's ``list[ScoredRollout]``;
        with ``stream`` each request is scored as soon as it has finished."""
        return _SCORE_TASK.remote([rollouts_ref], self.handle, stream)

    @staticmethod
    def retryable(exc: BaseException) -> bool:
        """Whether a failed :meth:`chain` met an unavailable replica (score again), not a bug."""
        cause, _ = root_cause(exc)
        return type(exc).__name__ in _TEACHER_UNAVAILABLE or (
            type(cause).__name__ in _TEACHER_UNAVAILABLE
        )

    def score_ids(
        self, prompt_ids: Sequence[int], response_ids: Sequence[int]
    ) -> DeploymentResponse:
        return self.handle.remote(list(prompt_ids), list(response_ids))

    def score(self, rollout: Rollout) -> DeploymentResponse:
        """Non-blocking: a response whose result is the rollout's :class:`TeacherScores`."""
        return self.score_ids(rollout.prompt_ids, rollout.response_ids)

    @staticmethod
    def to_ref(response: DeploymentResponse, timeout_s: float | None = None) -> ray.ObjectRef:
        """The response as an ObjectRef for ``ray.wait`` / ``ray.get`` (see the class doc)."""
        return response._to_object_ref_sync(_timeout_s=timeout_s)

    def score_ref(self, rollout: Rollout) -> ray.ObjectRef:
        return self.to_ref(self.score(rollout))

    @staticmethod
    def results(
        responses: Sequence[DeploymentResponse], timeout_s: float | None = None
    ) -> list[TeacherScores]:
        """Wait for all responses (in order); ``timeout_s`` bounds the whole wait."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        out = []
        for response in responses:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                out.append(response.result(timeout_s=left))
            except TimeoutError as exc:
                raise TimeoutError(f"teacher results not ready within {timeout_s} s") from exc
        return out

    def stats(self) -> dict[str, Any]:
        """Batch sizes and timing of the replica that answers (one replica's view)."""
        return self.handle.options(method_name="stats").remote().result()

    def shutdown(self) -> None:
        """Delete this application (Serve itself keeps running for other applications)."""
        serve.delete(self.app_name)
