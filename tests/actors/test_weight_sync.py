"""Weight publication in ``weight_sync: disk`` mode: the pool keeps one version on disk.

The real ``WeightPublisher.push_weights`` of a pool without actors (no Ray needed: nothing is
sent), so that what is left in ``sync_dir`` after each push can be checked file by file; that
actors reload a pushed folder is tests/actors/test_sampler.py's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from eopd_ray.actors.weight_sync import WeightPublisher
from eopd_ray.config import SamplerConfig


class EmptyPool(WeightPublisher):
    """The publisher's state as ``SamplerPool`` holds it, with no actor to send to."""

    def __init__(self, sync_dir: Path | None) -> None:
        self.config = SamplerConfig(weight_sync="disk")
        self.sync_dir = sync_dir
        self._slots = []
        self._weights: Any = None
        self._version = 0

    def restart(self, index: int) -> dict[str, Any]:
        raise AssertionError("no actor to restart")


def _weights(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 3), value), "b": torch.zeros(3)}


def _versions(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_each_disk_push_leaves_only_its_version(tmp_path: Path) -> None:
    sync = tmp_path / "sampler-weights"
    pool = EmptyPool(sync)
    pool.push_weights(_weights(1.0), version=1)
    assert _versions(sync) == ["v1"]
    # left by an earlier run that was rewound to a checkpoint: newer numbers, never read again
    (sync / "v9").mkdir()
    (sync / "notes").mkdir()  # not a version folder: kept
    info = pool.push_weights(_weights(2.0), version=2)
    assert info["version"] == 2 and pool._version == 2 and info["actors"] == []
    assert _versions(sync) == ["notes", "v2"]
    assert torch.equal(load_file(str(sync / "v2" / "model.safetensors"))["w"], _weights(2.0)["w"])


def test_retire_at_shutdown_keeps_the_newest(tmp_path: Path) -> None:
    sync = tmp_path / "sync"
    pool = EmptyPool(sync)
    pool.push_weights(_weights(3.0), version=3)
    for stale in ("v1", "v2"):
        (sync / stale).mkdir()
    assert sorted(p.name for p in pool.retire_weight_versions()) == ["v1", "v2"]
    assert _versions(sync) == ["v3"]
    # a folder pushed as it is (the caller's) becomes the latest: the pool's own go
    own = tmp_path / "mine"
    own.mkdir()
    pool.push_weights(str(own), version=4)
    assert _versions(sync) == [] and own.is_dir()


def test_without_a_sync_dir_the_pool_makes_one(tmp_path: Path) -> None:
    pool = EmptyPool(None)
    pool.push_weights(_weights(1.0), version=5)
    pool.push_weights(_weights(1.5), version=6)
    assert pool.sync_dir is not None and _versions(pool.sync_dir) == ["v6"]
    pool.retire_weight_versions()
    assert _versions(pool.sync_dir) == ["v6"]
