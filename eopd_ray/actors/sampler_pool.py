"""The sampler pool: several ``SamplerActor`` engines behind one interface, and their recovery.

``SamplerPool`` starts ``SamplerConfig.num_actors`` sampler actors (``eopd_ray/actors/sampler.py``),
spreads prompt batches over them (least busy first), collects the rollouts and replaces dead
actors at the current weights, replaying their requests. Weight publication
(``push_weights``) comes from ``eopd_ray/actors/weight_sync.py`` and the scaling methods
(``add_actor``, ``remove_actor``, ...) from ``eopd_ray/autoscale_pool.py``. Nothing from Ray or
vLLM is imported when this module is imported.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eopd_ray.actors.pool_slots import Job, Slot
from eopd_ray.actors.sampler_remote import control, sampler_actor_options, start_sampler_actor
from eopd_ray.actors.stream import RolloutStream
from eopd_ray.actors.weight_sync import WeightPublisher
from eopd_ray.autoscale_pool import PoolScaling
from eopd_ray.rollout import Request, Rollout

if TYPE_CHECKING:
    from eopd_ray.config import RunConfig, SamplerConfig


class SamplerPool(PoolScaling, WeightPublisher):
    """``num_actors`` sampler actors behind one interface.

    - ``submit(requests, ...)`` splits a request list over the actors (least busy first) and
      returns one ``ObjectRef`` (of ``list[Rollout]``) per chunk. Collect them with ``get(refs)``
      (blocking, in order), ``wait(refs)`` (``ray.wait``-like, for the asynchronous driver) or
      ``generate`` (submit + get); all three transparently replay the chunk of an actor that died.
    - ``push_weights`` sends a state dict (``ray.put`` once, the ref goes to every actor) or a
      safetensors folder to all actors and waits for them; in-flight generations pick the update up
      between two steps (see ``eopd_ray/actors/sampler.py``).
    - Fault handling: actors run with ``max_restarts=0``; the pool restarts them itself so that a
      fresh actor gets the *current* weights and version before it receives work (Ray's own restart
      would bring the actor back at the initial checkpoint with version 0). A driver that calls
      ``ray.get`` on refs itself handles a ``RayActorError`` with ``resubmit(ref)`` (restart the
      actor, same requests, new ref) or ``recover(ref)`` (restart the actor, get the requests back
      to re-queue), and calls ``forget(ref)`` after a success.
    """

    needs_weights = True  # its engines sample the student: every new version is pushed

    def __init__(
        self,
        config: SamplerConfig,
        model_path: str,
        *,
        dtype: str = "float32",
        seed: int = 0,
        sync_dir: str | Path | None = None,
        actor_kwargs: Mapping[str, Any] | None = None,
        max_attempts: int = 3,
        wait: bool = True,
    ) -> None:
        self.config = config
        self.model_path = str(model_path)
        self.dtype = dtype
        self.seed = seed
        self.sync_dir = Path(sync_dir) if sync_dir is not None else None
        self.actor_kwargs = dict(actor_kwargs or {})
        self.max_attempts = max_attempts
        self._version = 0
        self._weights: Any = None  # latest pushed: the learner (collective), a ref or a path
        self._jobs: dict[Any, Job] = {}
        self._slots = [Slot(self._start_actor(i)) for i in range(config.num_actors)]
        self._started = config.num_actors  # actors ever started: seeds of added actors
        self.ready_info: list[dict[str, Any]] = []
        self.restarts = 0
        if wait:
            self.wait_ready()

    @classmethod
    def from_run_config(cls, config: RunConfig, **kwargs: Any) -> SamplerPool:
        """A pool over ``config.student`` with ``config.sampler``'s resources."""
        kwargs.setdefault("dtype", config.student.dtype)
        kwargs.setdefault("seed", config.seed)
        kwargs.setdefault("sync_dir", Path(config.output_dir) / "sampler-weights")
        return cls(config.sampler, config.student.path, **kwargs)

    # ------------------------------------------------------------------ actors
    def _start_actor(self, index: int) -> Any:
        cfg = self.config
        kwargs = {
            "dtype": self.dtype,
            "max_model_len": cfg.max_model_len,
            "kv_cache_gib": cfg.kv_cache_gib,
            "gpu_memory_utilization": cfg.gpu_memory_utilization,
            "tensor_parallel_size": cfg.tensor_parallel_size,
            "enforce_eager": cfg.enforce_eager,
            "version": self._version,
            "seed": self.seed + index,
        }
        kwargs.update(self.actor_kwargs)
        return start_sampler_actor(self.model_path, sampler_actor_options(cfg), **kwargs)

    def wait_ready(self) -> list[dict[str, Any]]:
        """Block until every actor's engine is up; returns their ``ready()`` facts."""
        import ray

        try:
            self.ready_info = ray.get([control(s.actor, "ready").remote() for s in self._slots])
        except ray.exceptions.RayActorError as exc:
            self.shutdown()
            lines = [line for line in str(exc).splitlines() if line.strip()]
            cause = lines[-1] if lines else type(exc).__name__  # the creation task's exception
            raise RuntimeError(f"a sampler actor failed to start: {cause}") from exc
        return self.ready_info

    @property
    def num_actors(self) -> int:
        return len(self._slots)

    @property
    def actors(self) -> list[Any]:
        return [s.actor for s in self._slots]

    @property
    def version(self) -> int:
        return self._version

    def restart(self, index: int) -> dict[str, Any]:
        """Replace actor ``index`` by a fresh one at the current weights and version."""
        import ray

        old = self._slots[index].actor
        # A live actor (e.g. a hung one) releases its engine before it is killed.
        with contextlib.suppress(Exception):
            ray.get(control(old, "shutdown").remote(), timeout=10)
        ray.kill(old, no_restart=True)
        actor = self._start_actor(index)
        info = ray.get(control(actor, "ready").remote())
        slot = self._slots[index]
        slot.actor, slot.generation, slot.in_flight = actor, slot.generation + 1, set()
        self.deliver(index)  # the latest weights, before it takes work
        self.restarts += 1
        return info

    def _is_alive(self, index: int) -> bool:
        import ray

        try:
            ray.get(control(self._slots[index].actor, "version").remote(), timeout=30)
            return True
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return False

    # ------------------------------------------------------------------ generation
    def _least_busy(self, k: int) -> list[int]:
        import ray

        self.activate_ready()
        for slot in self._slots:
            if slot.in_flight:
                refs = list(slot.in_flight)
                _, pending = ray.wait(refs, num_returns=len(refs), timeout=0)
                slot.in_flight = set(pending)
        active = [i for i, slot in enumerate(self._slots) if slot.state == "active"]
        return sorted(active, key=lambda i: len(self._slots[i].in_flight))[:k]

    def _launch(self, job: Job) -> Any:
        slot = self._slots[job.actor_index]
        job.stream = RolloutStream(slot.actor, uuid.uuid4().hex)  # one per call, retries too
        ref = slot.actor.generate.remote(job.requests, stream_id=job.stream.stream_id, **job.kwargs)
        slot.in_flight.add(ref)
        self._jobs[ref] = job
        return ref

    def stream_of(self, ref: Any) -> RolloutStream | None:
        """Where the finished requests of the call behind ``ref`` can be taken early."""
        job = self._jobs.get(ref)
        return job.stream if job is not None else None

    def submit(
        self,
        requests: Sequence[Request],
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int = 256,
        seed: int | None = None,
    ) -> list[Any]:
        """Split ``requests`` into one contiguous chunk per actor; one ref per chunk, in order."""
        requests = list(requests)
        if not requests:
            return []
        kwargs = {
            "n": n,
            "temperature": temperature,
            "top_p": top_p,
            "max_tokens": max_tokens,
            "seed": seed,
        }
        indices = self._least_busy(min(len(self._slots), len(requests)))
        size, extra = divmod(len(requests), len(indices))
        refs, start = [], 0
        for j, index in enumerate(indices):
            end = start + size + (1 if j < extra else 0)
            refs.append(self._launch(Job(index, requests[start:end], kwargs)))
            start = end
        return refs

    def job_requests(self, ref: Any) -> list[Request]:
        """The requests behind a ref returned by ``submit`` / ``resubmit``."""
        return self._jobs[ref].requests

    def _pop_job(self, ref: Any) -> Job | None:
        job = self._jobs.pop(ref, None)
        if job is not None:
            self._slots[job.actor_index].in_flight.discard(ref)
        return job

    def forget(self, ref: Any) -> None:
        """Drop the bookkeeping of a ref whose result the caller got with ``ray.get`` itself."""
        self._pop_job(ref)

    def recover(self, ref: Any) -> list[Request]:
        """After ``ray.get(ref)`` raised ``RayActorError``: restart the actor behind ``ref`` if it
        is dead and hand its requests back, for the driver to re-queue wherever it likes."""
        job = self._pop_job(ref)
        if job is None:
            raise KeyError("unknown ref (already collected, recovered or forgotten)")
        if not self._is_alive(job.actor_index):
            self.restart(job.actor_index)
        return job.requests

    def resubmit(self, ref: Any) -> Any:
        """``recover(ref)`` and run the same requests again on the same (fresh) actor; returns the
        replacement ref. Gives up after ``max_attempts`` runs of the same requests."""
        job = self._jobs.get(ref)
        if job is None:
            raise KeyError("unknown ref (already collected, recovered or forgotten)")
        if job.attempts >= self.max_attempts:
            self._pop_job(ref)
            raise RuntimeError(f"sampler requests failed {job.attempts} times; giving up")
        self.recover(ref)
        return self._launch(
            Job(job.actor_index, job.requests, job.kwargs, attempts=job.attempts + 1)
        )

    def wait(
        self, refs: Sequence[Any], num_returns: int = 1, timeout: float | None = None
    ) -> tuple[list[list[Rollout]], list[Any]]:
        """``ray.wait`` for the asynchronous driver: ``(results of finished refs, pending refs)``.

        A ref whose actor died is replaced by a resubmitted one among the pending refs, so a loop
        ``done, pending = pool.wait(pending)`` survives sampler crashes without losing requests."""
        import ray

        if not refs:
            return [], []
        ready, pending = ray.wait(
            list(refs), num_returns=min(num_returns, len(refs)), timeout=timeout
        )
        results: list[list[Rollout]] = []
        for ref in ready:
            try:
                results.append(ray.get(ref))
            except ray.exceptions.RayActorError:
                pending.append(self.resubmit(ref))
                continue
            self._pop_job(ref)
        return results, pending

    def get(self, refs: Sequence[Any]) -> list[list[Rollout]]:
        """``ray.get`` each ref (results in order), replaying the requests of actors that died."""
        import ray

        results: list[list[Rollout]] = []
        for ref in refs:
            while True:
                try:
                    out = ray.get(ref)
                except ray.exceptions.RayActorError:
                    ref = self.resubmit(ref)
                    continue
                self._pop_job(ref)
                results.append(out)
                break
        return results

    def generate(self, requests: Sequence[Request], **kwargs: Any) -> list[Rollout]:
        """Blocking: all rollouts of ``requests`` in request order (see ``submit``)."""
        return [r for chunk in self.get(self.submit(requests, **kwargs)) for r in chunk]

    # ------------------------------------------------------------------ stats / shutdown
    def progress(self) -> list[dict[str, int]]:
        """Each actor's ``progress()``: engine steps of its running generate call and version."""
        import ray

        return ray.get(
            [control(s.actor, "progress").remote() for s in self._slots if s.state != "starting"]
        )

    def pop_stats(self) -> list[dict[str, float]]:
        """Per-call records of every actor since the last pop (``actor`` = its index)."""
        import ray

        ready = [i for i, s in enumerate(self._slots) if s.state != "starting"]
        records = ray.get([control(self._slots[i].actor, "pop_stats").remote() for i in ready])
        return [{**r, "actor": float(i)} for i, rs in zip(ready, records, strict=True) for r in rs]

    def shutdown(self) -> None:
        """Stop every engine cleanly, then kill the actors."""
        import ray

        with contextlib.suppress(Exception):  # an overlapped push in flight: let it land
            self.finish_push()
        refs = [control(s.actor, "shutdown").remote() for s in self._slots]
        for ref in refs:
            with contextlib.suppress(Exception):
                ray.get(ref, timeout=60)
        for slot in self._slots:
            ray.kill(slot.actor, no_restart=True)
        self._slots = []
        self._jobs.clear()
        self.retire_weight_versions()  # weight_sync disk: only the newest version stays
