"""Chunked full-vocabulary statistics: log-probs, entropy and top-k without a [N, V] float32 tensor.

The teacher (entropy and top-k of its full next-token distribution, docs/design.md §1-2), the
loss (the student's log-probs at the sampled token and at the teacher's top-k ids, its entropy)
and the learner (log-probs of the sampled tokens) all reduce ``[..., V]`` logits to a few numbers
per position. V is ~150k for Qwen3, so a float32 copy of all positions' logits would dwarf the
model's activations. Here positions are taken a chunk at a time:

- :func:`chunk_stats`: the statistics of one chunk ``[n, V]`` of logits, in float32 math (or
  wider), differentiable;
- :func:`vocab_stats`: the chunk loop, over a logits tensor ``[*P, V]`` or over a
  ``logits_fn(start, end)`` that makes the logits of positions ``start:end`` on demand (e.g.
  :func:`output_layer_fn`: the output layer applied to a slice of hidden states, so that not even
  the model-dtype ``[N, V]`` logits exist at once). Under grad each chunk can run under activation
  checkpointing: autograd then keeps only the chunk's inputs and its small outputs, and the
  backward pass recomputes one chunk at a time.

Statistics are computed from ``z`` (the logits in the math dtype) and ``lse = logsumexp(z)``:
``log p(x) = z[x] - lse``, ``H = -Σ p log p`` with ``p = 0`` entries (``-inf`` logits)
contributing 0, top-k of ``z`` (full-distribution log-probs, not renormalised over the top-k).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

__all__ = ["LogitsFn", "VocabStats", "chunk_stats", "output_layer_fn", "vocab_stats"]

LogitsFn = Callable[[int, int], torch.Tensor]  # (start, end) -> logits [end - start, V]


class VocabStats(NamedTuple):
    """Per-position statistics; a field is None unless it was asked for.

    With ``P`` the positions' shape (``[n]`` for :func:`chunk_stats`): ``logprobs`` [*P] log-prob
    of the target token; ``entropy`` [*P] in nats; ``topk_ids`` [*P, k] int64 and
    ``topk_logprobs`` [*P, k], sorted by decreasing log-prob; ``ids_logprobs`` [*P, m], log-probs
    at the given ``ids``. Floats are in the math dtype (float32 for bf16 / fp16 / fp32 logits)."""

    logprobs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None
    topk_logprobs: torch.Tensor | None = None
    ids_logprobs: torch.Tensor | None = None


def chunk_stats(
    logits: torch.Tensor,
    targets: torch.Tensor | None = None,
    *,
    ids: torch.Tensor | None = None,
    top_k: int = 0,
    entropy: bool = False,
    valid: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> VocabStats:
    """The statistics of one chunk of logits ``[n, V]`` (any float dtype); differentiable.

    ``targets`` [n]: tokens whose log-probs are wanted; ``ids`` [n, m]: more ids per position
    whose log-probs are wanted (e.g. the teacher's top-k, scored by the student); ``top_k``: this
    distribution's own top-k (0: none); ``entropy``: whether to compute it. ``valid`` [n] bool:
    where False the logits are replaced by zeros first, so NaN/inf garbage at masked positions
    reaches neither the outputs nor the gradient (whose value there is exactly 0). ``dtype``: the
    math dtype, default ``promote_types(logits.dtype, float32)`` (float64 stays float64).
    Ids are not range-checked here (see :func:`vocab_stats`).
    """
    z = logits.to(dtype or torch.promote_types(logits.dtype, torch.float32))  # [n, V]
    if valid is not None:
        z = torch.where(valid[:, None].to(z.device), z, 0.0)
    lse = torch.logsumexp(z, dim=-1)  # [n]
    out: dict[str, torch.Tensor] = {}
    if targets is not None:
        out["logprobs"] = z.gather(-1, targets[:, None].to(z.device)).squeeze(-1) - lse
    if ids is not None:
        out["ids_logprobs"] = z.gather(-1, ids.to(z.device)) - lse[:, None]
    if top_k > 0:
        values, out["topk_ids"] = z.topk(top_k, dim=-1)
        out["topk_logprobs"] = values - lse[:, None]
    if entropy:
        logp = z - lse[:, None]  # [n, V]
        del z  # without grad, its memory is free from here on
        p = logp.exp()
        # -Σ p log p; positions with p = 0 (logit -inf) contribute 0, not 0 * -inf = nan.
        out["entropy"] = -torch.where(p > 0, p * logp, 0.0).sum(dim=-1)
    return VocabStats(**out)


def output_layer_fn(
    hidden: torch.Tensor,
    output_layer: Callable[[torch.Tensor], torch.Tensor],
    softcap: float | None = None,
) -> LogitsFn:
    """A :data:`LogitsFn` applying ``output_layer`` to ``hidden[start:end]``.

    ``hidden`` [N, H] are final (normed) hidden states; the logits are [end - start, V].
    ``softcap``: Gemma-style final logit soft-capping ``softcap * tanh(logits / softcap)`` (in
    float32), when the model has it."""

    def logits_fn(start: int, end: int) -> torch.Tensor:
        logits = output_layer(hidden[start:end])
        if softcap is not None:
            logits = softcap * torch.tanh(logits.float() / softcap)
        return logits

    return logits_fn


def _row_blocks(logits: torch.Tensor) -> list[torch.Tensor]:
    """``logits`` [*P, V] as 2-D [n, V] views covering the positions in order, without a copy:
    one block when the positions can be flattened (contiguous), else one per leading index
    (e.g. ``logits[:, :-1]``)."""
    if logits.dim() == 2:
        return [logits]
    try:
        return [logits.view(-1, logits.shape[-1])]
    except RuntimeError:
        return [block for row in logits.unbind(0) for block in _row_blocks(row)]


def _chunks(
    logits: torch.Tensor | LogitsFn, num_positions: int, chunk_size: int
) -> Iterator[tuple[torch.Tensor | None, int, int]]:
    """``(chunk or None, start, end)`` over the flat positions; None: call the logits_fn. At least
    one (possibly empty) chunk, so that the outputs keep their shapes for zero positions."""
    if not isinstance(logits, torch.Tensor):
        for start in range(0, max(num_positions, 1), chunk_size):
            yield None, start, min(start + chunk_size, num_positions)
        return
    start = 0
    for block in _row_blocks(logits):
        # split (not slicing): one autograd node, whose backward concatenates the chunk grads
        # instead of adding one full-size zero-padded gradient per chunk.
        for chunk in block.split(chunk_size) if block.shape[0] else [block]:
            yield chunk, start, start + chunk.shape[0]
            start += chunk.shape[0]


def _check_ids(
    vocab: int, top_k: int, targets: torch.Tensor | None, ids: torch.Tensor | None
) -> None:
    if top_k > vocab:
        raise ValueError(f"k ({top_k}) exceeds the vocabulary size ({vocab})")
    given = [(name, x) for name, x in (("target", targets), ("id", ids)) if x is not None]
    given = [(name, x) for name, x in given if x.numel()]
    if not given:
        return
    bounds = torch.stack([b for _, x in given for b in torch.aminmax(x)]).tolist()  # one sync
    for i, (name, _) in enumerate(given):
        low, high = bounds[2 * i : 2 * i + 2]
        if low < 0 or high >= vocab:
            raise ValueError(f"{name} ids must lie in [0, {vocab}), got values in [{low}, {high}]")


def _positions_shape(
    logits: torch.Tensor | LogitsFn,
    targets: torch.Tensor | None,
    ids: torch.Tensor | None,
    valid: torch.Tensor | None,
    num_positions: int | None,
) -> tuple[int, ...]:
    """The positions' shape P, checked against every per-position input."""
    if isinstance(logits, torch.Tensor):
        if logits.dim() < 2:
            raise ValueError(f"logits must be [*P, V], got shape {tuple(logits.shape)}")
        shape = tuple(logits.shape[:-1])
    elif targets is not None:
        shape = tuple(targets.shape)
    elif ids is not None:
        shape = tuple(ids.shape[:-1])
    elif valid is not None:
        shape = tuple(valid.shape)
    elif num_positions is not None:
        shape = (num_positions,)
    else:
        raise ValueError("a logits_fn needs targets, ids, valid or num_positions")
    for name, x, want in (("targets", targets, shape), ("valid", valid, shape)):
        if x is not None and tuple(x.shape) != want:
            raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    if ids is not None and tuple(ids.shape[:-1]) != shape:
        raise ValueError(f"ids must have shape {(*shape, 'm')}, got {tuple(ids.shape)}")
    if num_positions is not None and num_positions != (n := int(torch.Size(shape).numel())):
        raise ValueError(f"num_positions is {num_positions}, but the inputs have {n}")
    return shape


def _assemble(
    parts: list[VocabStats], shape: tuple[int, ...], top_k: int, num_ids: int | None
) -> VocabStats:
    """The chunks' statistics concatenated (one autograd node each) and shaped [*P, ...]."""
    tails = {"topk_ids": (top_k,), "topk_logprobs": (top_k,), "ids_logprobs": (num_ids,)}
    fields = {}
    for name, *values in zip(VocabStats._fields, *parts, strict=True):
        if values[0] is not None:
            fields[name] = torch.cat(values).view(*shape, *tails.get(name, ()))
    return VocabStats(**fields)


def _check_sizes(chunk_size: int, top_k: int, vocab_limit: int | None) -> None:
    """Raises ValueError for ``chunk_size`` < 1, ``top_k`` < 0 or ``vocab_limit`` < 1."""
    for name, value, low in (("chunk_size", chunk_size, 1), ("top_k", top_k, 0)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if vocab_limit is not None and vocab_limit < 1:
        raise ValueError(f"vocab_limit must be >= 1, got {vocab_limit}")


_ChunkFn = Callable[[torch.Tensor | None, int, int], VocabStats]  # (chunk or None, start, end)


def _chunk_runner(
    logits_fn: LogitsFn | None,
    flat_targets: torch.Tensor | None,
    flat_ids: torch.Tensor | None,
    flat_valid: torch.Tensor | None,
    *,
    top_k: int,
    entropy: bool,
    vocab_limit: int | None,
    dtype: torch.dtype | None,
) -> _ChunkFn:
    """The statistics of flat positions ``start:end``, from ``chunk`` [n, V] or ``logits_fn``.

    ``flat_targets`` [N], ``flat_ids`` [N, m], ``flat_valid`` [N]: the inputs over all N flat
    positions. The ids are range-checked once, by the first call (one host sync)."""
    checked = False

    def run(chunk: torch.Tensor | None, start: int, end: int) -> VocabStats:
        nonlocal checked
        z = chunk if logits_fn is None else logits_fn(start, end)
        if vocab_limit is not None:
            z = z[:, :vocab_limit]
        if not checked:  # before the first gather; a checkpoint's recompute skips it
            _check_ids(z.shape[-1], top_k, flat_targets, flat_ids)
            checked = True
        sl = slice(start, end)
        return chunk_stats(
            z,
            None if flat_targets is None else flat_targets[sl],
            ids=None if flat_ids is None else flat_ids[sl],
            top_k=top_k,
            entropy=entropy,
            valid=None if flat_valid is None else flat_valid[sl],
            dtype=dtype,
        )

    return run


def _run_chunks(
    run: _ChunkFn, chunks: Iterator[tuple[torch.Tensor | None, int, int]], checkpoint: bool
) -> list[VocabStats]:
    """``run`` over ``chunks`` (see :func:`_chunks`), each under activation checkpointing if
    ``checkpoint``."""
    parts = []
    for chunk, start, end in chunks:
        if checkpoint:
            parts.append(
                _checkpoint(run, chunk, start, end, use_reentrant=False, preserve_rng_state=False)
            )
        else:
            parts.append(run(chunk, start, end))
    return parts


def vocab_stats(
    logits: torch.Tensor | LogitsFn,
    targets: torch.Tensor | None = None,
    *,
    chunk_size: int,
    ids: torch.Tensor | None = None,
    top_k: int = 0,
    entropy: bool = False,
    valid: torch.Tensor | None = None,
    vocab_limit: int | None = None,
    dtype: torch.dtype | None = None,
    num_positions: int | None = None,
    checkpoint: bool | None = None,
) -> VocabStats:
    """:func:`chunk_stats` over all positions, ``chunk_size`` positions at a time.

    ``logits``: a tensor [*P, V] (any float dtype; ``logits[p]`` is the distribution at position
    p), or a :data:`LogitsFn` over the N = prod(P) flat positions, P then being the shape of
    ``targets`` [*P], ``ids`` [*P, m] or ``valid`` [*P] (whichever is given first) or
    ``(num_positions,)``. For a tensor, chunks do not straddle leading indices when the positions
    cannot be flattened without a copy. ``vocab_limit``: use only the first ``vocab_limit``
    logits of each position (the softmax is over those). ``dtype``, ``valid``: as in
    :func:`chunk_stats`. ``top_k`` must not exceed the (cut) vocabulary, and ``targets`` / ``ids``
    must lie in it: checked once (one host sync) before the first chunk's statistics.

    ``checkpoint``: run each chunk under (non-reentrant) activation checkpointing; default: when
    grad is enabled and the logits tensor requires grad (for a logits_fn: when grad is enabled).
    With it, at most one chunk's ``[n, V]`` intermediates exist at a time in the forward pass and
    again in the backward pass; without grad they are freed chunk by chunk anyway.

    Returns :class:`VocabStats` with fields shaped [*P], [*P, k], [*P, m] (see there).
    """
    _check_sizes(chunk_size, top_k, vocab_limit)
    shape = _positions_shape(logits, targets, ids, valid, num_positions)
    n = int(torch.Size(shape).numel())
    flat_targets = None if targets is None else targets.reshape(n).long()
    flat_ids = None if ids is None else ids.reshape(n, ids.shape[-1]).long()
    flat_valid = None if valid is None else valid.reshape(n).bool()
    if checkpoint is None:
        checkpoint = torch.is_grad_enabled() and (
            not isinstance(logits, torch.Tensor) or logits.requires_grad
        )
    run = _chunk_runner(
        None if isinstance(logits, torch.Tensor) else logits,
        flat_targets,
        flat_ids,
        flat_valid,
        top_k=top_k,
        entropy=entropy,
        vocab_limit=vocab_limit,
        dtype=dtype,
    )
    parts = _run_chunks(run, _chunks(logits, n, chunk_size), checkpoint)
    return _assemble(parts, shape, top_k, None if ids is None else ids.shape[-1])
