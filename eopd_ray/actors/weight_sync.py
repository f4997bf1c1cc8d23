"""Weight publication: the learner's new weights reach every engine of the sampler pool.

``WeightPublisher`` is a base of ``SamplerPool`` (``eopd_ray/actors/sampler_pool.py``): its
``push_weights`` turns the weights into one payload and has every actor reload it in place
(``SamplerActor.update_weights``, ``eopd_ray/actors/sampler.py``). Modes
(``SamplerConfig.weight_sync``) for a state dict:

- ``object_store``: ``ray.put`` once; every actor gets the same ref (single-process engines load
  the tensors directly).
- ``disk``: written as safetensors to ``sync_dir/v{version}``; every actor reloads the folder
  (works with multiprocess and tensor-parallel engines too). Once a push has returned, every
  engine runs the new weights (restarted and starting actors get them too), so the pool deletes
  its other ``sync_dir/v*`` folders (``retire_weight_versions``, also at shutdown): one version
  stays on disk.

A safetensors folder path or an ``ObjectRef`` of a state dict is passed on as it is. The pool keeps
the latest payload: actors started later (restarts, autoscaling) get it before they take work.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eopd_ray.actors.sampler_remote import control

if TYPE_CHECKING:
    from eopd_ray.actors.pool_slots import Slot
    from eopd_ray.config import SamplerConfig


class WeightPublisher:
    """``push_weights`` of ``SamplerPool``; uses the pool's slots, its latest weights and version
    and its ``restart``."""

    config: SamplerConfig
    sync_dir: Path | None
    restart: Callable[[int], dict[str, Any]]
    _slots: list[Slot]
    _weights: Any  # latest pushed weights: ObjectRef of a state dict, or a path
    _version: int

    def push_weights(self, weights: Any, version: int) -> dict[str, Any]:
        """Send new weights to every actor and wait until all have them.

        ``weights``: a state dict (put in the object store once, or written to
        ``sync_dir/v{version}`` when ``config.weight_sync == "disk"``), an ``ObjectRef`` of one,
        or a safetensors folder path. Returns the wall time and each actor's timings (None for
        an actor found dead and replaced: the train loop counts it as a sampler restart)."""
        import ray

        started = time.perf_counter()
        if isinstance(weights, str | os.PathLike):
            payload: Any = str(weights)
        elif isinstance(weights, ray.ObjectRef):
            payload = weights
        elif isinstance(weights, Mapping):
            if self.config.weight_sync == "disk":
                payload = self._save_weights(weights, version)
            else:
                payload = ray.put(dict(weights))
        else:
            raise TypeError(f"cannot push weights of type {type(weights).__name__}")
        prepared = time.perf_counter()
        self._weights, self._version = payload, int(version)
        # Starting actors get the newest weights when they become active (activate_ready).
        targets = [i for i, s in enumerate(self._slots) if s.state != "starting"]
        refs = [
            control(self._slots[i].actor, "update_weights").remote(payload, version)
            for i in targets
        ]
        per_actor: list[dict[str, float] | None] = []
        for index, ref in zip(targets, refs, strict=True):
            try:
                per_actor.append(ray.get(ref))
            except ray.exceptions.RayActorError:
                self.restart(index)  # the fresh actor is started at the new weights
                per_actor.append(None)
        self.retire_weight_versions()  # every engine has this version now
        return {
            "seconds": time.perf_counter() - started,
            "prepare_s": prepared - started,
            "version": version,
            "actors": per_actor,
        }

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
