"""RolloutBuffer: scored rollouts waiting for the learner, bounded staleness (docs/design.md §2).

The learner at policy version ``v`` trains only on rollouts whose every token was produced at a
version ``>= v - max_staleness``. Admission control in the pipeline keeps samplers from running
further ahead than that, so stale rollouts should be rare; those that still occur (a sampler that
was restarted, a slow teacher) are counted and handed back to the caller to drop or re-score.

Rollouts are grouped by admission (``Rollout.group_id``, one per admitted prompt, stamped by the
pipeline): a batch holds whole groups (all ``samples_per_prompt`` samples of a prompt), which GRPO
needs and which keeps per-prompt statistics meaningful.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from eopd_ray.rollout import ScoredRollout


@dataclass
class BufferStats:
    received: int = 0
    consumed: int = 0
    stale: int = 0  # rollouts found too old at take time (dropped or re-scored by the caller)
    # staleness (learner version - oldest token version) of every consumed rollout
    staleness: Counter[int] = field(default_factory=Counter)

    def as_metrics(self) -> dict[str, float]:
        total = sum(self.staleness.values())
        metrics = {
            "buffer/received": float(self.received),
            "buffer/consumed": float(self.consumed),
            "buffer/stale": float(self.stale),
            "buffer/staleness_mean": (
                sum(k * n for k, n in self.staleness.items()) / total if total else 0.0
            ),
            "buffer/staleness_max": float(max(self.staleness, default=0)),
        }
        for lag, count in sorted(self.staleness.items()):
            metrics[f"buffer/staleness_{lag}"] = float(count)
        return metrics


class RolloutBuffer:
    """FIFO of complete prompt groups; ``take`` returns only groups fresh enough for the learner."""

    def __init__(self, max_staleness: int, samples_per_prompt: int) -> None:
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        if samples_per_prompt < 1:
            raise ValueError(f"samples_per_prompt must be >= 1, got {samples_per_prompt}")
        self.max_staleness = max_staleness
        self.samples_per_prompt = samples_per_prompt
        self._partial: dict[int, list[ScoredRollout]] = {}
        self._ready: OrderedDict[int, list[ScoredRollout]] = OrderedDict()
        self.stats = BufferStats()

    def put(self, scored: ScoredRollout) -> None:
        """Add one scored rollout; its group becomes ready when all its samples have arrived."""
        group_id = scored.rollout.group_id
        group = self._partial.setdefault(group_id, [])
        group.append(scored)
        self.stats.received += 1
        if len(group) == self.samples_per_prompt:
            del self._partial[group_id]
            group.sort(key=lambda s: s.rollout.sample_index)
            self._ready[group_id] = group

    def ready_groups(self) -> int:
        return len(self._ready)

    def held_groups(self) -> list[list[ScoredRollout]]:
        """Every group held, complete or not (what a checkpoint records as not yet trained)."""
        return [*self._ready.values(), *self._partial.values()]

    def pending_rollouts(self) -> int:
        """Rollouts held (ready or waiting for their group's other samples)."""
        return sum(len(g) for g in self._ready.values()) + sum(
            len(g) for g in self._partial.values()
        )

    @staticmethod
    def _oldest_version(group: list[ScoredRollout]) -> int:
        return min(s.rollout.min_version for s in group)

    def is_fresh(self, group: list[ScoredRollout], learner_version: int) -> bool:
        return learner_version - self._oldest_version(group) <= self.max_staleness

    def take(
        self, num_groups: int, learner_version: int
    ) -> tuple[list[ScoredRollout], list[ScoredRollout]]:
        """Pop up to ``num_groups`` fresh groups, oldest policy version first (arrival order
        among equal versions). Scored chunks can arrive out of order (e.g. one scoring task starts
        late); taking the oldest first keeps them from ageing past the bound behind newer ones.

        Returns ``(batch, stale)``: the rollouts of the fresh groups, flattened, and every rollout
        of the stale groups met on the way (removed from the buffer; the caller drops or rescores).
        """
        batch: list[ScoredRollout] = []
        stale: list[ScoredRollout] = []
        taken = 0
        oldest_first = sorted(self._ready, key=lambda gid: self._oldest_version(self._ready[gid]))
        for group_id in oldest_first:
            if taken == num_groups:
                break
            group = self._ready.pop(group_id)
            if not self.is_fresh(group, learner_version):
                stale.extend(group)
                continue
            batch.extend(group)
            taken += 1
            for scored in group:
                self.stats.staleness[learner_version - scored.rollout.min_version] += 1
        self.stats.consumed += len(batch)
        self.stats.stale += len(stale)
        return batch, stale
