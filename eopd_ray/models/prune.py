"""Width pruning: the tiny preset's student is cut out of its pre-trained teacher.

Every decoder layer keeps the ``width`` MLP neurons (rows of ``gate_proj`` / ``up_proj``, columns
of ``down_proj``) with the largest mean activation magnitude at the input of ``down_proj`` over
calibration examples; attention, embeddings and depth are unchanged. This is the activation-based
width pruning of Minitron (Muralidharan et al., 2024, "Compact Language Models via Pruning and
Knowledge Distillation"), whose pruned models are then repaired by distillation, as here.

Why not a randomly initialised student: a from-scratch 0.6M-parameter student, pre-trained for a
few minutes, could not learn the task's arithmetic within a CPU-sized distillation run (README,
"what the tiny preset shows"). A pruned student keeps the teacher's circuits but loses part of
what its MLPs stored, so it starts far below the teacher and distillation has a gap it can close.
``eopd_ray.models.pretrain`` calls it after pre-training the teacher.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from eopd_ray.models.tokenizer import save_tokenizer

__all__ = ["mlp_neuron_importance", "prune_mlp_width", "prune_teacher_into_student"]


def _gated_mlps(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers' gated MLPs (Llama / Qwen layout: gate_proj, up_proj, down_proj)."""
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no decoder layers to prune")
    mlps = [layer.mlp for layer in layers]
    for mlp in mlps:
        if not all(hasattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj")):
            raise ValueError(
                f"width pruning needs gated MLPs (gate_proj, up_proj, down_proj); "
                f"{type(model).__name__} has {type(mlp).__name__}"
            )
    return mlps


@torch.no_grad()
def mlp_neuron_importance(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> list[torch.Tensor]:
    """Per layer, the mean |activation| of each MLP neuron [intermediate] over the real (unmasked)
    tokens of ``input_ids`` / ``attention_mask`` [B, L]: the input of ``down_proj``."""
    mlps = _gated_mlps(model)
    mask = attention_mask.to(torch.float32)[..., None]  # [B, L, 1]
    totals: list[torch.Tensor] = [torch.zeros(())] * len(mlps)
    handles = [
        mlp.down_proj.register_forward_hook(partial(_record_activation, totals, i, mask))
        for i, mlp in enumerate(mlps)
    ]
    try:
        model.eval()
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return [total / mask.sum() for total in totals]


def _record_activation(
    totals: list[torch.Tensor],
    index: int,
    mask: torch.Tensor,
    module: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    output: torch.Tensor,
) -> None:
    """Forward hook on ``down_proj``: sum of |input| per neuron over the real tokens."""
    totals[index] = (inputs[0].float().abs() * mask).sum(dim=(0, 1))


def _keep_rows(linear: torch.nn.Linear, index: torch.Tensor, dim: int) -> torch.nn.Linear:
    weight = linear.weight.detach().index_select(dim, index).clone()
    bias = linear.bias
    if bias is not None and dim == 0:
        bias = bias.detach().index_select(0, index).clone()
    out = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    out.to(dtype=weight.dtype, device=weight.device)
    out.weight.data.copy_(weight)
    if bias is not None:
        out.bias.data.copy_(bias)
    return out


@torch.no_grad()
def prune_mlp_width(
    model: torch.nn.Module, importance: list[torch.Tensor], width: int
) -> list[torch.Tensor]:
    """Keep, in place, the ``width`` most important neurons of every MLP; returns the kept
    neuron indices per layer (sorted, so the surviving neurons keep their order)."""
    mlps = _gated_mlps(model)
    if len(importance) != len(mlps):
        raise ValueError(f"importance has {len(importance)} layers, the model {len(mlps)}")
    current = mlps[0].down_proj.in_features
    if not 1 <= width < current:
        raise ValueError(f"width must be in [1, {current}) to prune, got {width}")
    kept = []
    for mlp, scores in zip(mlps, importance, strict=True):
        index = scores.topk(width).indices.sort().values.to(mlp.down_proj.weight.device)
        mlp.gate_proj = _keep_rows(mlp.gate_proj, index, 0)
        mlp.up_proj = _keep_rows(mlp.up_proj, index, 0)
        mlp.down_proj = _keep_rows(mlp.down_proj, index, 1)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = width
        kept.append(index.cpu())
    model.config.intermediate_size = width
    return kept


def prune_teacher_into_student(
    teacher_dir: Path,
    student_dir: Path,
    calibration: tuple[torch.Tensor, torch.Tensor],
    width: int,
) -> dict[str, float]:
    """Save into ``student_dir`` the teacher in ``teacher_dir`` with its MLPs pruned to ``width``
    neurons, ranked on ``calibration`` = (input_ids, attention_mask) [B, L]. The tokenizer is the
    teacher's, so the vocabularies match."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    teacher_parameters = sum(p.numel() for p in model.parameters())
    prune_mlp_width(model, mlp_neuron_importance(model, *calibration), width)
    student_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(student_dir)
    save_tokenizer(AutoTokenizer.from_pretrained(teacher_dir), student_dir)
    return {
        "teacher_parameters": teacher_parameters,
        "student_parameters": sum(p.numel() for p in model.parameters()),
        "mlp_width": width,
    }
