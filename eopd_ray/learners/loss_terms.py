"""The per-token math of the EOPD loss family and the building blocks its variants are made of.

docs/design.md §1. :mod:`eopd_ray.learners.loss` holds the table of variants and the public
:func:`~eopd_ray.learners.loss.eopd_loss`; this module holds what the table points at: pure tensor
terms (PG clipped term with behaviour weights, FKL over the top-k, CE, entropy bonus, advantage
shaping), :class:`LossBatch` (one call's cleaned inputs and the student's chunked per-position
statistics, :func:`prepare_batch`), the variant building blocks (:class:`Advantage`,
:class:`FklGate`, :class:`ExtraTerm` and their instances) and the composed :func:`ratio_term` and
:func:`fkl_term`.

Suffixes name shapes: ``_BT`` is ``[B, T]``, ``_BTK`` ``[B, T, k]`` (the teacher's top-k), ``_BTV``
``[B, T, V]``; ``n`` counts flat positions. Inputs are detached unless said to carry the graph.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch

from eopd_ray.vocab import LogitsFn, vocab_stats

VariantArgs = Mapping[str, Any]  # a variant's resolved arguments
_AdvantageOut = tuple[torch.Tensor, dict[str, torch.Tensor]]  # (Â [B, T], {metric: [B, T]})


def pg_clipped_term(
    logp_BT: torch.Tensor,
    anchor_BT: torch.Tensor,
    adv_BT: torch.Tensor,
    clip_eps: float,
    weight_BT: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped ratio term ``w·max(-r·Â, -clip(r, 1-ε, 1+ε)·Â)``, ``r = exp(logp - anchor)``.

    Args:
        logp_BT: ``[B, T]`` student ``log π_θ(x_t)``, carries the graph.
        anchor_BT: ``[B, T]`` log-probs of the policy ``r`` is measured and clipped against
            (behaviour, or proximal for decoupled PPO).
        adv_BT: ``[B, T]`` advantage ``Â``.
        clip_eps: ``ε``.
        weight_BT: ``[B, T]`` decoupled-PPO behaviour weight ``w``; None for ``w = 1``.
    Returns:
        ``(pg_BT, ratio_BT, clipped_BT)``: the term and ``r`` (both with graph), and a bool
        ``[B, T]`` marking where the clipped branch is the larger one.
    """
    ratio_BT = torch.exp(logp_BT - anchor_BT)
    unclipped_BT = -ratio_BT * adv_BT
    clipped_BT = -ratio_BT.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv_BT
    pg_BT = torch.maximum(unclipped_BT, clipped_BT)
    if weight_BT is not None:
        pg_BT = pg_BT * weight_BT
    return pg_BT, ratio_BT, clipped_BT > unclipped_BT


def behaviour_weight(
    prox_BT: torch.Tensor, behav_BT: torch.Tensor, cap: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoupled-PPO behaviour weight ``min(π_prox/π_behav, cap)`` (no truncation for cap None).

    Args:
        prox_BT: ``[B, T]`` proximal log-probs; behav_BT: ``[B, T]`` behaviour log-probs.
    Returns:
        ``(weight_BT, capped_BT)``: the weight, and a bool ``[B, T]`` of where the cap bit.
    """
    raw_BT = torch.exp(prox_BT - behav_BT)
    if cap is None:
        return raw_BT, torch.zeros_like(raw_BT, dtype=torch.bool)
    return raw_BT.clamp(max=cap), raw_BT > cap


def shaping_bonus(
    entropy_BT: torch.Tensor, adv_BT: torch.Tensor, alpha: float, kappa: float
) -> torch.Tensor:
    """Advantage-shaping bonus ``min(α·H(π_θ).detach(), |Â|/κ)``, ``[B, T]``.

    Args:
        entropy_BT: ``[B, T]`` student entropy (detached here); adv_BT: ``[B, T]`` advantage.
    """
    return torch.minimum(alpha * entropy_BT.detach(), adv_BT.abs() / kappa)


def topk_fkl(
    teacher_topk_logprobs_BTK: torch.Tensor, student_topk_logp_BTK: torch.Tensor
) -> torch.Tensor:
    """``Σ_{x∈S_t} π̃_te(x)(log π̃_te(x) - log π_θ(x))``, ``[B, T]``.

    Args:
        teacher_topk_logprobs_BTK: ``[B, T, k]`` teacher full-distribution log-probs at its top-k
            ids, renormalised here over the k ids (``π̃_te``).
        student_topk_logp_BTK: ``[B, T, k]`` student full-vocabulary log-probs at the same ids
            (not renormalised), carries the graph.
    """
    log_pt_BTK = teacher_topk_logprobs_BTK - teacher_topk_logprobs_BTK.logsumexp(
        dim=-1, keepdim=True
    )
    pt_BTK = log_pt_BTK.exp()
    return torch.where(pt_BTK > 0, pt_BTK * (log_pt_BTK - student_topk_logp_BTK), 0.0).sum(-1)


def gated_fkl(fkl_BT: torch.Tensor, gate_BT: torch.Tensor, weight: float) -> torch.Tensor:
    """The FKL contribution ``weight·1[gate]·L_FKL``, ``[B, T]``; gate_BT: bool ``[B, T]``."""
    return weight * gate_BT.to(fkl_BT.dtype) * fkl_BT


def ce_term(logp_BT: torch.Tensor, weight: float) -> torch.Tensor:
    """Weighted cross-entropy ``weight·(-log π_θ(x_t))``, ``[B, T]``; logp_BT carries the graph."""
    return weight * -logp_BT


def entropy_bonus_term(entropy_BT: torch.Tensor, beta: float) -> torch.Tensor:
    """``β·H(π_θ)``, ``[B, T]`` (subtracted from the loss); entropy_BT carries the graph."""
    return beta * entropy_BT


@dataclass(frozen=True)
class LossBatch:
    """One call's cleaned inputs and the student's statistics; tensors ``[B, T]`` unless named.

    Teacher/behaviour tensors are detached, in the compute dtype, with masked positions zeroed (None
    when not given). ``logp_BT``, ``topk_logp_BTK`` (``[B, T, k]``, k = 0 without a top-k) and
    ``entropy_BT`` are the student's, and carry the graph.
    """

    valid_BT: torch.Tensor
    logp_BT: torch.Tensor
    topk_logp_BTK: torch.Tensor
    entropy_BT: torch.Tensor
    behav_BT: torch.Tensor | None
    prox_BT: torch.Tensor | None
    teacher_lp_BT: torch.Tensor | None
    teacher_ent_BT: torch.Tensor | None
    teacher_topk_lp_BTK: torch.Tensor | None
    tau: float

    @property
    def dtype(self) -> torch.dtype:
        return self.logp_BT.dtype

    @property
    def anchor_BT(self) -> torch.Tensor:
        """``[B, T]`` log-probs of the policy ``r`` is measured and clipped against."""
        anchor_BT = self.behav_BT if self.prox_BT is None else self.prox_BT
        assert anchor_BT is not None
        return anchor_BT


def prepare_batch(
    student_logits_BTV: torch.Tensor | LogitsFn,
    inputs: Mapping[str, torch.Tensor | None],
    tau: float,
    chunk_size: int,
) -> LossBatch:
    """Cleans ``inputs`` and computes the student's statistics of ``student_logits_BTV``.

    ``inputs``: the ``eopd_loss`` tensors by name (``tokens``, ``mask``, ``behaviour_logprobs``,
    ``proximal_logprobs``, ``teacher_*``; None when not given), already checked: ``[B, T]``, the
    top-k pair ``[B, T, k]``. ``student_logits_BTV`` may be a :data:`LogitsFn` over the ``B*T``
    positions (then on the tokens' device).
    """
    mask_BT, tokens_BT, ids_BTK = inputs["mask"], inputs["tokens"], inputs["teacher_topk_ids"]
    assert mask_BT is not None and tokens_BT is not None
    logits = student_logits_BTV
    device = logits.device if isinstance(logits, torch.Tensor) else tokens_BT.device
    valid_BT = mask_BT.to(device=device).bool()
    bt = tuple(valid_BT.shape)
    safe_tokens_BT = torch.where(valid_BT, tokens_BT.to(device), 0)
    safe_ids_BTK = (
        torch.zeros(*bt, 0, dtype=torch.long, device=device)
        if ids_BTK is None
        else torch.where(valid_BT[..., None], ids_BTK.to(device), 0)
    )
    # one chunked pass over the vocabulary (eopd_ray/vocab.py), each chunk checkpointed under grad
    stats = vocab_stats(
        logits,
        safe_tokens_BT,
        ids=safe_ids_BTK,
        valid=valid_BT,
        entropy=True,
        chunk_size=chunk_size,
    )
    logp_BT, topk_logp_BTK, entropy_BT = stats.logprobs, stats.ids_logprobs, stats.entropy
    dtype = logp_BT.dtype  # the math dtype: float32, float64 for float64 logits

    def clean(name: str) -> torch.Tensor | None:
        # Detached, compute dtype, and masked positions replaced so garbage there cannot leak.
        x = inputs[name]
        if x is None:
            return None
        x = x.detach().to(device=device, dtype=dtype)
        return torch.where(valid_BT.view(*bt, *([1] * (x.dim() - 2))), x, 0.0)

    return LossBatch(
        valid_BT=valid_BT,
        logp_BT=logp_BT,
        topk_logp_BTK=topk_logp_BTK,
        entropy_BT=entropy_BT,
        behav_BT=clean("behaviour_logprobs"),
        prox_BT=clean("proximal_logprobs"),
        teacher_lp_BT=clean("teacher_logprobs"),
        teacher_ent_BT=clean("teacher_entropy"),
        teacher_topk_lp_BTK=clean("teacher_topk_logprobs"),
        tau=tau,
    )


@dataclass(frozen=True)
class Advantage:
    """The ratio term's advantage: ``fn(batch, args) -> (Â [B, T], {metric: [B, T] tensor})``."""

    name: str
    requires: Mapping[str, str]  # eopd_loss input fn reads -> why (error message template)
    fn: Callable[[LossBatch, VariantArgs], _AdvantageOut]


@dataclass(frozen=True)
class FklGate:
    """Where L_FKL enters the loss: ``fn(batch, args)`` is a bool ``[B, T]``."""

    name: str
    requires: Mapping[str, str]  # eopd_loss input fn reads -> why (error message template)
    fn: Callable[[LossBatch, VariantArgs], torch.Tensor]


@dataclass(frozen=True)
class ExtraTerm:
    """A term ``fn(batch, args)`` [B, T] added to the loss times ``sign``, logged as ``metric``."""

    metric: str
    sign: float
    fn: Callable[[LossBatch, VariantArgs], torch.Tensor]


def _teacher_advantage(batch: LossBatch, args: VariantArgs) -> _AdvantageOut:
    """``Â = teacher_logprobs - anchor`` [B, T]."""
    assert batch.teacher_lp_BT is not None
    return batch.teacher_lp_BT - batch.anchor_BT, {}


def _shaped_advantage(batch: LossBatch, args: VariantArgs) -> _AdvantageOut:
    """The teacher advantage plus :func:`shaping_bonus` [B, T], logged as ``shaping_mean``."""
    adv_BT, _ = _teacher_advantage(batch, args)
    bonus_BT = shaping_bonus(batch.entropy_BT, adv_BT, args["shaping_alpha"], args["shaping_kappa"])
    return adv_BT + bonus_BT, {"shaping_mean": bonus_BT}


def _given_advantage(batch: LossBatch, args: VariantArgs) -> _AdvantageOut:
    """``advantages`` [B, T] or [B] (broadcast over T), e.g. from :func:`grpo_advantages`."""
    valid_BT = batch.valid_BT
    adv = torch.as_tensor(args["advantages"]).detach()
    adv = adv.to(device=valid_BT.device, dtype=batch.dtype)
    if adv.shape == valid_BT.shape[:1]:
        adv = adv[:, None].expand(valid_BT.shape)
    bt = tuple(valid_BT.shape)
    if tuple(adv.shape) != bt:
        raise ValueError(f"advantages must have shape {bt}, got {tuple(adv.shape)}")
    return torch.where(valid_BT, adv, 0.0), {}


def _high_entropy_gate(batch: LossBatch, args: VariantArgs) -> torch.Tensor:
    """``H_te > tau`` [B, T] (strict)."""
    assert batch.teacher_ent_BT is not None
    return batch.teacher_ent_BT > batch.tau


def _all_positions_gate(batch: LossBatch, args: VariantArgs) -> torch.Tensor:
    """True [B, T]."""
    return torch.ones_like(batch.valid_BT)


def _random_gate(batch: LossBatch, args: VariantArgs) -> torch.Tensor:
    """``u < random_fkl_fraction`` [B, T], ``u ~ U(0, 1)`` drawn from ``generator`` if given."""
    frac, gen = args["random_fkl_fraction"], args["generator"]
    if not 0.0 <= frac <= 1.0:
        raise ValueError(f"random_fkl_fraction must be in [0, 1], got {frac}")
    device = batch.valid_BT.device
    u_BT = torch.rand(
        tuple(batch.valid_BT.shape),
        generator=gen,
        device=gen.device if gen is not None else device,
    )
    return u_BT.to(device) < frac


def _kd_ce(batch: LossBatch, args: VariantArgs) -> torch.Tensor:
    """``kd_ce_weight·(-log π_θ(x_t))`` [B, T]."""
    return ce_term(batch.logp_BT, args["kd_ce_weight"])


def unit_weight(args: VariantArgs) -> float:
    """The FKL weight of every variant but ``kd``."""
    return 1.0


def kd_fkl_weight(args: VariantArgs) -> float:
    """``1 - kd_ce_weight``: kd mixes CE and FKL."""
    return 1.0 - args["kd_ce_weight"]


def _entropy_bonus(batch: LossBatch, args: VariantArgs) -> torch.Tensor:
    """``entropy_bonus_beta·H(π_θ)`` [B, T]."""
    return entropy_bonus_term(batch.entropy_BT, args["entropy_bonus_beta"])


_NOTHING: Mapping[str, str] = MappingProxyType({})
_TEACHER_LP = MappingProxyType({"teacher_logprobs": "for the advantage of {variant!r}"})
_TEACHER_ENT = MappingProxyType({"teacher_entropy": "for the entropy gate"})
TEACHER_ADVANTAGE = Advantage("teacher", _TEACHER_LP, _teacher_advantage)
SHAPED_ADVANTAGE = Advantage("shaped", _TEACHER_LP, _shaped_advantage)
GIVEN_ADVANTAGE = Advantage("given", _NOTHING, _given_advantage)
HIGH_ENTROPY_GATE = FklGate("teacher entropy > tau", _TEACHER_ENT, _high_entropy_gate)
ALL_POSITIONS_GATE = FklGate("all positions", _NOTHING, _all_positions_gate)
RANDOM_GATE = FklGate("random fraction", _NOTHING, _random_gate)
KD_CE = ExtraTerm("ce_loss", 1.0, _kd_ce)
ENTROPY_BONUS = ExtraTerm("entropy_bonus", -1.0, _entropy_bonus)


def ratio_term(
    advantage: Advantage | None,
    batch: LossBatch,
    args: VariantArgs,
    clip_eps: float,
    behaviour_weight_cap: float | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The (decoupled) clipped PG term [B, T] and its [B, T] diagnostics, by metric name.

    ``advantage`` None: no ratio term (zero, no diagnostics). With ``batch.prox_BT`` the ratio is
    anchored at the proximal policy and weighted by the capped :func:`behaviour_weight`.
    """
    if advantage is None:
        return batch.logp_BT.new_zeros(batch.logp_BT.shape), {}
    adv_BT, extra = advantage.fn(batch, args)
    weight_BT = None
    if batch.prox_BT is not None:
        assert batch.behav_BT is not None
        weight_BT, capped_BT = behaviour_weight(batch.prox_BT, batch.behav_BT, behaviour_weight_cap)
        extra["behaviour_weight_mean"] = weight_BT
        extra["behaviour_weight_capped_frac"] = capped_BT
    pg_BT, ratio_BT, clipped_BT = pg_clipped_term(
        batch.logp_BT, batch.anchor_BT, adv_BT, clip_eps, weight_BT
    )
    extra["clip_frac"] = clipped_BT
    extra["ratio_mean"] = ratio_BT.detach()
    extra["advantage_mean"] = adv_BT
    return pg_BT, extra


def fkl_term(
    gate: FklGate | None, weight: float, batch: LossBatch, args: VariantArgs
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """``(fkl_BT, gate_BT, term_BT)``, all [B, T].

    ``fkl_BT``: :func:`topk_fkl`, whenever the top-k is given (None otherwise; diagnostics for
    variants without an FKL term). ``gate_BT``: bool, None when ``gate`` is None. ``term_BT``: the
    contribution ``weight·1[gate]·L_FKL`` to the loss, zero without a gate.
    """
    fkl_BT = None
    if batch.teacher_topk_lp_BTK is not None:
        fkl_BT = topk_fkl(batch.teacher_topk_lp_BTK, batch.topk_logp_BTK)
    if gate is None:
        return fkl_BT, None, batch.logp_BT.new_zeros(batch.logp_BT.shape)
    assert fkl_BT is not None
    gate_BT = gate.fn(batch, args)
    return fkl_BT, gate_BT, gated_fkl(fkl_BT, gate_BT, weight)
