"""Collation of scored rollouts and the batch splits of Algorithm 1 (no Ray, no models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eopd_ray.learners.batch import (
    collate,
    count_tokens,
    dummy_batch,
    micro_batches,
    shard_by_tokens,
    split_mini_batches,
)
from eopd_ray.rollout import Rollout, ScoredRollout, TeacherScores

PAD = 0


def scored(
    prompt: list[int], response: list[int], *, k: int = 2, version: int = 3, stats=None
) -> ScoredRollout:
    """Values encode their response position so the hand check can read them back."""
    T = len(response)
    t = np.arange(T, dtype=np.float32)
    return ScoredRollout(
        Rollout(
            prompt_id=0,
            sample_index=0,
            prompt_ids=prompt,
            response_ids=response,
            behaviour_logprobs=(-1.0 - t).tolist(),
            versions=[version + i for i in range(T)],
        ),
        TeacherScores(
            logprobs=-10.0 - t,
            entropy=0.5 + t,
            topk_ids=np.stack([100 + t, 200 + t, 300 + t][:k], axis=1).astype(np.int64),
            topk_logprobs=np.stack([-0.1 - t, -2.0 - t, -3.0 - t][:k], axis=1),
        ),
        stats=stats or {},
    )


def test_collate_two_rollouts_by_hand() -> None:
    # Rollout a: prompt [5, 6], response [7, 8, 9]: input 5 6 7 8 9, L = 5.
    # Rollout b: prompt [11, 12, 13], response [14]:  input 11 12 13 14 PAD.
    a = scored([5, 6], [7, 8, 9])
    b = scored([11, 12, 13], [14], version=1)
    out = collate([a, b], PAD, top_k=2)

    assert out["input_ids"].tolist() == [[5, 6, 7, 8, 9], [11, 12, 13, 14, PAD]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # logits[:, j] predicts input_ids[:, j + 1]
    assert out["tokens"].tolist() == [[6, 7, 8, 9], [12, 13, 14, PAD]]
    # a's response tokens 7, 8, 9 are predicted at positions 1, 2, 3; b's 14 at position 2.
    assert out["mask"].tolist() == [[False, True, True, True], [False, False, True, False]]
    assert out["behaviour_logprobs"].tolist() == [[0, -1, -2, -3], [0, 0, -1, 0]]
    assert out["teacher_logprobs"].tolist() == [[0, -10, -11, -12], [0, 0, -10, 0]]
    assert out["teacher_entropy"].tolist() == [[0, 0.5, 1.5, 2.5], [0, 0, 0.5, 0]]
    assert out["versions"].tolist() == [[-1, 3, 4, 5], [-1, -1, 1, -1]]
    assert out["teacher_topk_ids"].shape == (2, 4, 2)
    assert out["teacher_topk_ids"][0].tolist() == [[0, 0], [100, 200], [101, 201], [102, 202]]
    assert out["teacher_topk_ids"][1].tolist() == [[0, 0], [0, 0], [100, 200], [0, 0]]
    lp = out["teacher_topk_logprobs"]
    assert torch.allclose(lp[0, 2], torch.tensor([-1.1, -3.0]))
    assert torch.allclose(lp[1, 2], torch.tensor([-0.1, -2.0]))
    assert lp[1, 3].tolist() == [0, 0]
    assert out["tokens"][out["mask"]].tolist() == [7, 8, 9, 14]  # exactly the responses
    assert out["mask"].dtype == torch.bool and out["tokens"].dtype == torch.long
    assert "advantages" not in out
    assert count_tokens([a, b]) == 4


def test_collate_keeps_the_k_most_likely_and_checks_shapes() -> None:
    a = scored([1], [2, 3], k=3)
    a.teacher.topk_logprobs[:, [0, 2]] = a.teacher.topk_logprobs[:, [2, 0]]  # unsorted input
    out = collate([a], PAD, top_k=2)
    assert out["teacher_topk_ids"][0, 0].tolist() == [300, 200]  # -0.1 (id 300) then -2.0
    with pytest.raises(ValueError, match="top-2, the loss needs top-3"):
        collate([scored([1], [2])], PAD, top_k=3)
    with pytest.raises(ValueError, match="empty prompt"):
        collate([scored([], [2])], PAD, top_k=2)
    bad = scored([1], [2, 3])
    bad.rollout.versions = [0]
    with pytest.raises(ValueError, match="2 response tokens"):
        collate([bad], PAD, top_k=2)


def test_collate_empty_response_and_advantages() -> None:
    out = collate(
        [scored([1, 2], [], stats={"advantage": 0.5}), scored([1], [4], stats={"advantage": -1})],
        PAD,
        top_k=2,
    )
    assert out["mask"].tolist() == [[False], [True]]
    assert out["advantages"].tolist() == [0.5, -1.0]


def test_dummy_batch_has_no_response_token() -> None:
    d = dummy_batch(PAD, top_k=4)
    assert d["input_ids"].shape == (1, 2) and not d["mask"].any()
    assert d["teacher_topk_ids"].shape == (1, 1, 4)
    assert set(d) == set(collate([scored([1], [2])], PAD, top_k=2))
    # GRPO: the keys of a batch without teacher scores (advantages come from the caller)
    plain = scored([1], [2], stats={"advantage": 1.0})
    plain.teacher = None
    assert set(dummy_batch(PAD, top_k=None)) == set(collate([plain], PAD, top_k=None)) - {
        "advantages"
    }


def test_collate_without_teacher_scores_grpo() -> None:
    # GRPO rollouts: no teacher tensors at all, the advantages instead; the rest as with them
    a = scored([5, 6], [7, 8, 9], stats={"advantage": 1.5, "reward": 1.0})
    b = scored([11, 12, 13], [14], version=1, stats={"advantage": -1.5, "reward": 0.0})
    with_teacher = collate([a, b], PAD, top_k=2)
    a.teacher = b.teacher = None
    out = collate([a, b], PAD, top_k=None)
    assert not any(key.startswith("teacher_") for key in out)
    assert set(with_teacher) - set(out) == {
        "teacher_logprobs",
        "teacher_entropy",
        "teacher_topk_ids",
        "teacher_topk_logprobs",
    }
    for key in out:
        assert torch.equal(out[key], with_teacher[key]), key
    assert out["advantages"].tolist() == [1.5, -1.5]
    assert out["behaviour_logprobs"].tolist() == [[0, -1, -2, -3], [0, 0, -1, 0]]
    c = scored([1], [2])  # one rollout with teacher scores among ones without: refused
    with pytest.raises(ValueError, match="2 of 3 rollouts lack teacher scores"):
        collate([a, c, b], PAD, top_k=2)
    # top_k None: the loss needs no teacher input, so none is collated even if it was scored
    assert set(collate([c], PAD, top_k=None)) == set(out) - {"advantages"}
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        collate([c], PAD, top_k=0)


def test_split_mini_batches_is_contiguous_and_balanced() -> None:
    assert split_mini_batches(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_mini_batches(list(range(4)), 1) == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match="cannot split 2 rollouts into 3"):
        split_mini_batches([1, 2], 3)
    with pytest.raises(ValueError):
        split_mini_batches([1, 2], 0)


def test_shard_by_tokens_balances_and_covers() -> None:
    lens = [10, 1, 1, 8, 2, 2]
    rollouts = [scored([1], [2] * (n - 1) if n > 1 else [2]) for n in lens]
    shards = shard_by_tokens(rollouts, 2)
    assert sorted(i for s in shards for i in s) == list(range(6))
    loads = [sum(lens[i] + (lens[i] == 1) for i in s) for s in shards]
    assert abs(loads[0] - loads[1]) <= 2
    assert shard_by_tokens(rollouts[:1], 3) == [[0], [], []]


def test_micro_batches_group_similar_lengths() -> None:
    rollouts = [scored([1], [2] * n) for n in (5, 1, 4, 2, 3)]
    mbs = micro_batches(rollouts, 2)
    assert [[len(r.rollout.response_ids) for r in m] for m in mbs] == [[1, 2], [3, 4], [5]]
