"""The running parts of one training job, as the loop, checkpoints and fault handling see them.

``train.start_roles`` builds a :class:`Roles`; ``train.py``'s loop, ``checkpoint.py`` (save and
resume) and ``faults.py`` (learner restart) work on it. What each role must offer is spelled out
by the Protocols in ``roles.py``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from eopd_ray.data.prompts import PromptStream
from eopd_ray.eval.scoring import Verifier
from eopd_ray.pipeline import RolloutPipeline

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from eopd_ray.autoscale import SamplerScaler
    from eopd_ray.roles import LearnerRole, SamplerRole, ScorerRole, TeacherRole


@dataclass
class Roles:
    """The running parts of a job (all Ray actors / deployments; see ``eopd_ray/roles.py``)."""

    samplers: SamplerRole  # SamplerPool
    teacher: TeacherRole | None  # TeacherService; None for grpo, which learns from rewards
    learner: LearnerRole  # LearnerGroup
    pipeline: RolloutPipeline
    stream: PromptStream
    tokenizer: PreTrainedTokenizerBase
    skipped: Counter[str] = field(default_factory=Counter)
    scaler: SamplerScaler | None = None  # when sampler.min_actors < sampler.max_actors
    # Rollout grading in a killable child process (eval/scoring.py): one pathological answer
    # costs seconds and counts as wrong, it cannot hang the driver.
    verifier: Verifier = field(default_factory=lambda: Verifier(timeout_s=5.0))
    rewards: ScorerRole | None = None  # grpo: RewardScorer, the pipeline's scorer
