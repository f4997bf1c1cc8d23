"""GRPO's rewards: group-relative advantages and batch metrics by hand, and the reward worker on a
real math-verify child process (a pathological answer costs the time bound and scores 0)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from eopd_ray.actors.reward import RewardWorker, group_advantages, reward_metrics
from eopd_ray.rollout import Rollout, ScoredRollout

PATHOLOGICAL = "\\boxed{9^{9^{9^{9}}}}"  # a tower of powers: only a timeout stops sympy


def _scored(group_id: int, reward: float, length: int, seconds: float = 0.0) -> ScoredRollout:
    rollout = Rollout(group_id, 0, [1], [2] * length, [-1.0] * length, [0] * length)
    rollout.group_id = group_id
    return ScoredRollout(rollout, None, {"reward": reward, "advantage": 0.0, "reward_s": seconds})


def test_group_advantages_by_hand() -> None:
    # group 0: rewards 1 0 0 0, mean 1/4, population std sqrt(3)/4: +sqrt(3), -1/sqrt(3) each;
    # group 1: all right, std 0: all 0 (no signal)
    adv = group_advantages([1, 0, 0, 0, 1, 1, 1, 1], [5, 5, 5, 5, 9, 9, 9, 9], group_size=4)
    std = math.sqrt(3) / 4
    expected = [0.75 / (std + 1e-6)] + [-0.25 / (std + 1e-6)] * 3 + [0.0] * 4
    assert adv == pytest.approx(expected, rel=1e-9)
    assert adv[0] == pytest.approx(math.sqrt(3), rel=1e-5)
    assert group_advantages([0, 1], [3, 3], 2) == pytest.approx([-0.5 / 0.500001, 0.5 / 0.500001])


def test_group_advantages_need_whole_groups_of_one_prompt() -> None:
    with pytest.raises(ValueError, match="whole groups of 4"):
        group_advantages([1, 0, 0], [5, 5, 5], 4)
    with pytest.raises(ValueError, match=r"rollouts 0\.\.1 are not one prompt's"):
        group_advantages([1, 0, 0, 1], [5, 6, 7, 7], 2)


def test_reward_metrics_by_hand() -> None:
    batch = [
        _scored(0, 1.0, 3, 0.25),
        _scored(0, 0.0, 1, 0.25),  # group 0: 1 0, varied
        _scored(1, 1.0, 2),
        _scored(1, 1.0, 2),  # group 1: all right
        _scored(2, 0.0, 4),
        _scored(2, 0.0, 0),  # group 2: all wrong
    ]
    m = reward_metrics(batch)
    assert m["reward/mean"] == pytest.approx(3 / 6)
    assert m["reward/zero_variance_group_frac"] == pytest.approx(2 / 3)
    assert m["rollout/response_len_mean"] == pytest.approx(12 / 6)
    assert m["time/reward_s"] == pytest.approx(0.5)
    assert reward_metrics([]) == {}
    unscored = _scored(0, 1.0, 1)
    del unscored.stats["reward"]
    with pytest.raises(ValueError, match="no reward"):
        reward_metrics([unscored])


@pytest.fixture(scope="module")
def worker(tiny_models: tuple[Path, Path]) -> Iterator[RewardWorker]:
    w = RewardWorker(str(tiny_models[1]), samples_per_prompt=2, timeout_s=5.0)
    yield w
    w.close()


def _rollouts(worker: RewardWorker, prompt_id: int, texts: list[str], gold: str) -> list[Rollout]:
    out = []
    for i, text in enumerate(texts):
        ids = worker.tokenizer.encode(text, add_special_tokens=False)
        out.append(Rollout(prompt_id, i, [1], ids, [-1.0] * len(ids), [0] * len(ids), answer=gold))
    return out


def test_rewards_and_advantages_of_a_chunk(worker: RewardWorker) -> None:
    chunk = _rollouts(worker, 0, ["so it is \\boxed{12}", "\\boxed{13}"], "12")
    chunk += _rollouts(worker, 1, ["no box at all", "\\boxed{7}"], "7.0")  # 7 == 7.0
    scored = worker.score(chunk)
    assert [s.rollout for s in scored] == chunk and all(s.teacher is None for s in scored)
    assert [s.stats["reward"] for s in scored] == [1.0, 0.0, 0.0, 1.0]
    one = 0.5 / (0.5 + 1e-6)  # a group of two, one right: mean 1/2, std 1/2
    assert [s.stats["advantage"] for s in scored] == pytest.approx([one, -one, -one, one])
    chunk[0].answer = None
    with pytest.raises(ValueError, match="prompt 0 has no gold answer"):
        worker.score(chunk)


def test_a_pathological_answer_costs_the_bound_and_scores_zero(
    tiny_models: tuple[Path, Path],
) -> None:
    # math-verify's own timeouts (1 s) outlast this bound, so only killing the child stops it
    worker = RewardWorker(str(tiny_models[1]), samples_per_prompt=2, timeout_s=0.5)
    try:
        restarts = worker.verifier.restarts
        chunk = _rollouts(worker, 3, [PATHOLOGICAL, "no answer"], "1")
        started = time.monotonic()
        scored = worker.score(chunk)
        assert time.monotonic() - started < 0.5 + 1.0
        assert worker.verifier.restarts == restarts + 1  # killed at the bound
        assert [s.stats["reward"] for s in scored] == [0.0, 0.0]
        assert [s.stats["advantage"] for s in scored] == [0.0, 0.0]
        # the next answer is graded by a fresh child (its start is not an answer's time)
        worker.verifier.check("\\boxed{0}", "0")
        again = worker.score(_rollouts(worker, 4, ["\\boxed{1}", "\\boxed{2}"], "1"))
        assert [s.stats["reward"] for s in again] == [1.0, 0.0]
    finally:
        worker.close()
