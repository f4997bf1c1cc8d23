"""Ray plumbing of the sampler actor (``eopd_ray/actors/sampler.py``): how to start one, and how to
reach its ``control`` concurrency group.

``SamplerActor`` is a plain class; this module wraps it with ``ray.remote`` and a ``control``
concurrency group, so that weight updates, version / stats queries and shutdown do not queue
behind a long ``generate`` (which runs one at a time in the default group). Nothing from Ray is
imported when this module is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from eopd_ray.actors.sampler import SamplerActor
from eopd_ray.actors.stream import STREAM_GROUP
from eopd_ray.ray_env import role_placement

if TYPE_CHECKING:
    from eopd_ray.config import SamplerConfig

CONTROL_GROUP = "control"  # concurrency group of update_weights / version / stats / shutdown


def sampler_actor_options(config: SamplerConfig) -> dict[str, Any]:
    """Ray actor options of one sampler: resources, no automatic restart, a control group."""
    return {
        **role_placement(config.num_cpus, config.num_gpus, config.resources, config.label_selector),
        "max_restarts": 0,
        "max_concurrency": 1,  # generate calls run one at a time (the control group aside)
    }


def start_sampler_actor(
    model_path: str,
    options: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Start a ``SamplerActor`` with ``options``; returns the handle without waiting."""
    opts: dict[str, Any] = {"max_restarts": 0}
    opts.update(options or {})
    return remote_sampler_class().options(**opts).remote(model_path, **kwargs)


_REMOTE_CLASS: Any = None


def remote_sampler_class() -> Any:
    """``ray.remote(SamplerActor)`` with its ``control`` concurrency group (built once)."""
    global _REMOTE_CLASS
    if _REMOTE_CLASS is None:
        import ray

        groups = {CONTROL_GROUP: 2, STREAM_GROUP: 1}  # stream: take_finished (stream.py)
        _REMOTE_CLASS = ray.remote(concurrency_groups=groups)(SamplerActor)
    return _REMOTE_CLASS


def control(actor: Any, method: str) -> Any:
    """``actor.<method>`` routed to the control concurrency group."""
    return getattr(actor, method).options(concurrency_group=CONTROL_GROUP)
