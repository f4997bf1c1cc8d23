"""The records that flow through the pipeline: sampler -> scorer (teacher or rewards) -> buffer ->
learner.

Plain dataclasses of lists / numpy arrays so they pickle cheaply through Ray's object store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# (prompt_id, chat-templated prompt token ids, gold answer or None): what a sampler turns into
# rollouts
Request = tuple[int, list[int], str | None]


@dataclass
class Rollout:
    """One sampled response of the student (the behaviour policy) to one prompt."""

    prompt_id: int  # index of the prompt in the training set
    sample_index: int  # 0 .. samples_per_prompt - 1
    prompt_ids: list[int]  # chat-templated prompt tokens
    response_ids: list[int]  # [T] sampled tokens, eos included when generated
    behaviour_logprobs: list[float]  # [T] sampler's log-prob of each sampled token
    versions: list[int]  # [T] policy version that produced each token
    finish_reason: str = "stop"  # "stop" (eos) or "length"
    answer: str | None = None  # gold answer, when the dataset has one
    # Admission id stamped by the pipeline: one per admitted prompt group, so the same prompt
    # admitted twice (an epoch boundary at eta >= 1, a re-sample) forms two groups, never one.
    group_id: int = -1

    @property
    def min_version(self) -> int:
        return min(self.versions) if self.versions else -1

    def __len__(self) -> int:
        return len(self.response_ids)


@dataclass
class TeacherScores:
    """The teacher's view of one rollout, per response token (prefill of prompt + response)."""

    logprobs: np.ndarray  # [T] float32, log π_te of the sampled token
    entropy: np.ndarray  # [T] float32, entropy of the teacher's full distribution (nats)
    topk_ids: np.ndarray  # [T, k] int64
    topk_logprobs: np.ndarray  # [T, k] float32, full-distribution log-probs (not renormalised)
    # (replica, wall-clock start, end, requests) of the batched forward that scored it: the trace
    forward_span: tuple[str, float, float, int] | None = None


@dataclass
class ScoredRollout:
    rollout: Rollout
    teacher: TeacherScores | None  # None for GRPO: no teacher, a reward instead
    # timings for the logs; GRPO: "reward" (0/1) and "advantage" (group-relative, the loss's Â)
    stats: dict[str, float] = field(default_factory=dict)
