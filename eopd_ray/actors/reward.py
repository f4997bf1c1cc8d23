"""GRPO's scoring stage: verifiable rewards and group-relative advantages, off the driver.

``loss.variant: grpo`` (docs/design.md §1) learns from a reward instead of a teacher: 1.0 when
math-verify finds the response's last ``\\boxed{}`` equal to the prompt's gold answer, 0.0
otherwise (no box, unparsable, wrong, or over the time bound). The advantage of each of a prompt's
``G = rollout.samples_per_prompt`` rollouts is ``(R - mean_g R) / (std_g R + 1e-6)``
(:func:`~eopd_ray.learners.loss.grpo_advantages`), so a group whose rewards are all equal teaches
nothing. Both land in ``ScoredRollout.stats`` (``reward``, ``advantage``); ``teacher`` is None.

- :class:`RewardWorker`: grades one chunk of rollouts (whole prompt groups, as the pipeline
  submits them): decodes with its own tokenizer, checks in its own math-verify child process
  (``eval/scoring.py``'s :class:`Verifier`) killed past ``reward.timeout_s`` per answer, so one
  pathological answer costs that bound and scores 0. A plain class; in a run it is a Ray actor.
- :class:`RewardScorer`: the driver-side pool of ``reward.num_workers`` such actors, the
  pipeline's ``RolloutScorer`` (``eopd_ray/roles.py``): ``chain`` hands a sampler's ObjectRef to a
  worker, which Ray calls once the rollouts exist. ``RewardScorer.start(config)`` starts it.
- :func:`reward_metrics`: what a GRPO batch says about itself, for the train loop's log.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from eopd_ray.eval.scoring import Verifier
from eopd_ray.rollout import Rollout, ScoredRollout

if TYPE_CHECKING:
    import ray

    from eopd_ray.config import RunConfig

__all__ = ["RewardScorer", "RewardWorker", "group_advantages", "reward_metrics"]

# An actor that died (OOM, lost node) is restarted by Ray this often; calls queue meanwhile.
_MAX_RESTARTS = 3


def group_advantages(
    rewards: Sequence[float], prompt_ids: Sequence[int], group_size: int
) -> list[float]:
    """Group-relative advantages of consecutive groups of ``group_size`` rollouts (one prompt's).

    Raises ValueError unless the rollouts come in whole groups, each of a single prompt: a group
    split over two chunks would get the advantages of two smaller groups."""
    import torch

    from eopd_ray.learners.loss import grpo_advantages

    n = len(rewards)
    if len(prompt_ids) != n or n % group_size:
        raise ValueError(f"{n} rewards do not make whole groups of {group_size} rollouts")
    for start in range(0, n, group_size):
        if len(set(prompt_ids[start : start + group_size])) != 1:
            raise ValueError(f"rollouts {start}..{start + group_size - 1} are not one prompt's")
    rewards_PG = torch.tensor(list(rewards), dtype=torch.float64).view(-1, group_size)
    return grpo_advantages(rewards_PG).flatten().tolist()


def _soft_timeout(hard_s: float) -> float:
    """math-verify's own timeout per call (parse gold, parse answer, verify): three fit in the
    hard bound, so an answer that is merely slow times out cleanly before the child is killed."""
    return float(max(1, int(hard_s // 3)))


class RewardWorker:
    """Rewards and advantages of chunks of rollouts; owns a tokenizer and a math-verify child.

    Args:
        tokenizer_path: the student's folder or hub id (response ids -> text).
        samples_per_prompt: the group size ``G``.
        timeout_s: hard wall-clock bound per answer (``reward.timeout_s``); over it: reward 0.
    """

    def __init__(self, tokenizer_path: str, samples_per_prompt: int, timeout_s: float) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        self.group_size = samples_per_prompt
        self.verifier = Verifier(timeout_s=_soft_timeout(timeout_s), hard_timeout_s=timeout_s)
        self.verifier.check("\\boxed{1}", "1")  # start the child now, not on the first chunk

    def ready(self) -> dict[str, Any]:
        """Called once by :meth:`RewardScorer.start`: the actor is up."""
        return {"pid": os.getpid(), "timeout_s": self.verifier.hard_timeout_s}

    def reward(self, rollout: Rollout) -> float:
        """1.0 if the response's last ``\\boxed{}`` matches the gold answer, else 0.0."""
        if rollout.answer is None:
            raise ValueError(f"prompt {rollout.prompt_id} has no gold answer for GRPO's reward")
        text = self.tokenizer.decode(rollout.response_ids, skip_special_tokens=True)
        return 1.0 if self.verifier.check(text, rollout.answer).correct else 0.0

    def score(self, rollouts: list[Rollout]) -> list[ScoredRollout]:
        """One chunk (whole groups, in request order) -> its scored rollouts, same order."""
        started = time.perf_counter()
        rewards = [self.reward(r) for r in rollouts]
        advantages = group_advantages(rewards, [r.prompt_id for r in rollouts], self.group_size)
        seconds = (time.perf_counter() - started) / max(len(rollouts), 1)
        return [
            ScoredRollout(r, None, {"reward": reward, "advantage": adv, "reward_s": seconds})
            for r, reward, adv in zip(rollouts, rewards, advantages, strict=True)
        ]

    def stats(self) -> dict[str, float]:
        """Answers over the bound so far (each restarted the child)."""
        return {"verifier_restarts": float(self.verifier.restarts)}

    def close(self) -> None:
        self.verifier.close()


class RewardScorer:
    """A pool of :class:`RewardWorker` actors as the pipeline's scoring stage (round robin)."""

    retry_counter = "reward_retries"

    def __init__(self, workers: Sequence[Any]) -> None:
        self.workers = list(workers)
        self._turn = 0

    @classmethod
    def start(cls, config: RunConfig, startup_timeout_s: float = 300.0) -> RewardScorer:
        """Start ``config.reward.num_workers`` workers on the student's tokenizer; wait for them.

        Ray must be initialised."""
        import ray

        reward = config.reward
        remote = ray.remote(RewardWorker).options(
            num_cpus=reward.num_cpus, max_restarts=_MAX_RESTARTS, max_task_retries=0
        )
        args = (config.student.path, config.rollout.samples_per_prompt, reward.timeout_s)
        out = cls([remote.remote(*args) for _ in range(reward.num_workers)])
        try:
            ray.get([w.ready.remote() for w in out.workers], timeout=startup_timeout_s)
        except Exception:
            out.shutdown()
            raise
        return out

    def chain(self, rollouts_ref: ray.ObjectRef, stream: Any = None) -> ray.ObjectRef:
        """An ObjectRef of the chunk's ``list[ScoredRollout]``; Ray passes the worker the rollouts
        once the sampler has them (graded per chunk: ``stream`` is not used)."""
        worker = self.workers[self._turn % len(self.workers)]
        self._turn += 1
        return worker.score.remote(rollouts_ref)

    @staticmethod
    def retryable(exc: BaseException) -> bool:
        """A worker that died or is restarting: grade the same rollouts again (on the next one)."""
        import ray

        return isinstance(exc, ray.exceptions.RayActorError)

    def stats(self) -> list[dict[str, float]]:
        import ray

        return ray.get([w.stats.remote() for w in self.workers])

    def shutdown(self) -> None:
        """Stop every worker's math-verify child, then the actors."""
        import ray

        for worker in self.workers:
            # dead or stuck: killed below, and its child exits when the pipe closes
            with contextlib.suppress(Exception):
                ray.get(worker.close.remote(), timeout=10)
            ray.kill(worker, no_restart=True)
        self.workers = []


def reward_metrics(batch: Sequence[ScoredRollout]) -> dict[str, float]:
    """A GRPO batch's rewards, for the log: ``reward/mean``, ``reward/zero_variance_group_frac``
    (share of prompt groups whose rewards are all equal: zero advantage, no gradient),
    ``rollout/response_len_mean`` and ``time/reward_s`` (grading time, summed). Empty: ``{}``."""
    if not batch:
        return {}
    groups: defaultdict[int, list[float]] = defaultdict(list)
    for s in batch:
        if "reward" not in s.stats:
            raise ValueError(f"rollout of prompt {s.rollout.prompt_id} has no reward")
        groups[s.rollout.group_id].append(s.stats["reward"])
    rewards = [r for g in groups.values() for r in g]
    flat = sum(max(g) == min(g) for g in groups.values())
    return {
        "reward/mean": math.fsum(rewards) / len(rewards),
        "reward/zero_variance_group_frac": flat / len(groups),
        "rollout/response_len_mean": sum(len(s.rollout) for s in batch) / len(batch),
        "time/reward_s": math.fsum(s.stats.get("reward_s", 0.0) for s in batch),
    }
