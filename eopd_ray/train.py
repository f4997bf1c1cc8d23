"""``eopd-ray train CONFIG [key=value ...]``: asynchronous on-policy distillation, end to end.

    eopd-ray train configs/tiny.yaml                       # local Ray, tiny CPU preset
    eopd-ray train configs/tiny.yaml pipeline.max_staleness=1 output_dir=runs/async
    eopd-ray train configs/paper.yaml --address auto       # attach to a running cluster

Everything a run writes goes under ``output_dir``: ``config.yaml`` (resolved), ``metrics.jsonl``,
``tensorboard/``, ``checkpoints/step_N/`` (Hugging Face folders, resumable) and ``summary.json``.
Re-running with the same ``output_dir`` resumes from the last checkpoint.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eopd_ray.checkpoint import resume, save_checkpoint
from eopd_ray.config import RunConfig
from eopd_ray.config_io import ConfigError, dump_config
from eopd_ray.data.prompts import PromptStream, load_prompts
from eopd_ray.faults import check_finite, recover_learner
from eopd_ray.learners.worker_group import LearnerGroupError
from eopd_ray.metrics import MetricsLogger
from eopd_ray.pipeline import RolloutPipeline
from eopd_ray.preflight import check_run_config
from eopd_ray.ray_env import init_ray
from eopd_ray.rollout import Request, ScoredRollout
from eopd_ray.running import Roles
from eopd_ray.timeline import draw_timeline
from eopd_ray.trace import Span, Tracer, sampler_spans, teacher_spans

if TYPE_CHECKING:
    from eopd_ray.roles import SamplerRole, ScorerRole, TeacherRole

# Rows skipped under loss.variant grpo: no reward without a gold answer.
NO_GOLD_ANSWER = "no gold answer (grpo)"


def train(config: RunConfig, address: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the distillation job described by ``config``; returns the summary."""
    check_run_config(config)  # paths, output_dir: one line before Ray starts
    out = Path(config.output_dir)
    (out / "config.yaml").write_text(dump_config(config))
    inputs = prepare_inputs(config)  # tokenizers and data too, before Ray starts
    init_ray(config.ray, address, config.sampler.kv_cache_gib)
    responses = kd_responses(config, inputs, progress)  # kd: the teacher's, generated once
    roles = start_roles(config, inputs, responses)
    trace = Tracer(out / "trace.json" if config.pipeline.trace else None)
    try:
        it, version = resume(roles, out)
        iterations = total_iterations(config, roles.stream)
        log = MetricsLogger(out, iterations, start=it, bar=progress)
        while it < iterations:
            try:
                step = run_iteration(config, roles, trace, it, version, iterations)
                if step is None:  # the prompts ran out
                    break
                version, metrics = step
                log.log(it, metrics)
                it += 1
                if it % config.pipeline.checkpoint_every == 0:
                    with trace.scope("checkpoint", step=it):
                        save_checkpoint(roles, out, it)
            except LearnerGroupError as failure:  # a worker died: back to the newest checkpoint
                it, version = recover_learner(config, roles, out, failure)
                log.rewind(it)
        with trace.scope("checkpoint", step=it):
            final = save_checkpoint(roles, out, it)
        roles.samplers.finish_push()  # an overlapped last push lands before the roles stop
        log.close()
        trace.close()
        if config.pipeline.trace:
            draw_timeline(out)  # timeline.png: the stage overlap of the last iterations
        return write_summary(out, config, roles, final)
    finally:
        trace.close()
        stop_roles(roles)


def run_iteration(
    config: RunConfig, roles: Roles, trace: Tracer, it: int, version: int, iterations: int
) -> tuple[int, dict[str, float]] | None:
    """Iteration ``it``: a fresh batch, a learner step, the new weights to the samplers; returns
    (the new version, the metrics row), None when the prompts ran out. A learner worker that
    died raises ``LearnerGroupError`` (the loop goes back to the newest checkpoint)."""
    t0, wall0 = time.perf_counter(), time.time()
    roles.pipeline.fill()  # generate: admission-controlled, runs while we train
    with trace.scope("wait for batch", iteration=it):
        batch, wait_s = roles.pipeline.next_batch(version)  # score -> buffer -> fresh batch
    if not batch:
        return None
    with trace.scope("learner step", "learner", iteration=it):
        train_metrics = roles.learner.train_batch(batch, mini_batches=mini_batches(config))
    check_finite(config, roles, Path(config.output_dir), it)  # skipped steps in a row: stop
    version = roles.learner.version
    with trace.scope("publish weights", "weights", version=version):
        sync = publish_weights(roles, version, config.overlaps_publication)  # kd: none
    roles.pipeline.counters["sampler_restarts"] += sync["actors"].count(None)
    if it + 1 < iterations:
        roles.pipeline.fill()  # the next prompts start at the new version right away
    records = trace_iteration(trace, roles, batch, started_s=wall0)
    metrics = iteration_metrics(roles, batch, train_metrics, sync, wait_s, t0, records)
    metrics |= autoscale(config, roles, metrics)  # sampler pool size; teacher replicas
    return version, metrics


def trace_iteration(
    trace: Tracer, roles: Roles, batch: list[ScoredRollout], started_s: float
) -> list[dict[str, float]]:
    """Add the iteration's remote spans (each sampler call, each teacher batch that scored the
    batch) and the ``iteration`` span itself to the trace; returns the samplers' call records."""
    records = roles.samplers.pop_stats()
    trace.add_all(sampler_spans(records))
    trace.add_all(teacher_spans(s.teacher.forward_span for s in batch if s.teacher is not None))
    trace.add(Span("iteration", "iteration", started_s, time.time()))
    trace.flush()
    return records


def autoscale(config: RunConfig, roles: Roles, metrics: dict[str, float]) -> dict[str, float]:
    """Grow or shrink the sampler pool on this iteration's signals (``eopd_ray/autoscale.py``)
    and report the teacher's replica count, which Serve scales by itself."""
    out: dict[str, float] = {}
    if roles.scaler is not None:
        out |= roles.scaler.step(metrics)
    service = config.teacher_service
    if roles.teacher is not None and service.min_replicas < service.max_replicas:
        from eopd_ray.autoscale import serve_replicas

        out["autoscale/teacher_replicas"] = serve_replicas(roles.teacher.app_name)
    return out


@dataclass
class Inputs:
    """What a run reads before any role starts: the shared vocabulary, tokenizer and prompts."""

    scoring_vocab_size: int | None  # None without a teacher (grpo)
    tokenizer: Any
    stream: PromptStream
    skipped: Counter[str]


def prepare_inputs(config: RunConfig) -> Inputs:
    """Check that teacher and student share a vocabulary, then load and render the prompts."""
    from transformers import AutoTokenizer

    vocab_size = None
    if config.teacher is not None and config.uses_teacher:
        from eopd_ray.actors.teacher import check_shared_vocabulary

        vocab = check_shared_vocabulary(config.teacher.path, config.student.path)
        vocab_size = vocab.scoring_vocab_size
    tokenizer = AutoTokenizer.from_pretrained(config.student.path)
    requests, skipped = render_requests(config, tokenizer)
    stream = PromptStream(requests, config.data.epochs, config.seed)  # type: ignore[arg-type]
    return Inputs(vocab_size, tokenizer, stream, skipped)


def start_roles(config: RunConfig, inputs: Inputs, responses: Path | None = None) -> Roles:
    """Start the scorer (the teacher, or grpo's reward workers), samplers (kd: the teacher's
    ``responses`` replayed) and learners."""
    from eopd_ray.learners.learner_group import LearnerGroup

    stream, tokenizer, skipped = inputs.stream, inputs.tokenizer, inputs.skipped
    teacher, rewards = start_scorer(config, inputs)
    # the replay reads the learner's version when rollouts are submitted, after it is bound below
    samplers = start_samplers(config, responses, lambda: learner.version)
    learner = LearnerGroup.from_config(
        config,
        total_steps=total_iterations(config, stream) * mini_batches(config),
    )
    pipeline = RolloutPipeline(
        stream.take, samplers, teacher or rewards, config.rollout, config.pipeline, seed=config.seed
    )
    scaler = None
    if responses is None and len(set(config.sampler.actor_range)) > 1:
        from eopd_ray.autoscale import SamplerScaler

        scaler = SamplerScaler(samplers, config.sampler)
    return Roles(
        samplers, teacher, learner, pipeline, stream, tokenizer, skipped, scaler, rewards=rewards
    )


def start_scorer(config: RunConfig, inputs: Inputs) -> tuple[TeacherRole | None, ScorerRole | None]:
    """(the teacher, None), or for grpo (None, the reward workers): grpo starts no teacher."""
    if not config.uses_teacher:
        from eopd_ray.actors.reward import RewardScorer

        return None, RewardScorer.start(config)
    from eopd_ray.actors.teacher_service import TeacherService

    assert config.teacher is not None
    teacher = TeacherService.start(
        config.teacher,
        config.teacher_service,
        config.loss.top_k,
        vocab_limit=inputs.scoring_vocab_size,
        fp32_head=config.teacher_service.fp32_head,
    )
    return teacher, None


def kd_responses(config: RunConfig, inputs: Inputs, progress: bool) -> Path | None:
    """kd trains on the teacher's responses to the training prompts: the file of ``eopd-ray
    generate``, generated now (Ray is up) when missing or incomplete, else reused after its
    settings are checked. None for every other variant (they sample the student)."""
    if config.loss.variant != "kd":
        return None
    from eopd_ray.generate import responses_path, write_teacher_responses

    requests: list[Request] = inputs.stream.rows  # type: ignore[assignment]
    return write_teacher_responses(config, requests, responses_path(config), progress)


def start_samplers(
    config: RunConfig, responses: Path | None, learner_version: Callable[[], int]
) -> SamplerRole:
    """The student's vLLM sampler pool, or for kd the replayed ``responses`` (no student engine;
    their rollouts carry ``learner_version()``, see ``eopd_ray/actors/replay.py``)."""
    if responses is None:
        from eopd_ray.actors.sampler_pool import SamplerPool

        return SamplerPool.from_run_config(config)
    from eopd_ray.actors.replay import TeacherResponses

    return TeacherResponses.from_file(responses, version=learner_version)


def publish_weights(roles: Roles, version: int, overlap: bool = False) -> dict[str, Any]:
    """Push the learner's new weights to the samplers; timings (``seconds``, ``actors``). Samplers
    that replay fixed responses (kd) need none, so the weights are not even gathered. ``overlap``
    (η >= 1): returns once the send has started; the next push waits for it."""
    if not roles.samplers.needs_weights:
        return {"seconds": 0.0, "actors": []}
    return roles.samplers.push_weights(roles.learner, version, overlap=overlap)


def render_requests(config: RunConfig, tokenizer: Any) -> tuple[list[Request], Counter[str]]:
    """Chat-templated prompt ids of every usable row; bad rows are counted, not trained on."""
    from eopd_ray.actors.chat import PromptTooLongError, render_prompt

    prompts = load_prompts(config.data, config.seed)
    if prompts.skipped:
        print(f"eopd-ray: warning: data.train: {prompts.describe_skips()}")
    skipped = Counter(prompts.skipped)
    rewards = not config.uses_teacher  # grpo: a reward needs the row's gold answer
    if rewards and prompts.rows and all(row.answer is None for row in prompts.rows):
        raise ConfigError(
            f"data.train: no row of {config.data.train} has the {config.data.answer_field!r} "
            "field: loss.variant grpo needs gold answers for its reward"
        )
    requests: list[Request] = []
    for row in prompts.rows:
        if rewards and row.answer is None:
            skipped[NO_GOLD_ANSWER] += 1
            continue
        try:
            ids = render_prompt(
                tokenizer,
                row.problem,
                config.student.chat_template,
                config.data.prompt_suffix,
                max_tokens=config.rollout.max_prompt_tokens,
            )
        except PromptTooLongError:
            skipped["prompt longer than rollout.max_prompt_tokens"] += 1
            continue
        requests.append((row.prompt_id, ids, row.answer))
    if not requests:
        raise ValueError(f"no usable prompts (skipped: {dict(skipped)})")
    return requests, skipped


def mini_batches(config: RunConfig) -> int:
    return config.rollout.batch_prompts // config.rollout.mini_batch_prompts


def total_iterations(config: RunConfig, stream: PromptStream) -> int:
    if config.pipeline.iterations is not None:
        return config.pipeline.iterations
    return max(1, stream.total // config.rollout.batch_prompts)


def iteration_metrics(
    roles: Roles,
    batch: list[ScoredRollout],
    train: dict[str, float],
    sync: dict[str, Any],
    wait_s: float,
    started: float,
    sampler_records: list[dict[str, float]],
) -> dict[str, float]:
    """Learner metrics plus what the batch itself says (accuracy, lengths, stage times)."""
    wall = time.perf_counter() - started
    lengths = [len(s.rollout) for s in batch]
    graded = [s for s in batch if s.rollout.answer is not None]
    if roles.rewards is not None:  # grpo: the reward workers graded every rollout already
        correct = sum(s.stats["reward"] for s in graded)
    else:
        pairs = [
            (roles.tokenizer.decode(s.rollout.response_ids), s.rollout.answer or "") for s in graded
        ]
        correct = sum(v.correct for v in roles.verifier.check_many(pairs))
    tokens = train.get("num_tokens", float(sum(lengths)))
    sampler_s = sum(r.get("seconds", 0.0) for r in sampler_records)
    metrics = {f"train/{k}": v for k, v in train.items()}
    metrics |= {
        "rollout/accuracy": correct / len(graded) if graded else float("nan"),
        "rollout/response_len_mean": sum(lengths) / len(lengths),
        "rollout/truncated_frac": sum(s.rollout.finish_reason == "length" for s in batch)
        / len(batch),
        "time/iteration_s": wall,
        "time/wait_for_batch_s": wait_s,
        "time/sampler_busy_s": sampler_s,
        "time/teacher_s": sum(s.stats.get("teacher_s", 0.0) for s in batch),  # incl. queueing
        "time/teacher_busy_s": teacher_busy_s(batch),
        "time/learner_s": train.get("time_s", float("nan")),
        "time/sync_s": sync["seconds"],  # the driver's wait (overlapped: start of the send)
        "sync/overlapped": float(sync.get("overlapped", False)),
        "time/trained_tokens_per_s": tokens / wall if wall > 0 else float("nan"),
        "version": float(roles.learner.version),
    }
    if roles.rewards is not None:
        from eopd_ray.actors.reward import reward_metrics

        metrics |= reward_metrics(batch)
    return metrics | roles.pipeline.metrics()


def teacher_busy_s(batch: list[ScoredRollout]) -> float:
    """Seconds the teacher replicas spent in the batched forwards that scored ``batch``."""
    forwards = {s.teacher.forward_span for s in batch if s.teacher is not None}
    return sum(end - start for _, start, end, _ in filter(None, forwards))


def write_summary(out: Path, config: RunConfig, roles: Roles, final: Path) -> dict[str, Any]:
    from eopd_ray.metrics import read_metrics

    rows = read_metrics(out / "metrics.jsonl")
    first, last = (rows[0], rows[-1]) if rows else ({}, {})
    keys = ["train/reverse_kl", "train/fkl_mean", "train/high_entropy_frac", "rollout/accuracy"]
    if roles.rewards is not None:
        keys += ["reward/mean", "reward/zero_variance_group_frac"]
    summary = {
        "name": config.name,
        "variant": config.loss.variant,
        "max_staleness": config.pipeline.max_staleness,
        "iterations": len(rows),
        "final_checkpoint": str(final),
        "first": {k: first.get(k) for k in keys},
        "last": {k: last.get(k) for k in keys},
        "skipped_prompts": dict(roles.skipped),
        **{
            k: last.get(k)
            for k in (
                "buffer/stale",
                "pipeline/sampler_restarts",
                "pipeline/teacher_retries",
                "pipeline/reward_retries",
            )
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def stop_roles(roles: Roles) -> None:
    """Stop every actor; safe after Ctrl-C (checkpoints are already complete on disk)."""
    # samplers before the pipeline, whose in-flight chunks then fail fast; teacher last
    stops = (roles.learner.shutdown, roles.samplers.shutdown, roles.pipeline.close)
    scorer = roles.teacher if roles.teacher is not None else roles.rewards
    for stop in (*stops, *([scorer.shutdown] if scorer else []), roles.verifier.close):
        try:
            stop()
        except Exception as exc:  # keep stopping the others
            print(f"eopd-ray: warning: shutdown step failed: {exc}")
