"""Autoscaling on a real local Ray: the Serve teacher goes 1 -> 2 -> 1 replicas with its load, and
the sampler pool grows while the learner starves and shrinks while the buffer is full, draining
the removed actor, with every admitted prompt's rollout delivered exactly once (counted).

The learner is played by the test (as in test_pipeline.py): it takes batches at once (starving) or
sleeps between them (a slow learner: the buffer fills and the samplers idle). Slow: ~2-3 min.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from eopd_ray.config import (
    ModelConfig,
    PipelineConfig,
    RolloutConfig,
    SamplerAutoscaleConfig,
    SamplerConfig,
    TeacherServiceConfig,
)

pytestmark = pytest.mark.slow


def wait_for(predicate: Callable[[], bool], timeout_s: float, every_s: float = 0.5) -> float:
    """Seconds until ``predicate()`` held; fails the test after ``timeout_s``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"condition not reached within {timeout_s} s")
        time.sleep(every_s)
    return time.monotonic() - start


def test_teacher_replicas_follow_the_load(ray_local: None, tiny_models: tuple[Path, Path]) -> None:
    from eopd_ray.actors.teacher_deployment import unique_app_name
    from eopd_ray.actors.teacher_service import TeacherService
    from eopd_ray.autoscale import serve_replicas

    teacher_dir, _ = tiny_models
    service = TeacherServiceConfig(
        num_cpus=0.5,
        min_replicas=1,
        max_replicas=2,
        target_ongoing_requests=1,
        max_batch_size=2,
        upscale_delay_s=1,
        downscale_delay_s=3,
        look_back_period_s=2,
        chunk_size=64,
    )
    app = unique_app_name()
    teacher = TeacherService.start(
        ModelConfig(path=str(teacher_dir), dtype="float32"), service, top_k=4, app_name=app
    )
    stop = threading.Event()
    served = Counter[str]()

    def load() -> None:  # 16 requests in flight at all times: 8 per replica of 2 over target 1
        prompt, response = list(range(3, 40)), list(range(40, 400))
        while not stop.is_set():
            teacher.results([teacher.score_ids(prompt, response) for _ in range(16)])
            served["requests"] += 16

    try:
        assert serve_replicas(app) == 1
        worker = threading.Thread(target=load, daemon=True)
        worker.start()
        up_s = wait_for(lambda: serve_replicas(app) == 2, timeout_s=90)
        stop.set()
        worker.join(timeout=60)
        down_s = wait_for(lambda: serve_replicas(app) == 1, timeout_s=90)
        print(f"teacher: 1 -> 2 replicas after {up_s:.1f} s of load; 2 -> 1 {down_s:.1f} s after")
        assert served["requests"] > 0
    finally:
        stop.set()
        teacher.shutdown()


def test_sampler_pool_grows_when_starved_and_shrinks_when_full(
    ray_local: None, tiny_models: tuple[Path, Path]
) -> None:
    from eopd_ray.actors.sampler_pool import SamplerPool
    from eopd_ray.actors.teacher_deployment import unique_app_name
    from eopd_ray.actors.teacher_service import TeacherService
    from eopd_ray.autoscale import SamplerScaler
    from eopd_ray.pipeline import RolloutPipeline

    teacher_dir, student_dir = tiny_models
    config = SamplerConfig(
        num_actors=1,
        min_actors=1,
        max_actors=2,
        num_cpus=0.5,
        max_model_len=256,
        autoscale=SamplerAutoscaleConfig(
            grow_wait_frac=0.5,
            shrink_wait_frac=0.05,
            shrink_busy_frac=0.5,
            patience=2,
            cooldown_s=0,
        ),
    )
    pool = SamplerPool(config, str(student_dir), dtype="float32")
    teacher = TeacherService.start(
        ModelConfig(path=str(teacher_dir), dtype="float32"),
        TeacherServiceConfig(num_cpus=0.5, max_batch_size=8, chunk_size=64),
        top_k=4,
        app_name=unique_app_name(),
    )
    asked: list[int] = []  # what the Ray autoscaler was asked for (actors' worth of resources)
    scaler = SamplerScaler(
        pool, config, request=lambda cfg, actors: asked.append(actors)
    )  # a real request_resources call is checked in test_request_resources_on_local_ray
    issued: list[int] = []

    def next_requests(n: int) -> list:
        ids = list(range(len(issued), len(issued) + n))
        issued.extend(ids)
        return [(i, [3 + i % 50, 7, 9, 11, 13], None) for i in ids]

    rollout = RolloutConfig(batch_prompts=8, mini_batch_prompts=8, max_response_tokens=24)
    pipeline = RolloutPipeline(
        next_requests, pool, teacher, rollout, PipelineConfig(max_staleness=1)
    )
    consumed: Counter[int] = Counter()
    sizes: list[float] = []
    used: set[int] = set()  # actors that generated in the iterations since the last reset

    def iteration(learner_s: float) -> dict[str, float]:
        started = time.perf_counter()
        pipeline.fill()
        batch, wait_s = pipeline.next_batch(learner_version=0)
        consumed.update(s.rollout.prompt_id for s in batch)
        time.sleep(learner_s)  # the learner's step
        pipeline.fill()
        stats = pool.pop_stats()
        used.update(int(r["actor"]) for r in stats)
        busy = sum(r.get("seconds", 0.0) for r in stats)
        metrics = {
            "time/iteration_s": time.perf_counter() - started,
            "time/wait_for_batch_s": wait_s,
            "time/sampler_busy_s": busy,
        }
        out = scaler.step(metrics)
        sizes.append(out["autoscale/sampler_actors"])
        return out

    try:
        # A learner that takes no time starves: the pool grows to 2 and the new actor works.
        for _ in range(8):
            iteration(0.0)
            if pool.size == 2:
                break
        assert scaler.added == 1 and pool.size == 2, sizes
        assert asked == [2]
        wait_for(lambda: pool.activate_ready() > 0 or pool.starting() == 0, timeout_s=120)
        used.clear()
        for _ in range(6):  # both actors take chunks now
            out = iteration(0.0)
            if used == {0, 1}:
                break
        assert used == {0, 1}

        # A slow learner: the buffer holds the next batch, the samplers idle -> shrink to 1.
        for _ in range(10):
            out = iteration(4.0)
            if scaler.removed:
                break
        assert scaler.removed == 1, sizes
        assert out["autoscale/sampler_decision"] == -1
        assert asked == [2, 1]
        # The drained actor leaves once its rollouts are collected; the pool goes on with one.
        # The learner stays slow here: a starving one would (rightly) grow the pool again.
        for _ in range(4):
            iteration(4.0)
            if pool.num_actors == 1:
                break
        assert pool.num_actors == 1 and pool.draining() == 0, sizes
        assert scaler.added == 1 and scaler.removed == 1

        # Nothing lost, nothing twice: every prompt admitted was delivered once or is still
        # in the pipeline (in flight or buffered).
        assert max(consumed.values()) == 1
        leftover = pipeline.in_flight_groups() + pipeline.buffer.ready_groups()
        assert len(consumed) + leftover == len(issued)
        assert set(consumed) <= set(issued)
        print(f"sampler pool sizes per iteration: {sizes}; {len(consumed)} prompts consumed")
    finally:
        pool.shutdown()
        pipeline.close()
        teacher.shutdown()


def test_request_resources_on_local_ray(ray_local: None) -> None:
    """The autoscaler SDK call accepts our bundles on a running Ray (a hint without autoscaler)."""
    from eopd_ray.autoscale import request_pool_resources

    config = SamplerConfig(
        num_cpus=1, num_gpus=0, resources={"sampler_slot": 1}, label_selector={"role": "sampler"}
    )
    request_pool_resources(config, 2)
    request_pool_resources(config, 0)  # withdraw the ask
