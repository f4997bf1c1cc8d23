"""Scored rollouts -> padded tensors for a causal LM, and the batch splits of Algorithm 1.

Alignment (shifted by one): ``input_ids = prompt + response`` is right-padded to ``L`` and the
model's ``logits[:, :-1]`` predict ``input_ids[:, 1:]``. Every per-token tensor therefore has
``L - 1`` positions, and response token ``i`` of a rollout with a ``P``-token prompt sits at
position ``P - 1 + i``: there ``mask`` is true and the sampler's and the teacher's values go.
GRPO rollouts carry no teacher scores (``ScoredRollout.teacher`` None): their batches have no
teacher tensors at all, and an ``advantages`` tensor instead.

Splits: a batch of rollouts is cut into ``n`` contiguous mini-batches (one optimizer step each,
:func:`split_mini_batches`); each mini-batch is sharded over the data-parallel ranks, balancing
response tokens (:func:`shard_by_tokens`); each shard is cut into micro-batches of at most ``m``
sequences (:func:`micro_batches`), and every rank runs the same number of micro-batches (the
missing ones are empty, :func:`dummy_batch`) so that the collectives of ZeRO line up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch

from eopd_ray.rollout import ScoredRollout, TeacherScores

__all__ = [
    "collate",
    "count_tokens",
    "dummy_batch",
    "micro_batches",
    "shard_by_tokens",
    "split_mini_batches",
]

T = TypeVar("T")


def count_tokens(scored: Sequence[ScoredRollout]) -> int:
    """Response tokens in ``scored``: the ``N`` that normalises a mini-batch's loss."""
    return sum(len(s.rollout.response_ids) for s in scored)


def _topk(teacher_ids: np.ndarray, teacher_lp: np.ndarray, k: int, n: int, where: str):
    ids = np.asarray(teacher_ids).reshape(n, -1) if n else np.zeros((0, k), np.int64)
    lp = np.asarray(teacher_lp, dtype=np.float32).reshape(n, -1) if n else np.zeros((0, k))
    if ids.shape != lp.shape:
        raise ValueError(f"{where}: teacher topk_ids {ids.shape} vs topk_logprobs {lp.shape}")
    if n and ids.shape[1] < k:
        raise ValueError(f"{where}: teacher kept top-{ids.shape[1]}, the loss needs top-{k}")
    if n and ids.shape[1] > k:  # keep the k most likely, whatever the order they came in
        order = np.argsort(-lp, axis=1, kind="stable")[:, :k]
        ids = np.take_along_axis(ids, order, axis=1)
        lp = np.take_along_axis(lp, order, axis=1)
    return ids, lp


def collate(
    scored: Sequence[ScoredRollout], pad_id: int, *, top_k: int | None
) -> dict[str, torch.Tensor]:
    """Pad ``scored`` into one causal-LM batch (see the module docstring for the alignment).

    Returns, with ``B = len(scored)`` and ``L`` the longest ``prompt + response``:

    - ``input_ids`` [B, L] long, right-padded with ``pad_id``; ``attention_mask`` [B, L] long.
    - ``tokens`` [B, L-1] long (``input_ids[:, 1:]``); ``mask`` [B, L-1] bool, true at response
      positions only.
    - ``behaviour_logprobs`` [B, L-1] float32, 0 outside the mask.
    - only when the rollouts carry teacher scores (all or none may: GRPO's do not) and ``top_k``
      is given (None: the loss needs no teacher input): ``teacher_logprobs``,
      ``teacher_entropy`` [B, L-1] float32; ``teacher_topk_ids`` [B, L-1, k] long and
      ``teacher_topk_logprobs`` [B, L-1, k] float32 (the teacher's ``top_k`` most likely ids);
      0 outside the mask.
    - ``versions`` [B, L-1] long, the policy version of each response token, -1 elsewhere.
    - ``advantages`` [B] float32, only when every rollout carries ``stats["advantage"]`` (GRPO).
    """
    if not scored:
        raise ValueError("collate needs at least one rollout")
    with_teacher = [s.teacher is not None for s in scored]
    if any(with_teacher) and not all(with_teacher):
        missing = with_teacher.count(False)
        raise ValueError(f"{missing} of {len(scored)} rollouts lack teacher scores")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    k = top_k if all(with_teacher) else None
    L = max(max(_sequence_lengths(scored)), 2)
    out = _empty_batch(len(scored), L, pad_id, k)
    for b, s in enumerate(scored):
        _fill_row(out, b, s, k)
    out["tokens"] = out["input_ids"][:, 1:].clone()
    if all("advantage" in s.stats for s in scored):
        advantages = [s.stats["advantage"] for s in scored]
        out["advantages"] = torch.tensor(advantages, dtype=torch.float32)
    return out


def _sequence_lengths(scored: Sequence[ScoredRollout]) -> list[int]:
    """``prompt + response`` lengths; checks each rollout's prompt and per-token lists."""
    lengths = []
    for i, s in enumerate(scored):
        r = s.rollout
        if not r.prompt_ids:
            raise ValueError(f"rollout {i} (prompt {r.prompt_id}): empty prompt")
        T = len(r.response_ids)
        if len(r.behaviour_logprobs) != T or len(r.versions) != T:
            raise ValueError(
                f"rollout {i} (prompt {r.prompt_id}): {T} response tokens but "
                f"{len(r.behaviour_logprobs)} behaviour log-probs and {len(r.versions)} versions"
            )
        lengths.append(len(r.prompt_ids) + T)
    return lengths


def _empty_batch(B: int, L: int, pad_id: int, top_k: int | None) -> dict[str, torch.Tensor]:
    """All of :func:`collate`'s tensors but ``tokens``, padded / zero / -1 (versions); the
    teacher's only with a ``top_k`` (None: rollouts without teacher scores)."""
    out = {
        "input_ids": torch.full((B, L), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((B, L), dtype=torch.long),
        "mask": torch.zeros((B, L - 1), dtype=torch.bool),
        "behaviour_logprobs": torch.zeros((B, L - 1), dtype=torch.float32),
        "versions": torch.full((B, L - 1), -1, dtype=torch.long),
    }
    if top_k is not None:
        out |= {
            "teacher_logprobs": torch.zeros((B, L - 1), dtype=torch.float32),
            "teacher_entropy": torch.zeros((B, L - 1), dtype=torch.float32),
            "teacher_topk_ids": torch.zeros((B, L - 1, top_k), dtype=torch.long),
            "teacher_topk_logprobs": torch.zeros((B, L - 1, top_k), dtype=torch.float32),
        }
    return out


def _fill_row(out: dict[str, torch.Tensor], b: int, s: ScoredRollout, top_k: int | None) -> None:
    """Write rollout ``s`` into row ``b`` of :func:`_empty_batch`'s tensors."""
    r = s.rollout
    P, T = len(r.prompt_ids), len(r.response_ids)
    out["input_ids"][b, :P] = torch.as_tensor(r.prompt_ids, dtype=torch.long)
    out["attention_mask"][b, : P + T] = 1
    if T == 0:
        return
    sl = slice(P - 1, P - 1 + T)
    out["input_ids"][b, P : P + T] = torch.as_tensor(r.response_ids, dtype=torch.long)
    out["mask"][b, sl] = True
    out["behaviour_logprobs"][b, sl] = torch.as_tensor(r.behaviour_logprobs, dtype=torch.float32)
    out["versions"][b, sl] = torch.as_tensor(r.versions, dtype=torch.long)
    if s.teacher is not None and top_k is not None:
        _fill_teacher(out, b, sl, s.teacher, top_k, f"rollout {b} (prompt {r.prompt_id})")


def _fill_teacher(
    out: dict[str, torch.Tensor], b: int, sl: slice, te: TeacherScores, top_k: int, where: str
) -> None:
    """Write the teacher's scores of row ``b``'s ``T`` response tokens at positions ``sl``."""
    T = sl.stop - sl.start
    for name, arr in (("logprobs", te.logprobs), ("entropy", te.entropy)):
        if np.asarray(arr).shape != (T,):
            raise ValueError(f"{where}: teacher {name} has shape {np.shape(arr)}, want ({T},)")
    ids, lp = _topk(te.topk_ids, te.topk_logprobs, top_k, T, where)
    out["teacher_logprobs"][b, sl] = torch.tensor(np.asarray(te.logprobs, dtype=np.float32))
    out["teacher_entropy"][b, sl] = torch.tensor(np.asarray(te.entropy, dtype=np.float32))
    out["teacher_topk_ids"][b, sl] = torch.tensor(ids, dtype=torch.long)
    out["teacher_topk_logprobs"][b, sl] = torch.tensor(lp, dtype=torch.float32)


def dummy_batch(pad_id: int, *, top_k: int | None) -> dict[str, torch.Tensor]:
    """A one-sequence batch with no response token (all-false ``mask``).

    A rank whose shard has fewer micro-batches than another rank's runs these, so that every rank
    does the same number of forward/backward passes (ZeRO's collectives must line up); its loss is
    an exact zero with a graph, so it adds nothing to the gradient. ``top_k`` None: no teacher
    tensors, the keys of a GRPO batch (whose ``advantages`` the loss's caller fills in).
    """
    out = _empty_batch(1, 2, pad_id, top_k)
    out["attention_mask"][:] = 1
    out["tokens"] = out["input_ids"][:, 1:].clone()
    return out


def split_mini_batches(rollouts: Sequence[T], n: int) -> list[list[T]]:
    """Cut ``rollouts`` into ``n`` contiguous parts whose sizes differ by at most one.

    Contiguous, so that samples of one prompt (listed together) stay in one optimizer step.
    """
    if n < 1:
        raise ValueError(f"mini_batches must be >= 1, got {n}")
    if n > len(rollouts):
        raise ValueError(f"cannot split {len(rollouts)} rollouts into {n} mini-batches")
    size, extra = divmod(len(rollouts), n)
    out, start = [], 0
    for i in range(n):
        stop = start + size + (i < extra)
        out.append(list(rollouts[start:stop]))
        start = stop
    return out


def _cost(s: ScoredRollout) -> int:
    return len(s.rollout.prompt_ids) + len(s.rollout.response_ids)


def shard_by_tokens(scored: Sequence[ScoredRollout], world_size: int) -> list[list[int]]:
    """Indices of ``scored`` per data-parallel rank, balancing ``prompt + response`` tokens.

    Greedy longest-first onto the least-loaded rank (ties: fewer sequences, then lower rank), so
    the ranks finish their forward/backward passes at about the same time. Deterministic.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    order = sorted(range(len(scored)), key=lambda i: (-_cost(scored[i]), i))
    load = [(0, 0)] * world_size
    shards: list[list[int]] = [[] for _ in range(world_size)]
    for i in order:
        rank = min(range(world_size), key=lambda r: (load[r], r))
        shards[rank].append(i)
        tokens, count = load[rank]
        load[rank] = (tokens + _cost(scored[i]), count + 1)
    return [sorted(s) for s in shards]


def micro_batches(scored: Sequence[ScoredRollout], size: int) -> list[list[ScoredRollout]]:
    """Micro-batches of at most ``size`` sequences, of similar lengths (less padding)."""
    if size < 1:
        raise ValueError(f"micro-batch size must be >= 1, got {size}")
    ordered = sorted(scored, key=_cost)
    return [list(ordered[i : i + size]) for i in range(0, len(ordered), size)]
