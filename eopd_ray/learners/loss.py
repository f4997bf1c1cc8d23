"""Entropy-aware on-policy distillation (EOPD) loss and the baselines it is compared with.

DESIGN.md §1 (Jin et al., arXiv 2603.07079). One pure function, :func:`eopd_loss`, computes the
per-token objective of every variant, reduces it to a scalar and returns ``(loss, metrics)``.

Notation: student π_θ, teacher π_te, behaviour policy π_old (the sampler that produced the rollout),
``Â`` the per-token advantage, ``r = π_θ / π_old`` the importance ratio, ``H_te`` the entropy of the
teacher's full distribution, ``S_t`` the teacher's top-k set at position t.

Memory: the student's per-position quantities are reduced from the ``[B, T, V]`` logits in chunks of
positions, each under activation checkpointing, so no float32 ``[B, T, V]`` tensor is materialised
in the forward pass; the backward pass recomputes one chunk at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

__all__ = ["VARIANTS", "VARIANT_ARGS", "eopd_loss", "grpo_advantages"]

_REQUIRED: Any = object()  # marks a variant argument without a default

# Variant -> the variant_args it accepts, with defaults (DESIGN.md §1). Anything else is an error.
VARIANT_ARGS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "opd": MappingProxyType({}),
        "eopd": MappingProxyType({}),
        "full_fkl": MappingProxyType({}),
        "random_fkl": MappingProxyType({"random_fkl_fraction": 0.2, "generator": None}),
        "entropy_bonus": MappingProxyType({"entropy_bonus_beta": 0.01}),
        "advantage_shaping": MappingProxyType({"shaping_alpha": 0.1, "shaping_kappa": 2.0}),
        "kd": MappingProxyType({"kd_ce_weight": 0.5}),
        "grpo": MappingProxyType({"advantages": _REQUIRED}),
    }
)
VARIANTS: tuple[str, ...] = tuple(VARIANT_ARGS)
_FKL_VARIANTS = frozenset({"eopd", "full_fkl", "random_fkl", "kd"})
_TEACHER_ADVANTAGE_VARIANTS = frozenset(VARIANTS) - {"kd", "grpo"}


def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantages: ``(r - mean_g r) / (std_g r + eps)``.

    Args:
        rewards: ``[P, G]``, G samples for each of P prompts.
    Returns:
        ``[P, G]``; the std is the population std (``unbiased=False``) over each prompt's G samples,
        so a group whose rewards are all equal gets zero advantages.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [P, G], got shape {tuple(rewards.shape)}")
    rewards = rewards.float() if not rewards.is_floating_point() else rewards
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + eps)


def _chunk_stats(
    logits: torch.Tensor, tokens: torch.Tensor, topk_ids: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student log-prob of ``tokens`` [n], log-probs at ``topk_ids`` [n, k], entropy [n]."""
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 in, float32 math
    # Zero the logits of masked positions: NaN/inf garbage there then reaches neither the loss nor
    # the gradient (the gradient of a masked position is exactly 0).
    z = torch.where(valid[:, None], z, 0.0)
    lse = torch.logsumexp(z, dim=-1)
    token_logp = z.gather(-1, tokens[:, None]).squeeze(-1) - lse
    topk_logp = z.gather(-1, topk_ids) - lse[:, None]
    entropy = lse - ((z - lse[:, None]).exp() * z).sum(-1)  # H = lse - Σ p·z
    return token_logp, topk_logp, entropy


def _student_stats(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    topk_ids: torch.Tensor,
    valid: torch.Tensor,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chunked :func:`_chunk_stats` over the B*T positions of ``logits`` [B, T, V].

    Returns ``[B, T]``, ``[B, T, k]``, ``[B, T]``. Under grad each chunk is checkpointed, so
    autograd keeps only the chunk's inputs (views) and small outputs, never its [n, V] float32
    intermediates; in backward the chunk gradients (logits dtype) are concatenated into the
    logits' gradient.
    """
    B, T, V = logits.shape
    try:
        rows = [logits.view(B * T, V)]
    except RuntimeError:  # non-contiguous, e.g. logits[:, :-1]: per-row views, avoiding a copy
        rows = list(logits.unbind(0))
    flat = (tokens.reshape(-1), topk_ids.reshape(B * T, -1), valid.reshape(-1))
    use_checkpoint = torch.is_grad_enabled() and logits.requires_grad
    outs = []
    start = 0
    for row in rows:
        # split (not slicing) gives one autograd node, whose backward concatenates the chunk grads
        for chunk in row.split(chunk_size):
            args = (chunk, *(x[start : start + chunk.shape[0]] for x in flat))
            if use_checkpoint:
                out = checkpoint(_chunk_stats, *args, use_reentrant=False, preserve_rng_state=False)
            else:
                out = _chunk_stats(*args)
            outs.append(out)
            start += chunk.shape[0]
    token_logp, topk_logp, entropy = (torch.cat(parts) for parts in zip(*outs, strict=True))
    return token_logp.view(B, T), topk_logp.view(B, T, -1), entropy.view(B, T)


def _resolve_variant_args(variant: str, given: Mapping[str, Any]) -> dict[str, Any]:
    if variant not in VARIANT_ARGS:
        raise ValueError(f"unknown loss variant {variant!r}; expected one of {VARIANTS}")
    accepted = VARIANT_ARGS[variant]
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown argument(s) {unknown} for loss variant {variant!r}; "
            f"it accepts {sorted(accepted) or 'none'}"
        )
    args = {**accepted, **given}
    missing = sorted(k for k, v in args.items() if v is _REQUIRED)
    if missing:
        raise ValueError(f"loss variant {variant!r} requires argument(s) {missing}")
    return args


def _check(
    name: str, x: torch.Tensor | None, shape: tuple[int, ...], needed: bool, why: str
) -> None:
    if x is None:
        if needed:
            raise ValueError(f"{name} is required ({why})")
        return
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")


def eopd_loss(
    *,
    student_logits: torch.Tensor,
    tokens: torch.Tensor,
    behaviour_logprobs: torch.Tensor | None = None,
    teacher_logprobs: torch.Tensor | None = None,
    teacher_entropy: torch.Tensor | None = None,
    teacher_topk_ids: torch.Tensor | None = None,
    teacher_topk_logprobs: torch.Tensor | None = None,
    mask: torch.Tensor,
    variant: str = "eopd",
    tau: float = 0.8,
    clip_eps: float = 0.2,
    proximal_logprobs: torch.Tensor | None = None,
    behaviour_weight_cap: float | None = None,
    token_normalizer: float | None = None,
    chunk_size: int = 1024,
    **variant_args: Any,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-level loss of one mini-batch for ``variant`` (DESIGN.md §1), and its metrics.

    Per token (only where ``mask``), with ``ε = clip_eps``:

    - ratio term (every variant but ``kd``): ``L_PG = max(-r·Â, -clip(r, 1-ε, 1+ε)·Â)`` with
      ``r = exp(logπ_θ(x_t) - behaviour_logprobs)`` and ``Â = teacher_logprobs -
      behaviour_logprobs`` (no gradient, baseline or normalisation); ``grpo`` takes ``Â`` from
      ``advantages``.
    - ``L_FKL = Σ_{x∈S_t} π̃_te(x)(log π̃_te(x) - log π_θ(x|c_t))``: ``π̃_te`` is the softmax of
      ``teacher_topk_logprobs`` over the k ids, ``log π_θ`` the student's full-vocabulary
      log-softmax at those ids (not renormalised).
    - ``opd``: L_PG. ``eopd``: L_PG + 1[H_te > tau]·L_FKL. ``full_fkl``: L_PG + L_FKL.
      ``random_fkl``: L_PG + 1[u < random_fkl_fraction]·L_FKL, u ~ U(0, 1) drawn from the optional
      ``generator``. ``entropy_bonus``: L_PG - entropy_bonus_beta·H(π_θ) (H carries gradient).
      ``advantage_shaping``: Â ← Â + min(shaping_alpha·H(π_θ).detach(), |Â|/shaping_kappa).
      ``kd`` (off-policy, teacher-generated ``tokens``): w·(-logπ_θ(x_t)) + (1-w)·L_FKL,
      w = kd_ce_weight; no ratio, ``behaviour_logprobs`` is ignored. ``grpo``: L_PG with
      ``advantages`` [B, T] or [B] (broadcast over T); teacher tensors are not needed.

    Decoupled PPO (Hilton et al. 2021, as in AReaL), when ``proximal_logprobs`` is given: the ratio
    is ``r = π_θ/π_prox`` and is clipped around the proximal policy, ``Â = teacher_logprobs -
    proximal_logprobs`` (the advantage is measured against the policy the update is anchored to),
    and each token's ratio term is multiplied by the detached behaviour weight
    ``w = min(π_prox/π_behav, behaviour_weight_cap)`` (not truncated if the cap is None). The FKL,
    CE and entropy terms are not importance-weighted. ``behaviour_weight_cap`` is ignored without
    ``proximal_logprobs``.

    Reduction: ``loss = Σ_masked L_t / N``, N the number of masked tokens (Algorithm 1, line 13),
    or ``token_normalizer`` when given (the global token count of the mini-batch, for data-parallel
    workers and gradient accumulation).

    Args:
        student_logits: ``[B, T, V]``, any float dtype (math in float32, float64 stays float64);
            ``student_logits[b, t]`` predicts ``tokens[b, t]``. Must be finite where ``mask``.
        tokens: ``[B, T]`` long, the sampled tokens.
        behaviour_logprobs: ``[B, T]``, log π_old(x_t) from the sampler (all but ``kd``).
        teacher_logprobs: ``[B, T]``, log π_te(x_t) (on-policy distillation variants).
        teacher_entropy: ``[B, T]``, entropy of the teacher's full distribution (``eopd``).
        teacher_topk_ids: ``[B, T, k]`` long; teacher_topk_logprobs: ``[B, T, k]``, the teacher's
            full-distribution log-probs at those ids (FKL variants; otherwise diagnostics only).
        mask: ``[B, T]`` bool or 0/1 float; values at masked-out positions are never used.
        chunk_size: positions per chunk of the ``[B*T, V]`` reductions.
        **variant_args: see ``VARIANT_ARGS``; unknown names raise ``ValueError``.

    Returns:
        ``(loss, metrics)``: a scalar (float32, or float64 for float64 logits) carrying the graph,
        and floats over masked positions. Always: ``loss, num_tokens, opd_loss, fkl_loss,
        fkl_applied_frac, student_entropy_mean``; with a ratio: ``clip_frac, ratio_mean, ratio_min,
        ratio_max, advantage_mean``; given the teacher inputs: ``teacher_entropy_mean,
        high_entropy_frac, fkl_high_entropy, fkl_mean, reverse_kl``; decoupled:
        ``behaviour_weight_mean, behaviour_weight_capped_frac``; per variant: ``ce_loss`` (kd),
        ``entropy_bonus`` (entropy_bonus), ``shaping_mean`` (advantage_shaping). ``opd_loss``,
        ``fkl_loss``, ``ce_loss`` and ``-entropy_bonus`` are the terms' weighted contributions, so
        they add up to ``loss`` under the default normaliser.
    """
    args = _resolve_variant_args(variant, variant_args)
    if student_logits.dim() != 3:
        raise ValueError(f"student_logits must be [B, T, V], got {tuple(student_logits.shape)}")
    B, T, _ = student_logits.shape
    if B * T == 0:
        raise ValueError("student_logits has no positions")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if token_normalizer is not None and not token_normalizer > 0:
        raise ValueError(f"token_normalizer must be > 0, got {token_normalizer}")
    if not 0.0 <= clip_eps < 1.0:
        raise ValueError(f"clip_eps must be in [0, 1), got {clip_eps}")
    if behaviour_weight_cap is not None and not behaviour_weight_cap > 0:
        raise ValueError(f"behaviour_weight_cap must be > 0, got {behaviour_weight_cap}")

    uses_ratio = variant != "kd"
    uses_fkl = variant in _FKL_VARIANTS
    bt = (B, T)
    _check("tokens", tokens, bt, True, "")
    _check("mask", mask, bt, True, "")
    _check("behaviour_logprobs", behaviour_logprobs, bt, uses_ratio, "for the importance ratio")
    adv_why = f"for the advantage of {variant!r}"
    teacher_adv = variant in _TEACHER_ADVANTAGE_VARIANTS
    _check("teacher_logprobs", teacher_logprobs, bt, teacher_adv, adv_why)
    _check("teacher_entropy", teacher_entropy, bt, variant == "eopd", "for the entropy gate")
    _check("proximal_logprobs", proximal_logprobs, bt, False, "")
    if (teacher_topk_ids is None) != (teacher_topk_logprobs is None):
        raise ValueError("teacher_topk_ids and teacher_topk_logprobs go together")
    k = 0 if teacher_topk_ids is None else teacher_topk_ids.shape[-1]
    topk_why = f"for the forward KL of {variant!r}"
    _check("teacher_topk_ids", teacher_topk_ids, (*bt, k), uses_fkl, topk_why)
    _check("teacher_topk_logprobs", teacher_topk_logprobs, (*bt, k), uses_fkl, topk_why)
    if proximal_logprobs is not None and not uses_ratio:
        raise ValueError(f"proximal_logprobs given, but loss variant {variant!r} has no ratio")

    device = student_logits.device
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    valid = mask.to(device=device).bool()

    def clean(x: torch.Tensor | None, fill: float = 0.0) -> torch.Tensor | None:
        # Detached, compute dtype, and masked positions replaced so garbage there cannot leak.
        if x is None:
            return None
        x = x.detach().to(device=device, dtype=dtype)
        return torch.where(valid.view(*bt, *([1] * (x.dim() - 2))), x, fill)

    behav = clean(behaviour_logprobs)
    teacher_lp = clean(teacher_logprobs)
    teacher_ent = clean(teacher_entropy)
    prox = clean(proximal_logprobs)
    topk_lp_te = clean(teacher_topk_logprobs)
    safe_tokens = torch.where(valid, tokens.to(device), 0)
    safe_ids = (
        torch.zeros(*bt, 0, dtype=torch.long, device=device)
        if teacher_topk_ids is None
        else torch.where(valid[..., None], teacher_topk_ids.to(device), 0)
    )

    logp, topk_logp, entropy = _student_stats(
        student_logits, safe_tokens, safe_ids, valid, chunk_size
    )

    zero = logp.new_zeros(bt)
    extra: dict[str, torch.Tensor] = {}  # per-token diagnostics, averaged over masked positions

    # Ratio (policy-gradient) term.
    pg = zero
    if uses_ratio:
        assert behav is not None
        anchor = behav if prox is None else prox  # the policy r is measured and clipped against
        if variant == "grpo":
            adv = torch.as_tensor(args["advantages"]).detach().to(device=device, dtype=dtype)
            if adv.shape == (B,):
                adv = adv[:, None].expand(bt)
            _check("advantages", adv, bt, True, "")
            adv = torch.where(valid, adv, 0.0)
        else:
            assert teacher_lp is not None
            adv = teacher_lp - anchor
        if variant == "advantage_shaping":
            bonus = torch.minimum(
                args["shaping_alpha"] * entropy.detach(), adv.abs() / args["shaping_kappa"]
            )
            adv = adv + bonus
            extra["shaping_mean"] = bonus
        ratio = torch.exp(logp - anchor)
        unclipped = -ratio * adv
        clipped = -ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv
        pg = torch.maximum(unclipped, clipped)
        if prox is not None:
            assert behav is not None
            raw_weight = torch.exp(prox - behav)
            weight = raw_weight
            capped = torch.zeros_like(raw_weight)
            if behaviour_weight_cap is not None:
                weight = raw_weight.clamp(max=behaviour_weight_cap)
                capped = (raw_weight > behaviour_weight_cap).to(dtype)
            pg = pg * weight
            extra["behaviour_weight_mean"] = weight
            extra["behaviour_weight_capped_frac"] = capped
        extra["clip_frac"] = (clipped > unclipped).to(dtype)
        extra["ratio_mean"] = ratio.detach()
        extra["advantage_mean"] = adv

    # Forward KL over the teacher's top-k set (computed whenever the top-k is given).
    fkl = None
    if topk_lp_te is not None:
        log_pt = topk_lp_te - topk_lp_te.logsumexp(dim=-1, keepdim=True)  # renormalise over S_t
        pt = log_pt.exp()
        fkl = torch.where(pt > 0, pt * (log_pt - topk_logp), 0.0).sum(-1)

    high = None if teacher_ent is None else teacher_ent > tau
    fkl_on = torch.zeros(bt, dtype=torch.bool, device=device)  # where the FKL term is applied
    fkl_weight = 1.0
    if variant == "eopd":
        assert high is not None
        fkl_on = high
    elif variant in ("full_fkl", "kd"):
        fkl_on = torch.ones_like(fkl_on)
        fkl_weight = 1.0 - args["kd_ce_weight"] if variant == "kd" else 1.0
    elif variant == "random_fkl":
        frac, gen = args["random_fkl_fraction"], args["generator"]
        if not 0.0 <= frac <= 1.0:
            raise ValueError(f"random_fkl_fraction must be in [0, 1], got {frac}")
        u = torch.rand(bt, generator=gen, device=gen.device if gen is not None else device)
        fkl_on = u.to(device) < frac
    fkl_term = zero if fkl is None or not uses_fkl else fkl_weight * fkl_on.to(dtype) * fkl

    per_token = pg + fkl_term
    if variant == "entropy_bonus":
        entropy_term = args["entropy_bonus_beta"] * entropy
        per_token = per_token - entropy_term
        extra["entropy_bonus"] = entropy_term
    elif variant == "kd":
        ce_term = args["kd_ce_weight"] * -logp
        per_token = per_token + ce_term
        extra["ce_loss"] = ce_term

    # torch.where (not a product): the loss keeps its graph and stays finite for an all-zero mask.
    masked_sum = torch.where(valid, per_token, 0.0).sum()
    num_tokens = valid.sum()
    denom = token_normalizer if token_normalizer is not None else num_tokens.clamp(min=1)
    loss = masked_sum / denom

    with torch.no_grad():
        n = num_tokens.clamp(min=1).to(dtype)

        def mean(x: torch.Tensor) -> torch.Tensor:
            return torch.where(valid, x.to(dtype), 0.0).sum() / n

        stats = {
            "loss": loss,
            "num_tokens": num_tokens.to(dtype),
            "opd_loss": mean(pg),
            "fkl_loss": mean(fkl_term),
            "fkl_applied_frac": mean(fkl_on) if uses_fkl else zero.sum(),
            "student_entropy_mean": mean(entropy),
            **{name: mean(x) for name, x in extra.items()},
        }
        if uses_ratio:
            any_valid = num_tokens > 0
            r = extra["ratio_mean"]
            stats["ratio_min"] = torch.where(any_valid, torch.where(valid, r, torch.inf).min(), 0)
            stats["ratio_max"] = torch.where(any_valid, torch.where(valid, r, -torch.inf).max(), 0)
        if fkl is not None:
            stats["fkl_mean"] = mean(fkl)
        if teacher_ent is not None and high is not None:
            stats["teacher_entropy_mean"] = mean(teacher_ent)
            stats["high_entropy_frac"] = mean(high)
            if fkl is not None:
                high_valid = high & valid
                fkl_high = torch.where(high_valid, fkl, 0.0).sum()
                stats["fkl_high_entropy"] = fkl_high / high_valid.sum().clamp(min=1)
        if teacher_lp is not None and behav is not None:
            stats["reverse_kl"] = mean(behav - teacher_lp)
        # One host sync for all metrics.
        values = torch.stack([v.detach().to(dtype).reshape(()) for v in stats.values()]).tolist()
    return loss, dict(zip(stats, values, strict=True))
