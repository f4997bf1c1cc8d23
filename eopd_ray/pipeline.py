"""RolloutPipeline: prompts -> sampler pool -> scorer -> buffer, with admission control.

Each chunk of prompts is submitted to the sampler pool and, at once, chained to the scoring stage
(``roles.RolloutScorer``): the teacher (``TeacherService.chain``, a Ray task sending every
finished rollout to the teacher deployment) or, for GRPO, a reward worker (``RewardScorer.chain``,
math-verify rewards and group-relative advantages). Ray resolves the chain by itself, so sampling
and scoring go on while the driver is blocked in the learner's step: that overlap is what
``max_staleness`` > 0 buys. A chunk holds whole prompt groups (every sample of its prompts), which
group-relative advantages need.

Admission control (docs/design.md §2): at learner version ``v`` at most ``(η + 1) · batch_prompts``
prompt groups are admitted (in flight or buffered). The learner consumes ``batch_prompts`` per
version, so a rollout generated at version ``u`` is consumed by version ``u + η`` at the latest:
stale data is prevented rather than thrown away. That argument needs chunks to be consumed in
admission order, so a batch is not assembled while a chunk admitted at ``v - η`` (due now) is
still being scored, even if newer chunks have arrived: a late scoring task (e.g. one waiting for a
worker process) would otherwise go stale behind them. What is still stale at take time (e.g. after
a sampler restart) is counted and, per ``pipeline.stale_policy``, dropped or re-sampled.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eopd_ray.buffer import RolloutBuffer
from eopd_ray.config import PipelineConfig, RolloutConfig
from eopd_ray.roles import RolloutSamplers, RolloutScorer
from eopd_ray.rollout import Request, ScoredRollout


@dataclass
class _Chunk:
    sampler_ref: Any
    requests: list[Request]
    group_ids: list[int]  # one admission id per request (``Rollout.group_id``)
    submitted_at: float
    admitted_version: int  # samplers' weights version when submitted: due at version + η
    scoring_tries: int = 1  # a scorer replica that was gone re-scores the same rollouts


class RolloutPipeline:
    """Keeps samplers and scorer busy within the staleness bound; hands out fresh batches."""

    def __init__(
        self,
        requests: Callable[[int], list[Request]],  # the next n prompts, fewer at the end
        samplers: RolloutSamplers,  # SamplerPool
        scorer: RolloutScorer,  # TeacherService, or RewardScorer (GRPO)
        rollout: RolloutConfig,
        pipeline: PipelineConfig,
        *,
        seed: int = 0,
        chunks_per_batch: int = 2,
        max_scoring_tries: int = 3,
    ) -> None:
        self._next_requests = requests
        self.samplers = samplers
        self.scorer = scorer
        self.rollout = rollout
        self.config = pipeline
        self.seed = seed
        self.buffer = RolloutBuffer(pipeline.max_staleness, rollout.samples_per_prompt)
        self._chunk_prompts = max(1, rollout.batch_prompts // max(1, chunks_per_batch))
        self._in_flight: dict[Any, _Chunk] = {}  # scoring ref -> chunk
        self._resample: deque[Request] = deque()
        self.exhausted = False
        self.max_scoring_tries = max_scoring_tries
        self._next_group_id = 0
        self.counters: Counter[str] = Counter()  # cumulative: restored on resume

    # ------------------------------------------------------------------ admission
    def admitted_groups(self) -> int:
        in_flight = sum(len(c.requests) for c in self._in_flight.values())
        groups_buffered = self.buffer.pending_rollouts() // self.rollout.samples_per_prompt
        return in_flight + groups_buffered

    def fill(self, reserved: int = 0) -> int:
        """Submit prompts until (η + 1) · batch_prompts groups are admitted; returns how many.

        ``reserved``: groups already taken into the batch being assembled (not trained yet)."""
        limit = (self.config.max_staleness + 1) * self.rollout.batch_prompts - reserved
        submitted = 0
        while (room := limit - self.admitted_groups()) > 0:
            n = min(room, self._chunk_prompts)
            chunk = [self._resample.popleft() for _ in range(min(n, len(self._resample)))]
            chunk += self._next_requests(n - len(chunk))
            if not chunk:
                self.exhausted = True
                break
            self._submit(chunk)
            submitted += len(chunk)
        return submitted

    def _submit(self, requests: list[Request]) -> None:
        r = self.rollout
        for sampler_ref in self.samplers.submit(
            requests,
            n=r.samples_per_prompt,
            temperature=r.temperature,
            top_p=r.top_p,
            max_tokens=r.max_response_tokens,
            seed=self.seed,
        ):
            requests = list(self.samplers.job_requests(sampler_ref))
            group_ids = list(range(self._next_group_id, self._next_group_id + len(requests)))
            self._next_group_id += len(requests)
            # The pool's version is that of the weights the chunk is generated at (or newer).
            chunk = _Chunk(
                sampler_ref, requests, group_ids, time.perf_counter(), self.samplers.version
            )
            self._chain(chunk)

    def _chain(self, chunk: _Chunk) -> None:
        """Score ``chunk``'s rollouts as soon as the sampler has them (streamed: each request as
        soon as it has finished, ``eopd_ray/actors/stream.py``)."""
        stream = self.samplers.stream_of(chunk.sampler_ref) if self.config.stream_scoring else None
        self._in_flight[self.scorer.chain(chunk.sampler_ref, stream)] = chunk

    # ------------------------------------------------------------------ consumption
    def _collect(self, timeout_s: float) -> None:
        """Move finished chunks into the buffer; re-run chunks whose sampler or scorer died."""
        import ray

        if not self._in_flight:
            return
        done, _ = ray.wait(list(self._in_flight), num_returns=1, timeout=timeout_s)
        for ref in done:
            chunk = self._in_flight.pop(ref)
            try:
                scored = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
                self._retry(chunk, exc)
                continue
            self.samplers.forget(chunk.sampler_ref)  # done: drop the pool's bookkeeping
            for s in self._stamp(chunk, scored):
                self.buffer.put(s)

    def _retry(self, chunk: _Chunk, exc: BaseException) -> None:
        """A dead sampler: generate the chunk again (the pool's budget); a scorer replica or
        worker that died or is unavailable: score the same rollouts again (this budget, charged
        to the scorer's counter, e.g. ``teacher_retries``); else raise."""
        if _sampler_died(chunk.sampler_ref):
            self.counters["sampler_restarts"] += 1
            chunk.sampler_ref = self.samplers.resubmit(chunk.sampler_ref)
            self._chain(chunk)
            return
        if not self.scorer.retryable(exc) or chunk.scoring_tries >= self.max_scoring_tries:
            raise exc
        self.counters[self.scorer.retry_counter] += 1
        chunk.scoring_tries += 1
        self._chain(chunk)

    def _stamp(self, chunk: _Chunk, scored: list[ScoredRollout]) -> list[ScoredRollout]:
        """Label each rollout with its admission's group id (rollouts come in request order)."""
        n = self.rollout.samples_per_prompt
        if len(scored) != n * len(chunk.requests):
            raise RuntimeError(f"{len(scored)} rollouts for {len(chunk.requests)} requests x {n}")
        for j, s in enumerate(scored):
            request, group_id = chunk.requests[j // n], chunk.group_ids[j // n]
            if s.rollout.prompt_id != request[0]:
                raise RuntimeError(f"rollout {j} of a chunk is not of prompt {request[0]}")
            s.rollout.group_id = group_id
        return scored

    def next_batch(
        self, learner_version: int, timeout_s: float = 3600.0
    ) -> tuple[list[ScoredRollout], float]:
        """Block until ``batch_prompts`` fresh groups are ready; returns (batch, seconds waited).

        Returns a smaller (possibly empty) batch only when the prompts have run out.
        """
        started = time.perf_counter()
        want = self.rollout.batch_prompts
        batch: list[ScoredRollout] = []
        got = 0
        while got < want:
            if self._due_in_flight(learner_version):
                self._wait(started, timeout_s)
                continue
            taken, stale = self.buffer.take(want - got, learner_version)
            batch += taken
            got += len(taken) // self.rollout.samples_per_prompt
            self._handle_stale(stale)
            if got >= want:
                break
            self.fill(reserved=got)
            if not self._in_flight and self.buffer.ready_groups() == 0:
                if self.exhausted and not self._resample:
                    break
                continue
            self._wait(started, timeout_s)
        # admission order, not arrival order: chunks finish in a timing-dependent order, and the
        # mini-batch split must not depend on it (a seeded eta = 0 run trains the same batches)
        batch.sort(key=lambda s: (s.rollout.group_id, s.rollout.sample_index))
        return batch, time.perf_counter() - started

    def _due_in_flight(self, learner_version: int) -> bool:
        """Whether a chunk that must be consumed at ``learner_version`` is still in flight."""
        eta = self.config.max_staleness
        return any(c.admitted_version + eta <= learner_version for c in self._in_flight.values())

    def _wait(self, started: float, timeout_s: float) -> None:
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(f"no batch within {timeout_s:.0f} s")
        self._collect(timeout_s=1.0)

    def _handle_stale(self, stale: list[ScoredRollout]) -> None:
        if not stale:
            return
        if self.config.stale_policy == "drop":
            self.counters["stale_dropped"] += len(stale)
            return
        seen: set[int] = set()
        for s in stale:  # one request per group, sampled again at the current version
            if s.rollout.group_id not in seen:
                seen.add(s.rollout.group_id)
                r = s.rollout
                self._resample.append((r.prompt_id, r.prompt_ids, r.answer))
        self.counters["stale_resampled"] += len(seen)

    def close(self, timeout_s: float = 30.0) -> None:
        """After the samplers are shut down: collect the failed in-flight chunks (so Ray does not
        report them as unhandled errors) and cancel what is still running."""
        import ray

        refs = list(self._in_flight)
        self._in_flight.clear()
        if not refs:
            return
        done, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        for ref in done:  # errors expected: their samplers were stopped under them
            with contextlib.suppress(Exception):
                ray.get(ref)
        for ref in pending:
            try:
                ray.cancel(ref, force=True)
            except ValueError:  # an actor's task (reward worker): Ray cancels those unforced only
                ray.cancel(ref, force=False)

    def reset(self) -> None:
        """Forget every admitted prompt (in flight, buffered, queued for re-sampling): after the
        learner was restored to an older checkpoint that work belongs to a newer policy. The
        caller re-admits the checkpoint's pending prompts (:meth:`requeue`). Counters stay."""
        import ray

        for ref, chunk in self._in_flight.items():
            ray.cancel(ref, force=False)  # the scoring task; its result is never read
            self.samplers.forget(chunk.sampler_ref)
        self._in_flight.clear()
        stats = self.buffer.stats
        self.buffer = RolloutBuffer(self.config.max_staleness, self.rollout.samples_per_prompt)
        self.buffer.stats = stats
        self._resample.clear()
        self.exhausted = False

    def in_flight_groups(self) -> int:
        return sum(len(c.requests) for c in self._in_flight.values())

    def pending_prompt_ids(self) -> list[int]:
        """Prompts admitted but not trained on yet (in flight, buffered, waiting to be re-sampled),
        oldest admission first: what a checkpoint must give back on resume, exactly once each."""
        in_flight = [
            (g, r[0])
            for c in self._in_flight.values()
            for g, r in zip(c.group_ids, c.requests, strict=True)
        ]
        held = [(g[0].rollout.group_id, g[0].rollout.prompt_id) for g in self.buffer.held_groups()]
        return [r[0] for r in self._resample] + [pid for _, pid in sorted(held + in_flight)]

    def requeue(self, requests: list[Request]) -> None:
        """Admit ``requests`` before any new prompt (a resumed run's pending prompts)."""
        self._resample.extendleft(reversed(requests))

    def state(self) -> dict[str, Any]:
        """The cumulative counters (buffer and pipeline), for a checkpoint."""
        stats = self.buffer.stats
        return {
            "counters": dict(self.counters),
            "buffer": {"received": stats.received, "consumed": stats.consumed,
                       "stale": stats.stale, "staleness": dict(stats.staleness)},
        }  # fmt: skip

    def restore(self, state: dict[str, Any]) -> None:
        """Continue the counters of :meth:`state` (a resumed run's metrics do not restart)."""
        self.counters = Counter(state.get("counters", {}))
        buffer = state.get("buffer", {})
        stats = self.buffer.stats
        stats.received = buffer.get("received", 0)
        stats.consumed = buffer.get("consumed", 0)
        stats.stale = buffer.get("stale", 0)
        stats.staleness = Counter({int(k): v for k, v in buffer.get("staleness", {}).items()})

    def metrics(self) -> dict[str, float]:
        counters = (*_COUNTERS, self.scorer.retry_counter)  # teacher_retries or reward_retries
        return {
            **self.buffer.stats.as_metrics(),
            "pipeline/in_flight_groups": float(self.in_flight_groups()),
            **{f"pipeline/{key}": float(self.counters[key]) for key in counters},
        }


_COUNTERS = ("stale_dropped", "stale_resampled", "sampler_restarts", "learner_restarts")


def _sampler_died(sampler_ref: Any) -> bool:
    """Whether a chunk's sampler call failed because its actor died (not a scorer error)."""
    import ray

    try:
        ray.get(sampler_ref, timeout=0)
    except ray.exceptions.RayActorError:
        return True
    except Exception:
        return False
    return False
