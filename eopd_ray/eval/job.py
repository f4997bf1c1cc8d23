"""The evaluation job: ``eopd-ray eval CONFIG [key=value ...]`` (paper App. C protocol).

    eopd-ray eval configs/eval-tiny.yaml                       # local Ray (embedded default)
    eopd-ray eval configs/eval-paper.yaml --address auto       # attach to a running cluster
    eopd-ray submit eval configs/eval-paper.yaml --address URL # as its own Ray job

For each checkpoint in turn: start a pool of evaluation actors over it, sample the problems of
every benchmark that are not yet in ``output_dir/<checkpoint>/<benchmark>/samples.jsonl``, append
their scored records there as they come, stop the pool. Then summarise every sample file into
``results.json``, ``results.md``, ``pass_at_k.png`` and ``entropy.png`` (and, with a ``teacher:``
reference, each summary's ``teacher_ref`` block and ``teacher_entropy.png``; see
``eopd_ray.eval.reference``). Re-running with the same
``output_dir`` redoes nothing already scored (resumable); adding a checkpoint or a benchmark to the
config evaluates only what is new.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from eopd_ray.config_io import ConfigError, dump_config
from eopd_ray.eval.benchmarks import EvalProblem, load_benchmark
from eopd_ray.eval.config import CheckpointSpec, EvalConfig
from eopd_ray.eval.metrics import summarize
from eopd_ray.eval.reference import summarize_reference
from eopd_ray.eval.report import write_report
from eopd_ray.eval.store import SampleStore, sample_settings
from eopd_ray.preflight import check_model_path, check_output_dir
from eopd_ray.ray_env import init_ray


def _evaluate_checkpoint(
    config: EvalConfig,
    checkpoint: CheckpointSpec,
    pending: dict[str, tuple[SampleStore, list[EvalProblem]]],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Sample and score the pending problems of one checkpoint; returns the pool's stats."""
    from eopd_ray.eval.evaluator import EvalPool

    started = time.perf_counter()
    pool = EvalPool(config, checkpoint)
    ready_s = time.perf_counter() - started
    log(f"{checkpoint.name}: {len(pool.actors)} actor(s) ready in {ready_s:.1f} s")
    try:
        per_call = config.actors.problems_per_call
        for bench, (store, problems) in pending.items():
            chunks = [problems[i : i + per_call] for i in range(0, len(problems), per_call)]
            done = 0
            for records in pool.imap(bench, chunks):
                store.append(records)
                done += len(records)
                log(f"{checkpoint.name}/{bench}: {done}/{len(problems)} problems")
        return {"actors": pool.stats(), "seconds": time.perf_counter() - started}
    finally:
        pool.shutdown()


def _check_teacher(config: EvalConfig) -> None:
    """The reference teacher exists and shares every checkpoint's vocabulary (one line if not)."""
    from eopd_ray.actors.teacher import check_shared_vocabulary

    assert config.teacher is not None
    check_model_path("teacher.path", config.teacher.path)
    for checkpoint in config.checkpoints:
        try:
            check_shared_vocabulary(config.teacher.path, checkpoint.path)
        except ValueError as exc:
            raise ConfigError(f"teacher vs checkpoint {checkpoint.name}: {exc}") from None


def run_eval(
    config: EvalConfig, address: str | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run (or resume) the evaluation job of ``config``; returns what results.json holds."""
    for checkpoint in config.checkpoints:  # before Ray starts: one line, no traceback
        check_model_path(f"checkpoint {checkpoint.name}", checkpoint.path)
    if config.teacher is not None:
        _check_teacher(config)
    out = check_output_dir(config.output_dir)
    (out / "config.yaml").write_text(dump_config(config))
    loaded = {spec.name: load_benchmark(spec) for spec in config.benchmarks}
    for name, (problems, skipped) in loaded.items():
        log(f"{name}: {len(problems)} problems, {len(skipped)} rows skipped (no usable gold)")

    stores: dict[str, dict[str, SampleStore]] = {}
    for checkpoint in config.checkpoints:
        settings = sample_settings(config, checkpoint)
        stores[checkpoint.name] = {
            bench: SampleStore(out / checkpoint.name / bench, settings) for bench in loaded
        }
        pending = {}
        for bench, (problems, _) in loaded.items():
            store = stores[checkpoint.name][bench]
            done = store.done_ids()
            todo = [p for p in problems if p.id not in done]
            if todo:
                pending[bench] = (store, todo)
        if not pending:
            log(f"{checkpoint.name}: every problem already scored")
            continue
        init_ray(config.ray, address, config.actors.kv_cache_gib)
        _evaluate_checkpoint(config, checkpoint, pending, log)

    summaries: dict[str, dict[str, dict[str, Any]]] = {}
    for checkpoint, per_bench in stores.items():
        summaries[checkpoint] = {}
        for bench, store in per_bench.items():
            wanted = {p.id for p in loaded[bench][0]}
            records = [r for r in store.records() if r["id"] in wanted]
            spec = next(b for b in config.benchmarks if b.name == bench)
            summary = summaries[checkpoint][bench] = summarize(records, spec.pass_k)
            if config.teacher is not None:
                reference = summarize_reference(records, config.teacher.tau)
                if reference is not None:
                    summary["teacher_ref"] = reference
    return write_report(
        out,
        summaries,
        {bench: skipped for bench, (_, skipped) in loaded.items()},
        config.sampling.samples,
        config.entropy.bin_width,
        config.entropy.max_nats,
    )
