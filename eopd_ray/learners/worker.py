"""One learner rank: a plain Ray actor running the student's DeepSpeed engine (SPMD).

:class:`eopd_ray.learners.worker_group.WorkerGroup` starts one :class:`LearnerWorker` actor per
rank in one placement group, asks rank 0 for a rendezvous address (:meth:`master_address`: its
node IP and a free port) and calls :meth:`setup` on every rank with it: each rank then joins the
learners' ``torch.distributed`` process group itself (gloo on CPU, NCCL on GPU) and builds its
engine (:mod:`eopd_ray.learners.engine`) with ``learner.num_threads`` torch threads. From then on
the driver calls the same method on every rank at once, as in verl / OpenRLHF: :meth:`train` (one
iteration of Algorithm 1 on the rank's shards), :meth:`state_dict`, :meth:`save`, :meth:`load`. A
method that raises leaves the actor up and raises in the driver's ``ray.get``; the driver then
kills the whole group, since the other ranks may wait in a collective for this one.

Memory: a micro-batch is reduced to its response positions (``engine.response_batch``: every
per-token tensor ``[1, N]``) and the output layer runs only there, chunk by chunk inside the loss
(``engine.student_logits``), so neither the prompt positions' logits nor a ``[B, L, V]`` tensor
exist (under ZeRO-3: one ``[N, V]`` call).

Non-finite steps: if the loss of any micro-batch on any rank is not finite (a flag all-reduced
before ``engine.step()``), or the gradient norm is not finite, the optimizer step is skipped on
every rank (:class:`eopd_ray.learners.engine.StepGuard`): weights, AdamW moments and learning-rate
schedule stay as they were, and the step is reported with ``skipped = 1``.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from eopd_ray.actors.weight_broadcast import TensorSpec, WeightGroup, WeightSender
from eopd_ray.learners.batch import collate, dummy_batch
from eopd_ray.learners.engine import (
    StepGuard,
    build_engine,
    full_state_dict,
    response_batch,
    student_logits,
)
from eopd_ray.rollout import ScoredRollout
from eopd_ray.vocab import LogitsFn, vocab_stats

__all__ = ["DS_SUBDIR", "LearnerWorker", "token_logprobs"]

DS_SUBDIR = "deepspeed"  # DeepSpeed optimizer/scheduler state inside a checkpoint folder
_DS_TAG = "state"
_STATE_FILE = "learner_state.json"


@torch.no_grad()
def token_logprobs(
    logits: torch.Tensor | LogitsFn, tokens: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """``log softmax(logits)[..., tokens]`` in float32, [B, T], from logits [B, T, V] or a
    LogitsFn over the B*T positions, without a [B, T, V] float32 copy (``eopd_ray/vocab.py``)."""
    return vocab_stats(logits, tokens, chunk_size=chunk_size, dtype=torch.float32).logprobs


def worker_threads(num_threads: int | None, num_cpus: float) -> int:
    """torch intra-op threads of a worker: ``learner.num_threads``, else its CPUs (at least 1)."""
    return num_threads if num_threads is not None else max(1, int(num_cpus))


@dataclass
class _Tally:
    """Per-micro-batch loss metrics and the token statistics of one :meth:`LearnerWorker.train`."""

    records: list[dict[str, float]] = field(default_factory=list)
    mismatch: list[float] = field(default_factory=lambda: [0.0, 0.0, 0])  # sum |Δ|, max, tokens
    stale: list[float] = field(default_factory=lambda: [0.0, 0.0, 0])  # sum, max, tokens of lag


class LearnerWorker:
    """One data-parallel rank: the student, its DeepSpeed engine, and the driver's calls."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world
        self._layer_checked = False  # student_logits' output-layer check, on the first forward

    # -- process group and engine -----------------------------------------------------------
    def master_address(self) -> tuple[str, int]:
        """This node's IP and a free port: the rendezvous of the process group (rank 0)."""
        import ray

        addr = ray.util.get_node_ip_address()
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            port = int(s.getsockname()[1])
        return addr, port

    def setup(self, cfg: dict[str, Any], master_addr: str, master_port: int) -> dict[str, Any]:
        """Join the process group at ``master_addr:master_port``, then build the engine.

        ``cfg``: ``student``, ``learner``, ``optim`` (the configs) and ``total_steps``. Ray gives
        each GPU actor its own device, so every rank is ``LOCAL_RANK`` 0 on its visible GPU.
        """
        learner = cfg["learner"]
        torch.set_num_threads(worker_threads(learner.num_threads, learner.num_cpus_per_worker))
        self._join_process_group(learner.backend, learner.use_gpu, master_addr, master_port)
        self.cfg = cfg
        built = build_engine(cfg["student"], learner, cfg["optim"], cfg["total_steps"], self.world)
        self.engine, self.optimizer, self.scheduler = built.engine, built.optimizer, built.scheduler
        self.pad_id = built.pad_id
        self.zero_stage = learner.zero_stage
        self.device = self.engine.device
        fp32_without_zero = learner.zero_stage == 0 and cfg["student"].dtype == "float32"
        self.guard = StepGuard(built, fp32_without_zero)
        return {**built.info, "num_threads": torch.get_num_threads()}

    def _join_process_group(self, backend: str, use_gpu: bool, addr: str, port: int) -> None:
        import torch.distributed as dist

        if backend == "auto":
            backend = "nccl" if use_gpu else "gloo"
        env = {"MASTER_ADDR": addr, "MASTER_PORT": str(port), "LOCAL_RANK": "0"}
        env |= {"RANK": str(self.rank), "WORLD_SIZE": str(self.world), "LOCAL_WORLD_SIZE": "1"}
        os.environ.update(env)  # DeepSpeed reads them too
        if use_gpu:
            torch.cuda.set_device(0)
        # deepspeed.initialize then adopts this group instead of starting its own.
        dist.init_process_group(
            backend, init_method="env://", rank=self.rank, world_size=self.world
        )

    def shutdown(self) -> None:
        """Leave the process group (the driver kills the actor next)."""
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    # -- one iteration of Algorithm 1 -------------------------------------------------------
    def train(self, shards: list[dict[str, Any]], opts: dict[str, Any]) -> dict[str, Any]:
        """Algorithm 1 on this rank's shards: one optimizer step per mini-batch."""
        t0 = time.perf_counter()
        k = None if opts["variant"] == "grpo" else opts["top_k"]  # grpo: no teacher tensors
        batches = [[self._tensors(m, k) for m in shard["micro"]] for shard in shards]
        proximal, prox_s = self._proximal_logprobs(batches, opts)
        self.engine.train()
        tally = _Tally()
        steps: list[dict[str, float]] = []
        for i, mb in enumerate(batches):
            normalizer = shards[i]["normalizer"] / self.world  # DeepSpeed averages over ranks
            nonfinite = torch.zeros((), dtype=torch.float32, device=self.device)
            for j, b in enumerate(mb):
                prox = proximal[i][j] if proximal is not None else None
                nonfinite += self._micro_step(b, i, j, opts, normalizer, prox, tally)
            steps.append(self._optimizer_step(nonfinite))
        return {
            "records": tally.records,
            "steps": steps,
            "mismatch": tally.mismatch,
            "staleness": tally.stale,
            "time_s": time.perf_counter() - t0,
            "proximal_time_s": prox_s,
        }

    def _tensors(
        self, micro: list[ScoredRollout] | None, top_k: int | None
    ) -> dict[str, torch.Tensor]:
        """The micro-batch on the device, reduced to its response positions (``[1, N]``);
        ``top_k`` None: no teacher tensors (GRPO)."""
        pad = self.pad_id
        b = collate(micro, pad, top_k=top_k) if micro else dummy_batch(pad, top_k=top_k)
        return response_batch({key: v.to(self.device) for key, v in b.items()})

    def _logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | LogitsFn:
        """The student's logits at the batch's response positions (``engine.student_logits``)."""
        check, self._layer_checked = not self._layer_checked, True
        return student_logits(self.engine, batch, one_call=self.zero_stage == 3, check=check)

    def _proximal_logprobs(
        self, batches: list[list[dict[str, torch.Tensor]]], opts: dict[str, Any]
    ) -> tuple[list[list[torch.Tensor]] | None, float]:
        """With decoupled importance: the weights at the start of this iteration; its time."""
        if opts["importance"] != "decoupled":
            return None, 0.0
        tp = time.perf_counter()
        self.engine.eval()  # no dropout in the proximal policy
        with torch.no_grad():
            proximal = [
                [token_logprobs(self._logits(b), b["tokens"], opts["chunk_size"]) for b in mb]
                for mb in batches
            ]
        return proximal, time.perf_counter() - tp

    def _variant_args(
        self, b: dict[str, torch.Tensor], i: int, j: int, opts: dict[str, Any]
    ) -> dict[str, Any]:
        variant_args = dict(opts["variant_args"])
        if opts["variant"] == "random_fkl":
            seed = hash((opts["seed"], opts["version"], self.rank, i, j)) & (2**63 - 1)
            gen = torch.Generator(device=self.device).manual_seed(seed)
            variant_args["generator"] = gen
        if opts["variant"] == "grpo":
            if "advantages" not in b and b["mask"].any():
                raise ValueError("loss variant 'grpo' needs stats['advantage'] per rollout")
            no_adv = torch.zeros(b["mask"].shape[0], device=self.device)
            variant_args["advantages"] = b.get("advantages", no_adv)
        return variant_args

    def _micro_step(
        self,
        b: dict[str, torch.Tensor],
        i: int,
        j: int,
        opts: dict[str, Any],
        normalizer: float,
        proximal: torch.Tensor | None,
        tally: _Tally,
    ) -> torch.Tensor:
        """Forward, loss and backward of micro-batch ``j`` of mini-batch ``i``; 1.0 if the loss
        is not finite, else 0.0 (a device scalar: no sync)."""
        from eopd_ray.learners.loss import eopd_loss

        decoupled = opts["importance"] == "decoupled"
        logits = self._logits(b)
        loss, metrics = eopd_loss(
            student_logits=logits,
            tokens=b["tokens"],
            mask=b["mask"],
            behaviour_logprobs=b["behaviour_logprobs"],
            teacher_logprobs=b.get("teacher_logprobs"),  # absent for GRPO rollouts
            teacher_entropy=b.get("teacher_entropy"),
            teacher_topk_ids=b.get("teacher_topk_ids"),
            teacher_topk_logprobs=b.get("teacher_topk_logprobs"),
            variant=opts["variant"],
            tau=opts["tau"],
            clip_eps=opts["clip_eps"],
            proximal_logprobs=proximal,
            behaviour_weight_cap=opts["behaviour_weight_cap"] if decoupled else None,
            token_normalizer=normalizer,
            chunk_size=opts["chunk_size"],
            **self._variant_args(b, i, j, opts),
        )
        self._record(b, i, logits, metrics, normalizer, opts, tally)
        nonfinite = (~torch.isfinite(loss.detach())).float()
        self.engine.backward(loss, scale_wrt_gas=False)
        return nonfinite

    def _record(
        self,
        b: dict[str, torch.Tensor],
        i: int,
        logits: torch.Tensor | LogitsFn,
        metrics: dict[str, float],
        normalizer: float,
        opts: dict[str, Any],
        tally: _Tally,
    ) -> None:
        """A micro-batch's metrics, staleness and (first mini-batch) sampler/learner mismatch."""
        n = int(metrics["num_tokens"])
        if not n:
            return
        version, chunk = opts["version"], opts["chunk_size"]
        # eopd_loss's "loss" is Σ/normalizer; the mean over this micro-batch's tokens:
        metrics["loss"] = metrics["loss"] * normalizer / n
        tally.records.append({"mini_batch": i, **metrics})
        response = b["mask"]
        lag = (version - b["versions"][response]).float()
        stale = tally.stale
        stale[0] += lag.sum().item()
        stale[1] = max(stale[1], lag.max().item())
        stale[2] += n
        if i == 0:  # sampler vs learner at equal versions, iteration-start weights
            same = response & (b["versions"] == version)
            if same.any():
                # no grad; a LogitsFn runs the output layer once more, over N positions
                logp = token_logprobs(logits, b["tokens"], chunk)
                diff = (logp - b["behaviour_logprobs"]).abs()[same]
                mismatch = tally.mismatch
                mismatch[0] += diff.sum().item()
                mismatch[1] = max(mismatch[1], diff.max().item())
                mismatch[2] += int(same.sum())

    def _optimizer_step(self, nonfinite: torch.Tensor) -> dict[str, float]:
        """``engine.step()``, skipped on every rank if any rank's loss was not finite (or the
        gradient norm is not): see the module docstring."""
        import torch.distributed as dist

        lr = float(self.optimizer.param_groups[0]["lr"])
        dist.all_reduce(nonfinite, op=dist.ReduceOp.MAX)  # every rank skips, or none
        skipped_before = self.engine.skipped_steps
        self.guard.before_step(skip=bool(nonfinite.item() > 0))
        self.engine.step()
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is None:
            grad_norm, self.guard.clip_norm = self.guard.clip_norm, None
        return {
            "lr": lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else math.nan,
            "skipped": float(self.engine.skipped_steps > skipped_before),
        }

    # -- weights and checkpoints ------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor] | None:
        """The full CPU weights on rank 0, ``None`` on the others (gathered under ZeRO-3)."""
        return full_state_dict(self.engine, self.rank, self.zero_stage)

    def open_weight_sender(self) -> tuple[str, int, tuple[TensorSpec, ...]] | None:
        """Collective weight sync: rank 0 hosts the rendezvous store; (host, port, what is
        sent) on rank 0, None elsewhere (``eopd_ray/actors/weight_broadcast.py``)."""
        import ray

        host = ray.util.get_node_ip_address()
        self._sender = WeightSender(self.engine.module, self.rank, self.zero_stage, host)
        return (host, self._sender.port, self._sender.specs()) if self.rank == 0 else None

    def broadcast_weights(self, group: WeightGroup) -> dict[str, Any]:
        """Every rank: send the weights to ``group`` (rank 0 broadcasts; ZeRO-3 ranks gather)."""
        return self._sender.send(group)

    def stage_weights(self, group: WeightGroup) -> dict[str, float]:
        """Every rank: copy this version's weights for an overlapped send (ZeRO-3 ranks gather)."""
        return self._sender.stage(group)

    def start_weight_send(self, group: WeightGroup) -> None:
        """Rank 0: send the staged copy to ``group`` from a thread; returns at once."""
        self._sender.start_send(group)

    def join_weight_send(self) -> dict[str, Any]:
        """Rank 0: the staged send's timings once it is done (``error`` if a receiver failed)."""
        return self._sender.join_send()

    def save(self, folder: Path, version: int) -> dict[str, Any]:
        """Rank 0 writes the HF folder; every rank its part of the DeepSpeed state."""
        sd = self.state_dict()
        self.engine.save_checkpoint(
            str(folder / DS_SUBDIR), tag=_DS_TAG, client_state={"version": version}
        )
        info: dict[str, Any] = {}
        if self.rank == 0:
            assert sd is not None
            self.engine.module.save_pretrained(folder, state_dict=sd)
            try:
                from transformers import AutoTokenizer

                AutoTokenizer.from_pretrained(self.cfg["student"].path).save_pretrained(folder)
                info["tokenizer"] = True
            except (OSError, ValueError) as exc:  # a student folder without a tokenizer
                info["tokenizer"] = False
                info["tokenizer_error"] = str(exc)
            state = {"version": version, "global_steps": int(self.engine.global_steps)}
            (folder / _STATE_FILE).write_text(json.dumps(state, indent=1))
        return info

    def load(self, folder: Path) -> dict[str, Any]:
        """Restore weights, optimizer and scheduler of :meth:`save`; the saved version."""
        path, client_state = self.engine.load_checkpoint(
            str(folder / DS_SUBDIR),
            tag=_DS_TAG,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed learner state under {folder / DS_SUBDIR}")
        # LambdaLR.load_state_dict restores the step count, not the optimizer's lr: set it.
        sched = self.scheduler
        for group, base, fn in zip(
            sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas, strict=True
        ):
            group["lr"] = base * fn(sched.last_epoch)
        return {"version": int((client_state or {}).get("version", 0))}
