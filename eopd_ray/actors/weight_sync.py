"""Weight publication: the learner's new weights reach every engine of the sampler pool.

``WeightPublisher`` is a base of ``SamplerPool`` (``eopd_ray/actors/sampler_pool.py``): its
``push_weights`` has every actor reload the new weights in place. Modes
(``SamplerConfig.weight_sync``):

- ``collective`` (default): ``push_weights(learner, version)`` forms a broadcast group of learner
  rank 0 and the engines' workers and the learner broadcasts the weights in buckets
  (``eopd_ray/actors/weight_broadcast.py``): nothing passes through the driver. The group is kept
  while the pool's actors are the same; an actor found dead is replaced (and gets the weights in
  a group of its own), and a broadcast that failed part-way (a member died or timed out) is
  repeated once for the survivors in a new group.
- ``object_store``: the learner's gathered state dict is ``ray.put`` once; every actor gets the
  same ref (single-process engines load the tensors directly).
- ``disk``: written as safetensors to ``sync_dir/v{version}``; every actor reloads the folder
  (works with multiprocess and tensor-parallel engines too). Once a push has returned, every
  engine runs the new weights (restarted and starting actors get them too), so the pool deletes
  its other ``sync_dir/v*`` folders (``retire_weight_versions``, also at shutdown): one version
  stays on disk.

A state dict, a safetensors folder path or an ``ObjectRef`` of a state dict may be pushed
directly (object-store / disk semantics). The pool keeps the latest source: actors started later
(restarts, autoscaling) get its weights before they take work (``deliver``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eopd_ray.actors.sampler_remote import control

if TYPE_CHECKING:
    from eopd_ray.actors.pool_slots import Slot
    from eopd_ray.actors.weight_broadcast import WeightGroup
    from eopd_ray.config import SamplerConfig


@dataclass
class _Broadcast:
    """One broadcast in flight: its group, the receivers' refs by actor index and, when sent
    from the engine (blocking), the learner's reply."""

    group: WeightGroup
    refs: dict[int, Any]
    sent: dict[str, Any] | None


class WeightPublisher:
    """``push_weights`` of ``SamplerPool``; uses the pool's slots, its latest weights and version
    and its ``restart``."""

    config: SamplerConfig
    sync_dir: Path | None
    restart: Callable[[int], dict[str, Any]]
    _slots: list[Slot]
    _weights: Any  # latest pushed: the learner (collective), an ObjectRef or a path
    _version: int
    # collective: the last broadcast group and the (index, generation) of its members
    _cached_group: tuple[tuple[tuple[int, int], ...], WeightGroup] | None = None
    _overlapped: _Broadcast | None = None  # an overlapped push still being sent
    _staged = False  # the learner holds a staged copy of the latest pushed weights
    _is_alive: Callable[[int], bool]

    def push_weights(self, weights: Any, version: int, overlap: bool = False) -> dict[str, Any]:
        """Send new weights to every actor and wait until all have them.

        ``weights``: the learner group (a ``WeightSource``: broadcast under ``collective``, else
        its state dict), a state dict (put in the object store once, or written to
        ``sync_dir/v{version}`` when ``config.weight_sync == "disk"``), an ``ObjectRef`` of one,
        or a safetensors folder path. Returns the wall time and each actor's timings (None for
        an actor found dead and replaced: the train loop counts it as a sampler restart).

        ``overlap`` (collective only; the train loop asks for it at η ≥ 1): the learner copies
        the weights and sends them in the background; this returns once the copy is made and the
        send has started, and ``finish_push`` (called by the next push, ``deliver`` and
        shutdown) waits for it. ``actors`` is then that of the previous overlapped push."""
        started = time.perf_counter()
        previous = self.finish_push()
        collective = self._collective(weights)
        payload = weights if collective else self._payload(weights, version)
        prepared = time.perf_counter()
        self._weights, self._version = payload, int(version)
        # Starting actors get the newest weights when they become active (activate_ready).
        targets = [i for i, s in enumerate(self._slots) if s.state != "starting"]
        if collective and overlap:
            per_actor = previous.get("actors", [])
            self._overlapped = self._start_overlapped(targets)
        else:
            self._staged = False
            per_actor = self._broadcast(targets) if collective else self._update(targets)
            self.retire_weight_versions()  # every engine has this version now
        return {
            "seconds": time.perf_counter() - started,
            "prepare_s": prepared - started,
            "version": version,
            "actors": per_actor,
            "overlapped": bool(collective and overlap),
        }

    def finish_push(self) -> dict[str, Any]:
        """Wait for the overlapped push in flight, if any: its receivers' timings (``actors``,
        None for an actor replaced) once every live actor has the weights; a broadcast that
        failed part-way is repeated (from the learner's staged copy) like a blocking one."""
        flight, self._overlapped = self._overlapped, None
        if flight is None:
            return {}
        started = time.perf_counter()
        results: dict[int, dict[str, float] | None] = {}
        failed, _ = self._finish_broadcast(flight, results)
        todo = self._replace_dead(failed, results)
        if todo:  # the survivors again, in a new group (the staged copy is still this version)
            self._broadcast(todo, results, attempts=1)
        per_actor = [results[i] for i in flight.refs]
        return {"seconds": time.perf_counter() - started, "actors": per_actor}

    def discard_push(self) -> None:
        """Forget an overlapped push whose learner is gone (restarted from a checkpoint): its
        receivers fail on their own (the sender's connections closed), and the restored weights
        are pushed next."""
        self._overlapped, self._staged, self._cached_group = None, False, None

    def deliver(self, index: int) -> None:
        """Give actor ``index`` (fresh: restarted or just started) the latest pushed weights."""
        if self._weights is None:
            return
        if self._collective(self._weights):
            self.finish_push()  # one broadcast at a time; the staged copy is the latest version
            self._broadcast([index])
        else:
            self._update([index])

    def _collective(self, source: Any) -> bool:
        """Whether ``source``'s weights go by broadcast: collective mode and a ``WeightSource``."""
        return self.config.weight_sync == "collective" and hasattr(source, "weight_group")

    def _payload(self, weights: Any, version: int) -> Any:
        """What every actor's ``update_weights`` gets: an ObjectRef or a folder path."""
        import ray

        if hasattr(weights, "state_dict") and not isinstance(weights, Mapping):
            weights = weights.state_dict()  # a WeightSource without collective sync
        if isinstance(weights, str | os.PathLike):
            return str(weights)
        if isinstance(weights, ray.ObjectRef):
            return weights
        if isinstance(weights, Mapping):
            if self.config.weight_sync == "disk":
                return self._save_weights(weights, version)
            return ray.put(dict(weights))
        raise TypeError(f"cannot push weights of type {type(weights).__name__}")

    def _update(self, targets: list[int]) -> list[dict[str, float] | None]:
        """``update_weights(payload)`` on ``targets``; a dead actor is replaced (None)."""
        import ray

        refs = [
            control(self._slots[i].actor, "update_weights").remote(self._weights, self._version)
            for i in targets
        ]
        per_actor: list[dict[str, float] | None] = []
        for index, ref in zip(targets, refs, strict=True):
            try:
                per_actor.append(ray.get(ref))
            except ray.exceptions.RayActorError:
                self.restart(index)  # the fresh actor is started at the new weights
                per_actor.append(None)
        return per_actor

    def _broadcast(
        self,
        targets: list[int],
        results: dict[int, dict[str, float] | None] | None = None,
        attempts: int = 2,
    ) -> list[dict[str, float] | None]:
        """Collective sync to ``targets``: a dead actor is replaced (None; the fresh one gets the
        weights in a group of its own), a broadcast that failed part-way is repeated once for
        the survivors, in a new group."""
        results = {} if results is None else results
        todo = self._replace_dead(targets, results)
        for attempt in range(1, attempts + 1):
            if not todo:
                break
            failed, error = self._finish_broadcast(self._start_broadcast(todo), results)
            todo = self._replace_dead(failed, results)
            if todo and attempt == attempts:
                raise RuntimeError(f"weight broadcast to samplers {todo} failed: {error}")
        return [results[i] for i in targets]

    def _start_overlapped(self, targets: list[int]) -> _Broadcast | None:
        """Stage the learner's weights, then start sending them to the live ``targets``; a dead
        one is replaced (and gets the staged copy in a group of its own)."""
        alive = [i for i in targets if self._is_alive(i)]
        self._weights.stage_weights(self._group_for(alive or targets))  # this version's copy
        self._staged = True  # from now on every send to an engine is of this copy
        for i in targets:
            if i not in alive:
                self.restart(i)
        return self._start_broadcast(alive) if alive else None

    def _start_broadcast(self, todo: list[int]) -> _Broadcast:
        """The receivers wait in their control group, then the learner sends: from the engine
        (blocking, replied in ``sent``) or, after an overlapped push, its staged copy (in the
        background: ``join_weight_send``)."""
        group = self._group_for(todo)
        tp = self.config.tensor_parallel_size
        refs = {
            i: control(self._slots[i].actor, "receive_weights").remote(
                group, 1 + k * tp, self._version
            )
            for k, i in enumerate(todo)
        }
        if self._staged:
            self._weights.start_weight_send(group)
            return _Broadcast(group, refs, None)
        return _Broadcast(group, refs, self._weights.broadcast_weights(group))

    def _finish_broadcast(
        self, flight: _Broadcast, results: dict[int, dict[str, float] | None]
    ) -> tuple[list[int], str | None]:
        """Collect the receivers of ``flight``; returns the targets whose receive failed and the
        learner's error, if any."""
        import ray

        sent = flight.sent if flight.sent is not None else self._weights.join_weight_send()
        failed = []
        for i, ref in flight.refs.items():
            try:
                results[i] = ray.get(ref, timeout=flight.group.timeout_s)
            except ray.exceptions.RayError:  # died, timed out, or its group broke
                failed.append(i)
        if failed or "error" in sent:
            self._cached_group = None  # never reuse a group that failed
        return failed, sent.get("error") or (f"samplers {failed} failed" if failed else None)

    def _group_for(self, todo: list[int]) -> WeightGroup:
        """The broadcast group of the learner and ``todo``'s engines: the last one when the
        same actors (same generations) are the targets again and the learner still hosts it."""
        key = tuple((i, self._slots[i].generation) for i in todo)
        cached = self._cached_group
        reuse = cached[1] if cached is not None and cached[0] == key else None
        cfg = self.config
        group = self._weights.weight_group(
            1 + len(todo) * cfg.tensor_parallel_size,
            _backend(cfg),
            cfg.weight_sync_timeout_s,
            cfg.weight_bucket_mb << 20,
            reuse=reuse,
        )
        self._cached_group = (key, group)
        return group

    def _replace_dead(
        self, indices: list[int], results: dict[int, dict[str, float] | None]
    ) -> list[int]:
        """The live ones of ``indices``; the dead are restarted (their result: None)."""
        alive = []
        for i in indices:
            if self._is_alive(i):
                alive.append(i)
            else:
                self.restart(i)
                results[i] = None
        return alive

    def retire_weight_versions(self) -> list[Path]:
        """Delete the ``sync_dir/v{version}`` folders but the latest pushed one; returns them.

        Only once every engine has loaded the latest weights (after a push, and at shutdown):
        ``sync_dir`` belongs to the pool, and no engine reads an older version again."""
        if self.sync_dir is None or not self.sync_dir.is_dir():
            return []
        latest = Path(self._weights).resolve() if isinstance(self._weights, str) else None
        old = [
            folder
            for folder in self.sync_dir.iterdir()
            if folder.is_dir() and folder.name[:1] == "v" and folder.name[1:].isdigit()
        ]
        old = [folder for folder in old if folder.resolve() != latest]
        for folder in old:
            shutil.rmtree(folder, ignore_errors=True)
        return old

    def _save_weights(self, state_dict: Mapping[str, Any], version: int) -> str:
        from safetensors.torch import save_file

        if self.sync_dir is None:
            self.sync_dir = Path(tempfile.mkdtemp(prefix="eopd-sampler-weights-"))
        folder = self.sync_dir / f"v{version}"
        folder.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in state_dict.items()},
            str(folder / "model.safetensors"),
        )
        return str(folder)


def _backend(config: SamplerConfig) -> str:
    """The broadcast's backend asked of the learner (which falls back to gloo without GPUs)."""
    if config.weight_sync_backend != "auto":
        return config.weight_sync_backend
    return "nccl" if config.num_gpus > 0 else "gloo"
