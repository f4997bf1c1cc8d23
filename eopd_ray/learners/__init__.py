"""Learner-side code: the EOPD loss and its baselines."""

from eopd_ray.learners.loss import VARIANT_ARGS, VARIANTS, eopd_loss, grpo_advantages

__all__ = ["VARIANTS", "VARIANT_ARGS", "eopd_loss", "grpo_advantages"]
