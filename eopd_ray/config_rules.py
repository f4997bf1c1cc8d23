"""The cross-field rules of ``RunConfig``: a setting that makes another wrong is refused at load,
with one line that names both (``RunConfig``'s validator calls :func:`check_cross_field_rules`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from eopd_ray.config import RunConfig


def check_cross_field_rules(c: RunConfig) -> None:
    """Raise ``ValueError`` (pydantic reports it as the config's error) on the first broken rule."""
    _variant_settings(c)
    _publication_can_overlap(c)
    _sequences_fit_the_engine(c)


def _variant_settings(c: RunConfig) -> None:
    if c.loss.variant == "grpo" and c.rollout.samples_per_prompt < 2:
        raise ValueError(
            "loss.variant grpo needs rollout.samples_per_prompt >= 2 (group-relative "
            f"advantages over one sample are 0), got {c.rollout.samples_per_prompt}"
        )
    if c.uses_teacher and c.teacher is None:
        raise ValueError(f"loss.variant {c.loss.variant} needs a teacher: set teacher.path")
    if c.loss.variant != "kd" and c.data.teacher_responses is not None:
        raise ValueError(
            f"data.teacher_responses is read by loss.variant kd only, not {c.loss.variant}"
        )
    if c.loss.variant != "kd" and (c.rollout.temperature != 1 or c.rollout.top_p < 1):
        # vLLM reports log-probs of the unmodified distribution, so the importance ratio
        # would compare pi_theta with a distribution the sampler did not sample from
        raise ValueError(
            "rollout.temperature must be 1 and rollout.top_p 1 for on-policy variants (the "
            "importance ratio uses the sampler's log-probs of the unmodified distribution), "
            f"got temperature {c.rollout.temperature}, top_p {c.rollout.top_p}"
        )
    cap = c.pipeline.behaviour_weight_cap
    if cap is not None and c.pipeline.importance != "decoupled":
        raise ValueError(
            "pipeline.behaviour_weight_cap needs pipeline.importance: decoupled "
            f"(it caps the proximal / behaviour weight), got {c.pipeline.importance}"
        )


def _publication_can_overlap(c: RunConfig) -> None:
    if c.pipeline.overlap_publication and not c.overlaps_publication:
        raise ValueError(
            "pipeline.overlap_publication needs pipeline.max_staleness >= 1 (at 0 the next "
            "batch must come from the new weights) and sampler.weight_sync: collective, got "
            f"max_staleness {c.pipeline.max_staleness}, {c.sampler.weight_sync}"
        )


def _sequences_fit_the_engine(c: RunConfig) -> None:
    longest = c.rollout.max_prompt_tokens + c.rollout.max_response_tokens
    if longest > c.sampler.max_model_len:
        raise ValueError(
            f"rollout.max_prompt_tokens + rollout.max_response_tokens = {longest} exceeds "
            f"sampler.max_model_len ({c.sampler.max_model_len}): raise max_model_len or "
            "shorten the prompts / responses"
        )
