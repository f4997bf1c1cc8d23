"""The student's DeepSpeed engine on one learner rank: construction, skipped steps, full weights.

Used by :class:`eopd_ray.learners.worker.LearnerWorker` once its rank has joined the learners'
``torch.distributed`` group. :func:`build_engine` loads the student and wraps it, with a torch
AdamW and the learning-rate schedule of :mod:`eopd_ray.learners.schedule`, in a DeepSpeed engine
whose gradient-accumulation boundary the caller owns. :class:`StepGuard` lets the caller skip an
optimizer step. :func:`full_state_dict` gathers the full CPU weights on rank 0, also under ZeRO-3.
:func:`response_batch` and :func:`student_logits` are the student's forward pass: the output layer
is applied at the response positions only, chunk by chunk (docs/design.md §2.9).

Skipped steps. DeepSpeed's ZeRO and fp16/bf16 optimizers already skip a step whose gradient norm
is not finite: they drop the gradients and raise ``optimizer.overflow``, and the engine then
counts the step in ``engine.skipped_steps`` and leaves the learning-rate schedule where it is.
fp32 without ZeRO has no such check, and a non-finite *loss* can come with finite gradients; for
those the guard skips the client optimizer's update itself and raises the same ``overflow`` flag,
so every skip, whoever detects it, is booked alike.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from eopd_ray.config import LearnerConfig, ModelConfig, OptimConfig
from eopd_ray.vocab import LogitsFn, output_layer_fn

__all__ = [
    "PER_TOKEN_KEYS",
    "BuiltEngine",
    "StepGuard",
    "build_engine",
    "ds_config",
    "full_state_dict",
    "response_batch",
    "student_logits",
]

# collate's per-token tensors, [B, L-1] or [B, L-1, k] (the teacher's are absent for GRPO)
PER_TOKEN_KEYS = (
    "tokens",
    "mask",
    "behaviour_logprobs",
    "teacher_logprobs",
    "teacher_entropy",
    "teacher_topk_ids",
    "teacher_topk_logprobs",
    "versions",
)


def ds_config(learner: LearnerConfig, optim: OptimConfig, dtype: str, world: int) -> dict:
    """The DeepSpeed config of the learner: one micro-batch per ``backward``, no managed GAS."""
    return {
        "train_micro_batch_size_per_gpu": learner.micro_batch_sequences,
        "gradient_accumulation_steps": 1,
        "train_batch_size": learner.micro_batch_sequences * world,
        # The caller owns the accumulation boundary: every engine.step() reduces the gradients
        # accumulated since the last one and applies an update, whatever the number of
        # micro-batches (a mini-batch's count varies with its sequences and lengths).
        "managed_gradient_accumulation": False,
        "gradient_clipping": optim.grad_clip,
        "zero_optimization": {"stage": learner.zero_stage},
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16"},
        "zero_allow_untested_optimizer": True,  # the client torch AdamW
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


@dataclass
class BuiltEngine:
    """What :func:`build_engine` returns: the engine and its parts, and the start-up timings."""

    engine: Any  # deepspeed.DeepSpeedEngine
    optimizer: Any  # DeepSpeed's optimizer wrapper (or the client AdamW without ZeRO in fp32)
    client_optimizer: torch.optim.Optimizer  # the torch AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    pad_id: int
    info: dict[str, Any]


def _load_student(student: ModelConfig, learner: LearnerConfig) -> tuple[Any, int]:
    """The student model in training mode settings, and its pad id (eos if none, else 0)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(student.path, dtype=getattr(torch, student.dtype))
    if learner.gradient_checkpointing:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    model.config.use_cache = False
    pad = model.config.pad_token_id
    if pad is None:
        pad = model.config.eos_token_id
    if isinstance(pad, list | tuple):
        pad = pad[0] if pad else None
    return model, int(pad) if pad is not None else 0


def build_engine(
    student: ModelConfig,
    learner: LearnerConfig,
    optim: OptimConfig,
    total_steps: int,
    world: int,
) -> BuiltEngine:
    """Load the student and build its DeepSpeed engine (the process group must be up)."""
    t_import = time.perf_counter()
    import deepspeed

    from eopd_ray.learners.schedule import make_scheduler

    if not learner.use_gpu and student.dtype == "float16":
        raise ValueError("student.dtype float16 needs GPUs: DeepSpeed has no fp16 on CPU")
    t0 = time.perf_counter()
    model, pad_id = _load_student(student, learner)
    t1 = time.perf_counter()
    client = torch.optim.AdamW(
        model.parameters(),
        lr=optim.lr,
        betas=tuple(optim.betas),
        weight_decay=optim.weight_decay,
    )
    scheduler = make_scheduler(client, optim, total_steps)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model,
        optimizer=client,
        lr_scheduler=scheduler,
        config=ds_config(learner, optim, student.dtype, world),
    )
    info = {
        "import_s": t0 - t_import,
        "load_s": t1 - t0,
        "deepspeed_init_s": time.perf_counter() - t1,
        "num_parameters": sum(
            p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters()
        ),
        "pid": os.getpid(),
    }
    return BuiltEngine(engine, optimizer, client, scheduler, pad_id, info)


class StepGuard:
    """Skips the client optimizer's update of the next ``engine.step()`` when ``skip`` is set.

    Installed over the client optimizer's ``step`` (which DeepSpeed calls from inside
    ``engine.step()``, once per parameter sub-group under ZeRO-3); see the module docstring.
    Without ZeRO in fp32 it also records the gradient norm, which DeepSpeed computes there but
    does not keep, and skips the step when that norm is not finite.
    """

    def __init__(self, built: BuiltEngine, fp32_without_zero: bool) -> None:
        self.engine = built.engine
        self.client = built.client_optimizer
        self.skip = False
        self.clip_norm: float | None = None
        self._client_step = self.client.step
        self.client.step = self._step  # type: ignore[method-assign]
        if fp32_without_zero:
            self._record_fp32_grad_norm()

    def before_step(self, skip: bool) -> None:
        """Arm the guard for the coming ``engine.step()``."""
        self.skip = skip
        if self.engine.optimizer is self.client:  # no wrapper that resets its own flag
            self.client.overflow = False  # type: ignore[attr-defined]

    def _step(self, *args: Any, **kwargs: Any) -> Any:
        if not self.skip:
            return self._client_step(*args, **kwargs)
        # The engine reads this right after the optimizer step: count the skip, keep the lr.
        self.engine.optimizer.overflow = True
        return None

    def _record_fp32_grad_norm(self) -> None:
        """Without ZeRO in fp32, DeepSpeed clips with the client optimizer but keeps no norm."""
        from deepspeed.runtime.utils import clip_grad_norm_

        engine = self.engine

        def clip_and_record() -> None:
            norm = clip_grad_norm_(
                parameters=engine.module.parameters(),
                max_norm=engine.gradient_clipping(),
                mpu=engine.mpu,
            )
            self.clip_norm = float(norm)
            if not math.isfinite(self.clip_norm):  # the same on every rank: reduced gradients
                self.skip = True

        engine.clip_fp32_gradients = clip_and_record


def full_state_dict(engine: Any, rank: int, zero_stage: int) -> dict[str, torch.Tensor] | None:
    """Full CPU weights on rank 0 (``None`` elsewhere); a collective under ZeRO-3."""
    module = engine.module
    out: dict[str, torch.Tensor] = {}
    copies: dict[int, torch.Tensor] = {}  # tied weights stay one tensor
    if zero_stage == 3:
        import deepspeed

        params = dict(module.named_parameters(remove_duplicate=False))
        for name, value in module.state_dict().items():
            p = params.get(name)
            if p is None:  # a buffer: not partitioned
                if rank == 0:
                    out[name] = value.detach().to("cpu", copy=True)
                continue
            if id(p) in copies:
                if rank == 0:
                    out[name] = copies[id(p)]
                continue
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                if rank == 0:
                    copies[id(p)] = out[name] = p.detach().to("cpu", copy=True)
                else:
                    copies[id(p)] = p  # only to know it was gathered
        return out if rank == 0 else None
    if rank != 0:
        return None
    for name, value in module.state_dict(keep_vars=True).items():
        key = id(value)
        if key not in copies:
            copies[key] = value.detach().to("cpu", copy=True)
        out[name] = copies[key]
    return out


def response_batch(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A :func:`~eopd_ray.learners.batch.collate` batch reduced to its response positions.

    ``input_ids`` and ``attention_mask`` [B, L] stay (the forward pass needs the prompts);
    ``rows`` and ``cols`` [N] are the positions where ``mask`` is true, row-major; every per-token
    tensor present becomes ``[1, N]`` (``[1, N, k]``) and ``advantages`` [B] becomes per token
    ``[1, N]``. Without response tokens (a dummy batch) one position stays, masked out, so that
    the loss is an exact zero that still carries a graph.
    """
    mask_BT = batch["mask"].bool()
    rows, cols = mask_BT.nonzero(as_tuple=True)
    if rows.numel() == 0:
        rows = cols = torch.zeros(1, dtype=torch.long, device=mask_BT.device)
    out = {key: batch[key] for key in ("input_ids", "attention_mask")}
    out |= {"rows": rows, "cols": cols}
    out |= {key: batch[key][rows, cols][None] for key in PER_TOKEN_KEYS if key in batch}
    if "advantages" in batch:
        out["advantages"] = batch["advantages"][rows][None]
    return out


def student_logits(
    engine: Any, batch: Mapping[str, torch.Tensor], *, one_call: bool = False, check: bool = False
) -> torch.Tensor | LogitsFn:
    """The student's forward pass on a :func:`response_batch`, its logits at the N response
    positions only: no ``[B, L, V]`` tensor (the model's own output layer runs on the last
    position only).

    Returns a :data:`~eopd_ray.vocab.LogitsFn` over the N positions, which applies the output
    layer to a slice of their final hidden states when the loss's chunk loop asks (under grad,
    again in the backward pass); with ``one_call`` the logits ``[1, N, V]`` of one output-layer
    call instead (ZeRO-3: each call of a partitioned layer is a collective, so every rank must
    make the same number, whatever its N). ``check``: first verify that the output layer applied
    to the final hidden states gives the model's own logits (a model that rescales its logits
    after the output layer is refused with one line).
    """
    module = getattr(engine, "module", engine)  # the HF model inside a DeepSpeed engine
    out = engine(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        use_cache=False,
        output_hidden_states=True,  # hidden_states[-1]: the final (normed) hidden states
        logits_to_keep=1,
    )
    hidden_BLH = out.hidden_states[-1]
    layer = module.get_output_embeddings()
    softcap = getattr(module.config, "final_logit_softcapping", None)
    if check:
        _check_output_layer(out.logits[:, -1], output_layer_fn(hidden_BLH[:, -1], layer, softcap))
    logits_fn = output_layer_fn(hidden_BLH[batch["rows"], batch["cols"]], layer, softcap)
    return logits_fn(0, batch["rows"].numel())[None] if one_call else logits_fn


@torch.no_grad()
def _check_output_layer(model_BV: torch.Tensor, logits_fn: LogitsFn) -> None:
    """Raises ValueError unless ``logits_fn`` reproduces the model's logits ``model_BV`` [B, V]."""
    ours_BV = logits_fn(0, model_BV.shape[0]).float()
    model_BV = model_BV.float()
    worst = (ours_BV - model_BV).abs().max().item()
    if worst > 0.02 * max(1.0, model_BV.abs().max().item()):
        raise ValueError(
            "the student's output layer applied to its final hidden states differs from its "
            f"logits (max |diff| {worst:.3g}): a model that rescales its logits is not supported"
        )
