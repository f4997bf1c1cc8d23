"""The learner ranks as Ray actors in one placement group, and the driver's calls to them.

:class:`WorkerGroup` reserves one placement group of ``num_workers`` bundles (``CPU:
num_cpus_per_worker``, ``GPU: gpus_per_worker`` with ``use_gpu``, plus
``resources_per_worker``; every bundle with the ``label_selector``; ``placement_strategy`` over
them), starts one
:class:`~eopd_ray.learners.worker.LearnerWorker` actor in each bundle, and has them join one
``torch.distributed`` group: rank 0 returns its node IP and a free port, which the driver passes
to every rank's ``setup``. Then :meth:`WorkerGroup.call` runs one method on every rank, as in
verl / OpenRLHF: ``ray.get([w.train.remote(shard, opts) for w in workers])``, with a deadline.

Errors raise where they happen. The driver waits for the ranks' replies one at a time, so the
first failure surfaces at once even while other ranks wait in a collective for the failed one:
a worker exception as :class:`LearnerGroupError` naming the rank, the worker's own exception line
first and then its traceback; a dead worker (``ActorDiedError``: OOM, node loss, ``ray.kill``) as
one too, and so does a call that outlives its deadline. In each case every worker is killed and
the placement group removed, and the group refuses further calls: the ranks' collectives are out
of step. ``LearnerGroup.restart`` builds a fresh group instead.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Sequence
from typing import Any

from eopd_ray.config import LearnerConfig
from eopd_ray.ray_env import role_placement

__all__ = ["LearnerGroupError", "WorkerGroup"]


class LearnerGroupError(RuntimeError):
    """A learner worker failed (its message and traceback are included) or the group is unusable."""


class WorkerGroup:
    """``learner.num_workers`` :class:`LearnerWorker` actors, set up and ready for calls.

    Construction reserves the placement group, starts the actors and runs ``setup(cfg, ...)`` on
    every rank, all within ``startup_timeout_s``; ``init_info`` then holds each rank's reply. On
    any failure it kills what it started and raises :class:`LearnerGroupError`.
    """

    def __init__(
        self, learner: LearnerConfig, cfg: dict[str, Any], *, name: str, startup_timeout_s: float
    ) -> None:
        self.world = learner.num_workers
        self.failure: BaseException | None = None
        self.actors: list[Any] = []
        self._pg: Any = None
        deadline = time.monotonic() + startup_timeout_s
        try:
            self._start_actors(learner, name, startup_timeout_s)
            left = max(0.0, deadline - time.monotonic())
            addr, port = self.call_rank(0, "master_address", timeout_s=left, what="start-up")
            left = max(0.0, deadline - time.monotonic())
            setup_args = [(cfg, addr, port)] * self.world
            self.init_info: list[dict[str, Any]] = self.call(
                "setup", setup_args, timeout_s=left, what="start-up"
            )
        except BaseException:
            self.kill()
            raise

    def _start_actors(self, learner: LearnerConfig, name: str, timeout_s: float) -> None:
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from eopd_ray.learners.worker import LearnerWorker

        gpus = learner.gpus_per_worker if learner.use_gpu else 0
        bundle = {"CPU": learner.num_cpus_per_worker, **learner.resources_per_worker}
        if gpus:
            bundle["GPU"] = gpus
        selector = dict(learner.label_selector)
        self._pg = placement_group(
            [dict(bundle)] * self.world,
            strategy=learner.placement_strategy,
            name=name,
            bundle_label_selector=[selector] * self.world if selector else None,
        )
        if not self._pg.wait(timeout_s):
            raise LearnerGroupError(
                f"the learners' placement group ({self.world} x {bundle}, "
                f"{learner.placement_strategy}) was not ready after {timeout_s:.0f} s: "
                "does the cluster have these resources?"
            )
        # The bundles carry the label selector; the actor asks for exactly one bundle.
        options = role_placement(
            learner.num_cpus_per_worker, gpus, learner.resources_per_worker, {}
        )
        actor_cls = ray.remote(LearnerWorker)
        self.actors = [
            actor_cls.options(
                **options,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self._pg, placement_group_bundle_index=rank
                ),
            ).remote(rank, self.world)
            for rank in range(self.world)
        ]

    # -- calls ------------------------------------------------------------------------------
    def call(
        self, method: str, args: Sequence[tuple] | None = None, *, timeout_s: float, what: str
    ) -> list[Any]:
        """Run ``method`` on every rank (``args``: one tuple per rank) and return the replies."""
        if self.failure is not None:
            raise LearnerGroupError(f"the learner group failed earlier: {self.failure}")
        per_rank = args if args is not None else [()] * self.world
        refs = [
            getattr(actor, method).remote(*a)
            for actor, a in zip(self.actors, per_rank, strict=True)
        ]
        return self._wait(refs, list(range(self.world)), timeout_s, what)

    def call_rank(self, rank: int, method: str, *args: Any, timeout_s: float, what: str) -> Any:
        """Run ``method`` on one rank only (no collectives in it)."""
        ref = getattr(self.actors[rank], method).remote(*args)
        return self._wait([ref], [rank], timeout_s, what)[0]

    def _wait(self, refs: list[Any], ranks: list[int], timeout_s: float, what: str) -> list[Any]:
        import ray

        deadline = time.monotonic() + timeout_s
        index = {ref: i for i, ref in enumerate(refs)}
        replies: list[Any] = [None] * len(refs)
        pending = list(refs)
        while pending:
            left = max(0.0, deadline - time.monotonic())
            done, pending = ray.wait(pending, num_returns=1, timeout=left)
            if not done:
                raise self._fail(
                    LearnerGroupError(
                        f"learner {what} timed out after {timeout_s:.0f} s "
                        f"({len(refs) - len(pending)}/{len(refs)} ranks replied)"
                    )
                )
            i = index[done[0]]
            try:
                replies[i] = self._get(done[0], ranks[i], what)
            except (LearnerGroupError, KeyboardInterrupt, SystemExit):
                raise  # Ctrl-C must stop the run, not look like a dead worker to recover from
            except BaseException as exc:  # whatever went wrong, the ranks are out of step
                raise self._fail(LearnerGroupError(f"learner {what} failed: {exc!r}")) from exc
        return replies

    def _get(self, ref: Any, rank: int, what: str) -> Any:
        """Rank ``rank``'s reply; :class:`LearnerGroupError` (the group killed) if it failed."""
        import ray
        from ray.exceptions import RayActorError, RayError, RayTaskError

        try:
            return ray.get(ref)
        except RayTaskError as exc:
            # str(exc): Ray's header line, then the worker's traceback
            error = LearnerGroupError(
                f"learner rank {rank} failed during {what}: {_cause_line(exc)}\n{exc}"
            )
            raise self._fail(error) from exc.cause
        except RayActorError as exc:
            error = LearnerGroupError(f"learner rank {rank} died during {what}: {exc}")
            raise self._fail(error) from exc
        except RayError as exc:  # e.g. the reply's object was lost with its node
            error = LearnerGroupError(f"learner rank {rank} failed during {what}: {exc!r}")
            raise self._fail(error) from exc

    def _fail(self, exc: BaseException) -> BaseException:
        self.failure = exc
        self.kill()
        return exc

    # -- teardown ---------------------------------------------------------------------------
    def stop(self, timeout_s: float) -> BaseException | None:
        """Leave the process group cleanly if the group is healthy, then kill the actors.

        Returns the error of a healthy group that did not stop cleanly, else ``None``."""
        error = None
        if self.failure is None and self.actors:
            try:
                self.call("shutdown", timeout_s=timeout_s, what="shutdown")
            except LearnerGroupError as exc:
                error = exc
        self.kill()
        return error

    def kill(self) -> None:
        """Kill every actor and remove the placement group; the group is unusable. Idempotent."""
        import ray
        from ray.util.placement_group import remove_placement_group

        if self.failure is None:
            self.failure = LearnerGroupError("its workers were killed")
        for actor in self.actors:
            with contextlib.suppress(Exception):  # already dead
                ray.kill(actor, no_restart=True)
        if self._pg is not None:
            with contextlib.suppress(Exception):  # already removed
                remove_placement_group(self._pg)
            self._pg = None


def _cause_line(exc: Any) -> str:
    """The worker's own exception line (``IndexError: ...``), not Ray's wrapper text."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return "".join(traceback.format_exception_only(cause)).strip()
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1].strip() if lines else repr(exc)
