"""RolloutBuffer: groups, take order (oldest version, then FIFO) and the staleness bound."""

import numpy as np
import pytest

from eopd_ray.buffer import RolloutBuffer
from eopd_ray.rollout import Rollout, ScoredRollout, TeacherScores


def scored(
    prompt_id: int, sample: int, versions: list[int], group_id: int | None = None
) -> ScoredRollout:
    t = len(versions)
    rollout = Rollout(
        prompt_id=prompt_id,
        sample_index=sample,
        prompt_ids=[1, 2],
        response_ids=list(range(t)),
        behaviour_logprobs=[-1.0] * t,
        versions=versions,
        group_id=prompt_id if group_id is None else group_id,  # one admission per prompt here
    )
    teacher = TeacherScores(
        logprobs=np.zeros(t, np.float32),
        entropy=np.zeros(t, np.float32),
        topk_ids=np.zeros((t, 2), np.int64),
        topk_logprobs=np.zeros((t, 2), np.float32),
    )
    return ScoredRollout(rollout, teacher)


def test_groups_become_ready_only_when_complete_and_sorted() -> None:
    buffer = RolloutBuffer(max_staleness=0, samples_per_prompt=2)
    buffer.put(scored(7, 1, [0]))
    assert buffer.ready_groups() == 0
    assert buffer.pending_rollouts() == 1
    buffer.put(scored(7, 0, [0]))
    assert buffer.ready_groups() == 1
    batch, stale = buffer.take(1, learner_version=0)
    assert [s.rollout.sample_index for s in batch] == [0, 1]
    assert stale == []
    assert buffer.pending_rollouts() == 0


def test_take_is_fifo_and_bounded_by_num_groups() -> None:
    buffer = RolloutBuffer(max_staleness=0, samples_per_prompt=1)
    for prompt_id in (3, 1, 2):
        buffer.put(scored(prompt_id, 0, [0]))
    batch, _ = buffer.take(2, learner_version=0)
    assert [s.rollout.prompt_id for s in batch] == [3, 1]
    assert buffer.ready_groups() == 1


def test_take_prefers_the_oldest_version_then_arrival_order() -> None:
    # A chunk generated at version 1 arrives after chunks of version 2 (its scoring ran late):
    # with eta = 1 it is taken first at version 2 instead of going stale behind them.
    buffer = RolloutBuffer(max_staleness=1, samples_per_prompt=1)
    for prompt_id, versions in ((10, [2]), (11, [2, 2]), (5, [1, 2]), (6, [1])):
        buffer.put(scored(prompt_id, 0, versions))
    batch, stale = buffer.take(3, learner_version=2)
    assert [s.rollout.prompt_id for s in batch] == [5, 6, 10]
    assert stale == []
    batch, _ = buffer.take(3, learner_version=3)
    assert [s.rollout.prompt_id for s in batch] == [11]


@pytest.mark.parametrize("eta", [0, 1, 2])
def test_staleness_bound(eta: int) -> None:
    # versions per token may change mid-rollout; the oldest token decides
    buffer = RolloutBuffer(max_staleness=eta, samples_per_prompt=1)
    for prompt_id, versions in enumerate([[5, 5], [4, 5], [3, 3], [2, 5], [5]]):
        buffer.put(scored(prompt_id, 0, versions))
    batch, stale = buffer.take(10, learner_version=5)
    assert all(5 - s.rollout.min_version <= eta for s in batch)
    assert all(5 - s.rollout.min_version > eta for s in stale)
    assert len(batch) + len(stale) == 5
    assert buffer.stats.stale == len(stale)
    assert buffer.stats.consumed == len(batch)
    assert sum(buffer.stats.staleness.values()) == len(batch)
    assert buffer.stats.as_metrics()["buffer/staleness_max"] <= eta


def test_stale_group_is_dropped_whole() -> None:
    buffer = RolloutBuffer(max_staleness=0, samples_per_prompt=2)
    buffer.put(scored(0, 0, [1]))
    buffer.put(scored(0, 1, [0]))  # one old sample makes the group stale
    batch, stale = buffer.take(1, learner_version=1)
    assert batch == []
    assert len(stale) == 2


def test_metrics_histogram() -> None:
    buffer = RolloutBuffer(max_staleness=2, samples_per_prompt=1)
    for prompt_id, v in enumerate([3, 2, 2, 1]):
        buffer.put(scored(prompt_id, 0, [v]))
    buffer.take(4, learner_version=3)
    m = buffer.stats.as_metrics()
    assert (m["buffer/staleness_0"], m["buffer/staleness_1"], m["buffer/staleness_2"]) == (1, 2, 1)
    assert m["buffer/staleness_mean"] == pytest.approx((0 + 1 + 1 + 2) / 4)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_staleness"):
        RolloutBuffer(max_staleness=-1, samples_per_prompt=1)
    with pytest.raises(ValueError, match="samples_per_prompt"):
        RolloutBuffer(max_staleness=0, samples_per_prompt=0)


def test_the_same_prompt_admitted_twice_forms_two_groups() -> None:
    buffer = RolloutBuffer(max_staleness=1, samples_per_prompt=2)
    for group_id in (10, 11):  # prompt 7 at the end of epoch 1 and the start of epoch 2
        buffer.put(scored(7, 0, [0], group_id=group_id))
    assert buffer.ready_groups() == 0  # two halves of two groups, not one whole group
    for group_id in (10, 11):
        buffer.put(scored(7, 1, [0], group_id=group_id))
    batch, _ = buffer.take(2, learner_version=0)
    assert [(s.rollout.group_id, s.rollout.sample_index) for s in batch] == [
        (10, 0),
        (10, 1),
        (11, 0),
        (11, 1),
    ]
