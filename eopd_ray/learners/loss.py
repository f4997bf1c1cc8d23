"""Entropy-aware on-policy distillation (EOPD) loss and the baselines it is compared with.

docs/design.md §1 (Jin et al., arXiv 2603.07079). One pure function, :func:`eopd_loss`, computes the
per-token objective of every variant, reduces it to a scalar and returns ``(loss, metrics)``. A
variant is one :class:`VariantSpec` in ``VARIANT_SPECS`` (its advantage, FKL gate, extra term and
arguments), built from the terms and building blocks of :mod:`eopd_ray.learners.loss_terms`;
adding a variant is adding an entry to that table.

Notation: student π_θ, teacher π_te, behaviour policy π_old (the sampler that produced the rollout),
``Â`` the per-token advantage, ``r = π_θ / π_old`` the importance ratio, ``H_te`` the entropy of the
teacher's full distribution, ``S_t`` the teacher's top-k set at position t.

Per token (only where ``mask``), with ``ε = clip_eps``:

- ratio term (every variant but ``kd``): ``L_PG = max(-r·Â, -clip(r, 1-ε, 1+ε)·Â)`` with
  ``r = exp(logπ_θ(x_t) - behaviour_logprobs)`` and ``Â = teacher_logprobs - behaviour_logprobs``
  (no gradient, baseline or normalisation); ``grpo`` takes ``Â`` from ``advantages``.
- ``L_FKL = Σ_{x∈S_t} π̃_te(x)(log π̃_te(x) - log π_θ(x|c_t))``: ``π̃_te`` is the softmax of
  ``teacher_topk_logprobs`` over the k ids, ``log π_θ`` the student's full-vocabulary log-softmax at
  those ids (not renormalised).
- ``opd``: L_PG. ``eopd``: L_PG + 1[H_te > tau]·L_FKL. ``full_fkl``: L_PG + L_FKL.
  ``random_fkl``: L_PG + 1[u < random_fkl_fraction]·L_FKL, u ~ U(0, 1) drawn from the optional
  ``generator``. ``entropy_bonus``: L_PG - entropy_bonus_beta·H(π_θ) (H carries gradient).
  ``advantage_shaping``: Â ← Â + min(shaping_alpha·H(π_θ).detach(), |Â|/shaping_kappa).
  ``kd`` (off-policy, teacher-generated ``tokens``): w·(-logπ_θ(x_t)) + (1-w)·L_FKL,
  w = kd_ce_weight; no ratio, ``behaviour_logprobs`` is ignored. ``grpo``: L_PG with
  ``advantages`` [B, T] or [B] (broadcast over T); teacher tensors are not needed.

Decoupled PPO (Hilton et al. 2021, as in AReaL), when ``proximal_logprobs`` is given: the ratio is
``r = π_θ/π_prox`` and is clipped around the proximal policy, ``Â = teacher_logprobs -
proximal_logprobs`` (the advantage is measured against the policy the update is anchored to), and
each token's ratio term is multiplied by the detached behaviour weight
``w = min(π_prox/π_behav, behaviour_weight_cap)`` (not truncated if the cap is None). The FKL, CE
and entropy terms are not importance-weighted. ``behaviour_weight_cap`` is ignored without
``proximal_logprobs``.

Reduction: ``loss = Σ_masked L_t / N``, N the number of masked tokens (Algorithm 1, line 13), or
``token_normalizer`` when given (the global token count of the mini-batch, for data-parallel workers
and gradient accumulation).

Metrics (floats, means over masked positions; computed in :mod:`eopd_ray.learners.loss_metrics`).
Always: ``loss, num_tokens, opd_loss, fkl_loss, fkl_applied_frac, student_entropy_mean``; with a
ratio: ``clip_frac, ratio_mean, ratio_min, ratio_max, advantage_mean``; given the teacher inputs:
``teacher_entropy_mean, high_entropy_frac, fkl_high_entropy, fkl_mean, reverse_kl``; decoupled:
``behaviour_weight_mean, behaviour_weight_capped_frac``; per variant: ``ce_loss`` (kd),
``entropy_bonus`` (entropy_bonus), ``shaping_mean`` (advantage_shaping). ``opd_loss``,
``fkl_loss``, ``ce_loss`` and ``-entropy_bonus`` are the terms' weighted contributions, so they
add up to ``loss`` under the default normaliser.

Memory: the student's per-position quantities are reduced from the ``[B, T, V]`` logits in chunks of
positions, each under activation checkpointing, so no float32 ``[B, T, V]`` tensor is materialised
in the forward pass; the backward pass recomputes one chunk at a time. ``student_logits`` may also
be a :data:`~eopd_ray.vocab.LogitsFn` that makes the logits of a chunk on demand (the learner's
output layer applied to the response positions' hidden states): then no ``[B, T, V]`` tensor
exists at all, not even in the model's dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from eopd_ray.learners.loss_metrics import loss_metrics
from eopd_ray.learners.loss_terms import (
    ALL_POSITIONS_GATE,
    ENTROPY_BONUS,
    GIVEN_ADVANTAGE,
    HIGH_ENTROPY_GATE,
    KD_CE,
    RANDOM_GATE,
    SHAPED_ADVANTAGE,
    TEACHER_ADVANTAGE,
    Advantage,
    ExtraTerm,
    FklGate,
    LossBatch,
    VariantArgs,
    fkl_term,
    kd_fkl_weight,
    prepare_batch,
    ratio_term,
    unit_weight,
)
from eopd_ray.vocab import LogitsFn

__all__ = [
    "VARIANTS",
    "VARIANT_ARGS",
    "VARIANT_SPECS",
    "VariantSpec",
    "eopd_loss",
    "grpo_advantages",
]

_REQUIRED: Any = object()  # marks a variant argument without a default


@dataclass(frozen=True)
class VariantSpec:
    """One loss variant: ``L_t = L_PG(advantage) + fkl_weight·1[fkl_gate]·L_FKL + sign·extra``.

    ``advantage`` None: no ratio (PG) term and no ``behaviour_logprobs``. ``fkl_gate`` None: L_FKL
    is not part of the loss (computed for diagnostics when the top-k is given). ``args``: the
    ``variant_args`` the variant accepts, with defaults (``_REQUIRED``: no default).
    """

    advantage: Advantage | None
    fkl_gate: FklGate | None
    fkl_weight: Callable[[VariantArgs], float] = unit_weight
    extra: ExtraTerm | None = None
    args: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", MappingProxyType(dict(self.args)))

    @property
    def uses_ratio(self) -> bool:
        return self.advantage is not None

    @property
    def required_inputs(self) -> dict[str, str]:
        """The optional ``eopd_loss`` tensors this variant cannot do without -> why (a template)."""
        needs: dict[str, str] = {}
        if self.advantage is not None:
            needs |= {"behaviour_logprobs": "for the importance ratio", **self.advantage.requires}
        if self.fkl_gate is not None:
            why = "for the forward KL of {variant!r}"
            needs |= {"teacher_topk_ids": why, "teacher_topk_logprobs": why}
            needs |= self.fkl_gate.requires
        return needs


# The loss variants (docs/design.md §1); VARIANT_ARGS and VARIANTS are derived from this table.
VARIANT_SPECS: Mapping[str, VariantSpec] = MappingProxyType(
    {
        "opd": VariantSpec(advantage=TEACHER_ADVANTAGE, fkl_gate=None),
        "eopd": VariantSpec(advantage=TEACHER_ADVANTAGE, fkl_gate=HIGH_ENTROPY_GATE),
        "full_fkl": VariantSpec(advantage=TEACHER_ADVANTAGE, fkl_gate=ALL_POSITIONS_GATE),
        "random_fkl": VariantSpec(
            advantage=TEACHER_ADVANTAGE,
            fkl_gate=RANDOM_GATE,
            args={"random_fkl_fraction": 0.2, "generator": None},
        ),
        "entropy_bonus": VariantSpec(
            advantage=TEACHER_ADVANTAGE,
            fkl_gate=None,
            extra=ENTROPY_BONUS,
            args={"entropy_bonus_beta": 0.01},
        ),
        "advantage_shaping": VariantSpec(
            advantage=SHAPED_ADVANTAGE,
            fkl_gate=None,
            args={"shaping_alpha": 0.1, "shaping_kappa": 2.0},
        ),
        "kd": VariantSpec(
            advantage=None,
            fkl_gate=ALL_POSITIONS_GATE,
            fkl_weight=kd_fkl_weight,
            extra=KD_CE,
            args={"kd_ce_weight": 0.5},
        ),
        "grpo": VariantSpec(
            advantage=GIVEN_ADVANTAGE, fkl_gate=None, args={"advantages": _REQUIRED}
        ),
    }
)
# Variant -> the variant_args it accepts, with defaults. Anything else is an error.
VARIANT_ARGS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {name: spec.args for name, spec in VARIANT_SPECS.items()}
)
VARIANTS: tuple[str, ...] = tuple(VARIANT_SPECS)


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


def _resolve_variant_args(
    variant: str, given: Mapping[str, Any]
) -> tuple[VariantSpec, VariantArgs]:
    """The spec of ``variant`` and its arguments (defaults filled in); raises ValueError."""
    if variant not in VARIANT_SPECS:
        raise ValueError(f"unknown loss variant {variant!r}; expected one of {VARIANTS}")
    spec = VARIANT_SPECS[variant]
    accepted = spec.args
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
    return spec, args


def _check(
    name: str, x: torch.Tensor | None, shape: tuple[int, ...], needed: bool, why: str
) -> None:
    """Raises ValueError if ``x`` is None but ``needed``, or is given with a shape != ``shape``."""
    if x is None:
        if needed:
            raise ValueError(f"{name} is required ({why})")
        return
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")


def _check_settings(
    student_logits_BTV: torch.Tensor | LogitsFn,
    tokens_BT: torch.Tensor,
    chunk_size: int,
    token_normalizer: float | None,
    clip_eps: float,
    behaviour_weight_cap: float | None,
) -> tuple[int, int]:
    """``(B, T)``; raises ValueError for logits that are not ``[B, T, V]`` (for a logits_fn:
    tokens that are not ``[B, T]``) with B*T > 0, or a bad scalar."""
    if isinstance(student_logits_BTV, torch.Tensor):
        if student_logits_BTV.dim() != 3:
            shape = tuple(student_logits_BTV.shape)
            raise ValueError(f"student_logits must be [B, T, V], got {shape}")
        B, T, _ = student_logits_BTV.shape
    elif tokens_BT.dim() != 2:
        raise ValueError(f"tokens must be [B, T], got {tuple(tokens_BT.shape)}")
    else:
        B, T = tokens_BT.shape
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
    return B, T


def _check_inputs(
    variant: str,
    spec: VariantSpec,
    bt: tuple[int, int],
    inputs: Mapping[str, torch.Tensor | None],
) -> None:
    """Presence (per ``spec.required_inputs``) and shapes of ``inputs``; raises ValueError.

    ``inputs``: ``tokens``, ``mask``, ``proximal_logprobs`` and the behaviour/teacher tensors, all
    ``[B, T]`` (``bt``) except the top-k pair, ``[B, T, k]``.
    """
    required = spec.required_inputs

    def check(name: str, shape: tuple[int, ...]) -> None:
        why = required.get(name)
        _check(name, inputs[name], shape, why is not None, (why or "").format(variant=variant))

    _check("tokens", inputs["tokens"], bt, True, "")
    _check("mask", inputs["mask"], bt, True, "")
    for name in ("behaviour_logprobs", "teacher_logprobs", "teacher_entropy", "proximal_logprobs"):
        check(name, bt)
    ids, lps = inputs["teacher_topk_ids"], inputs["teacher_topk_logprobs"]
    if (ids is None) != (lps is None):
        raise ValueError("teacher_topk_ids and teacher_topk_logprobs go together")
    k = 0 if ids is None else ids.shape[-1]
    check("teacher_topk_ids", (*bt, k))
    check("teacher_topk_logprobs", (*bt, k))
    if inputs["proximal_logprobs"] is not None and not spec.uses_ratio:
        raise ValueError(f"proximal_logprobs given, but loss variant {variant!r} has no ratio")


def _per_token(
    spec: VariantSpec,
    batch: LossBatch,
    args: VariantArgs,
    clip_eps: float,
    behaviour_weight_cap: float | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor | None], dict[str, torch.Tensor]]:
    """``L_t`` [B, T] of ``spec``, its terms (see :func:`loss_metrics`) and [B, T] diagnostics."""
    pg_BT, extra = ratio_term(spec.advantage, batch, args, clip_eps, behaviour_weight_cap)
    fkl_weight = spec.fkl_weight(args)
    fkl_BT, gate_BT, fkl_term_BT = fkl_term(spec.fkl_gate, fkl_weight, batch, args)
    per_token_BT = pg_BT + fkl_term_BT
    if spec.extra is not None:
        term_BT = spec.extra.fn(batch, args)
        per_token_BT = per_token_BT + spec.extra.sign * term_BT  # sign ±1: exact
        extra[spec.extra.metric] = term_BT
    terms = {"pg": pg_BT, "fkl_term": fkl_term_BT, "fkl": fkl_BT, "gate": gate_BT}
    return per_token_BT, terms, extra


def eopd_loss(
    *,
    student_logits: torch.Tensor | LogitsFn,
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
    """Token-level loss of one mini-batch for ``variant``, and its metrics.

    (Over 60 lines only because of its keyword signature: the body is 20 lines.)
    The objective of each variant, decoupled PPO, the reduction and the metrics are described in
    the module docstring (docs/design.md §1); ``VARIANT_SPECS`` is the table of variants.

    Args:
        student_logits: ``[B, T, V]``, any float dtype (math in float32, float64 stays float64);
            ``student_logits[b, t]`` predicts ``tokens[b, t]``. Must be finite where ``mask``.
            Or a :data:`~eopd_ray.vocab.LogitsFn` over the ``B*T`` positions in row-major order
            (``fn(start, end)`` -> ``[end - start, V]``), called chunk by chunk (again in the
            backward pass, under activation checkpointing).
        tokens: ``[B, T]`` long, the sampled tokens.
        behaviour_logprobs: ``[B, T]``, log π_old(x_t) from the sampler (all but ``kd``).
        teacher_logprobs: ``[B, T]``, log π_te(x_t) (on-policy distillation variants).
        teacher_entropy: ``[B, T]``, entropy of the teacher's full distribution (``eopd``).
        teacher_topk_ids: ``[B, T, k]`` long; teacher_topk_logprobs: ``[B, T, k]``, the teacher's
            full-distribution log-probs at those ids (FKL variants; otherwise diagnostics only).
        mask: ``[B, T]`` bool or 0/1 float; values at masked-out positions are never used.
        proximal_logprobs: ``[B, T]``, the proximal policy of decoupled PPO (ratio variants).
        chunk_size: positions per chunk of the ``[B*T, V]`` reductions.
        **variant_args: see ``VARIANT_ARGS``; unknown names raise ``ValueError``.

    Returns:
        ``(loss, metrics)``: a scalar (float32, or float64 for float64 logits) carrying the graph,
        and the metrics listed in the module docstring.
    """
    spec, args = _resolve_variant_args(variant, variant_args)
    B, T = _check_settings(
        student_logits, tokens, chunk_size, token_normalizer, clip_eps, behaviour_weight_cap
    )
    inputs = {
        "tokens": tokens,
        "mask": mask,
        "behaviour_logprobs": behaviour_logprobs,
        "teacher_logprobs": teacher_logprobs,
        "teacher_entropy": teacher_entropy,
        "proximal_logprobs": proximal_logprobs,
        "teacher_topk_ids": teacher_topk_ids,
        "teacher_topk_logprobs": teacher_topk_logprobs,
    }
    _check_inputs(variant, spec, (B, T), inputs)
    batch = prepare_batch(student_logits, inputs, tau, chunk_size)
    per_token_BT, terms, extra = _per_token(spec, batch, args, clip_eps, behaviour_weight_cap)
    # torch.where (not a product): the loss keeps its graph and stays finite for an all-zero mask.
    masked_sum = torch.where(batch.valid_BT, per_token_BT, 0.0).sum()
    denom = token_normalizer if token_normalizer is not None else batch.valid_BT.sum().clamp(min=1)
    loss = masked_sum / denom
    return loss, loss_metrics(batch, loss, terms, extra)
