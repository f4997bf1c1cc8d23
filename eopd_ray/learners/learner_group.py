"""The learner: data-parallel DeepSpeed ranks as plain Ray actors, driven step by step.

RLlib's LearnerGroup idea: one interface for a *local* learner (``num_workers=1``: the same code,
one actor) and a *distributed* one. The pipeline needs generate -> score -> train -> sync one step
at a time under the driver's control, so the ranks are plain Ray actors, as in verl and OpenRLHF,
and every public method here calls the same worker method on every rank and waits for all:
``ray.get([w.train.remote(shard, opts) for w in workers])``.

Layout: :mod:`eopd_ray.learners.worker_group` places the actors (one placement group), has them
join one ``torch.distributed`` group and makes the calls, with a deadline (``command_timeout_s``)
and errors raised where they happen (:class:`LearnerGroupError`); :mod:`eopd_ray.learners.worker`
is one rank (an iteration of Algorithm 1, weights, checkpoints) and :mod:`eopd_ray.learners.engine`
its DeepSpeed engine. This module is the driver's facade: batch sharding (``batch.py``), the
training options, the aggregation of the ranks' metrics (``train_metrics.py``), versions, and
recovery; its weight-source half (collective sync) is in ``weight_source.py``.

Failures. A failed group (a worker raised, died or timed out; all its workers are then killed)
refuses further calls; :meth:`LearnerGroup.restart` builds a fresh one (new placement group, new
process group), optionally from a checkpoint.

Non-finite steps: an optimizer step whose loss or gradient norm is not finite on any rank is
skipped on all (weights, optimizer state and schedule unchanged); :meth:`LearnerGroup.train_batch`
reports ``skipped_steps`` and :attr:`LearnerGroup.consecutive_skipped` counts the skipped steps
since the last applied one.

Versions: ``LearnerGroup.version`` is the number of completed :meth:`LearnerGroup.train_batch`
calls (plus the starting version given to the constructor, or the one restored by
:meth:`LearnerGroup.load_checkpoint`). A sampler running the weights of :meth:`state_dict` taken
at version ``v`` must stamp its tokens with ``v``.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from eopd_ray.actors.weight_broadcast import TensorSpec
from eopd_ray.config import (
    LearnerConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    PipelineConfig,
    RunConfig,
)
from eopd_ray.learners.batch import count_tokens, micro_batches, shard_by_tokens, split_mini_batches
from eopd_ray.learners.train_metrics import aggregate_train_replies
from eopd_ray.learners.weight_source import LearnerWeights
from eopd_ray.learners.worker import DS_SUBDIR
from eopd_ray.learners.worker_group import LearnerGroupError, WorkerGroup
from eopd_ray.rollout import ScoredRollout

__all__ = ["LearnerGroup", "LearnerGroupError", "loss_variant_args", "train_options"]

logger = logging.getLogger(__name__)

_UNSET: Any = object()


def loss_variant_args(loss: LossConfig) -> dict[str, Any]:
    """The ``**variant_args`` of :func:`eopd_loss` for ``loss.variant``, from the config."""
    return {
        "random_fkl": {"random_fkl_fraction": loss.random_fkl_fraction},
        "entropy_bonus": {"entropy_bonus_beta": loss.entropy_bonus_beta},
        "advantage_shaping": {
            "shaping_alpha": loss.shaping_alpha,
            "shaping_kappa": loss.shaping_kappa,
        },
        "kd": {"kd_ce_weight": loss.kd_ce_weight},
    }.get(loss.variant, {})


def train_options(
    loss: LossConfig,
    importance: str,
    behaviour_weight_cap: float | None,
    version: int,
    seed: int,
) -> dict[str, Any]:
    """The ``opts`` of :meth:`LearnerWorker.train`: what every rank needs of one call besides
    its shards (checked by :meth:`LearnerGroup.train_batch`)."""
    return {
        "variant": loss.variant,
        "tau": loss.tau,
        "clip_eps": loss.clip_eps,
        "top_k": loss.top_k,
        "chunk_size": loss.chunk_size,
        "variant_args": loss_variant_args(loss),
        "importance": importance,
        "behaviour_weight_cap": behaviour_weight_cap,
        "version": version,
        "seed": seed,
    }


class LearnerGroup(LearnerWeights):
    """Data-parallel DeepSpeed learners, plain Ray actors driven one call at a time.

    Needs a running Ray (``ray.init``). Construction starts the workers and waits until every rank
    has built its DeepSpeed engine (``startup_timeout_s``); ``startup_info`` then holds the load
    and DeepSpeed-init times per rank. Every later call must finish within ``command_timeout_s``,
    else all workers are killed and it raises :class:`LearnerGroupError`.

    Args:
        student: the checkpoint the learner starts from (and its dtype).
        learner: workers, placement, ZeRO stage, micro-batch size, backend.
        optim: AdamW and its schedule (cosine or constant, with warmup and ``min_lr_ratio``).
        loss: the default objective of :meth:`train_batch`.
        pipeline: the default ``importance`` and ``behaviour_weight_cap``.
        total_steps: optimizer steps of the whole run (for the cosine schedule); one per
            mini-batch.
        version: the starting policy version.
        seed: seeds the ``random_fkl`` draws.
        name: the placement group's name (default ``learner-<random>``).
    """

    def __init__(
        self,
        student: ModelConfig,
        learner: LearnerConfig | None = None,
        optim: OptimConfig | None = None,
        loss: LossConfig | None = None,
        pipeline: PipelineConfig | None = None,
        *,
        total_steps: int,
        version: int = 0,
        seed: int = 0,
        name: str | None = None,
        startup_timeout_s: float = 900.0,
        command_timeout_s: float = 3600.0,
    ) -> None:
        import ray

        if not ray.is_initialized():
            raise LearnerGroupError("LearnerGroup needs a running Ray: call ray.init() first")
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.student = student.model_copy(update={"path": _absolute(student.path)})
        self.learner = learner or LearnerConfig()
        self.optim = optim or OptimConfig()
        self.loss = loss or LossConfig()
        self.pipeline = pipeline or PipelineConfig()
        self.total_steps = total_steps
        self.seed = seed
        self.name = name or f"learner-{uuid.uuid4().hex[:8]}"
        self.startup_timeout_s = startup_timeout_s
        self.command_timeout_s = command_timeout_s
        self._start_version = version
        self._version = version
        self._consecutive_skipped = 0
        self._closed = False
        self._group = self._start_group()

    def _start_group(self) -> WorkerGroup:
        """A fresh set of workers from ``student.path``; sets ``startup_info``."""
        self._sender: tuple[str, int, tuple[TensorSpec, ...]] | None = None  # its weight store
        cfg = {
            "student": self.student,
            "learner": self.learner,
            "optim": self.optim,
            "total_steps": self.total_steps,
        }
        t0 = time.perf_counter()
        group = WorkerGroup(
            self.learner, cfg, name=self.name, startup_timeout_s=self.startup_timeout_s
        )
        hello = group.init_info
        self.startup_info: dict[str, Any] = {
            "startup_s": time.perf_counter() - t0,
            "ranks": hello,
            "deepspeed_init_s": max(h["deepspeed_init_s"] for h in hello),
        }
        return group

    @classmethod
    def from_config(cls, config: RunConfig, *, total_steps: int, **kwargs: Any) -> LearnerGroup:
        """A group for ``config`` (student, learner, optim, loss, pipeline, seed)."""
        kwargs.setdefault("seed", config.seed)
        return cls(
            config.student,
            config.learner,
            config.optim,
            config.loss,
            config.pipeline,
            total_steps=total_steps,
            **kwargs,
        )

    # -- public API ---------------------------------------------------------------------------
    @property
    def version(self) -> int:
        """Number of completed :meth:`train_batch` calls (plus the starting version)."""
        return self._version

    @property
    def num_workers(self) -> int:
        return self.learner.num_workers

    @property
    def consecutive_skipped(self) -> int:
        """Optimizer steps skipped (non-finite) since the last applied one, over calls."""
        return self._consecutive_skipped

    def train_batch(
        self,
        batch: Sequence[ScoredRollout],
        *,
        mini_batches: int,
        loss: LossConfig | None = None,
        importance: str | None = None,
        behaviour_weight_cap: float | None = _UNSET,
    ) -> dict[str, float]:
        """One iteration of Algorithm 1 on ``batch``; returns the aggregated metrics.

        ``batch`` is cut into ``mini_batches`` contiguous mini-batches, each one optimizer step.
        A mini-batch is sharded over the ranks (balancing tokens) and each shard runs in
        micro-batches of ``learner.micro_batch_sequences`` sequences with gradient accumulation;
        the loss is normalised by the mini-batch's total response-token count over all ranks, so
        the gradient is that of "sum over tokens / number of tokens". With ``importance ==
        "decoupled"`` every rank first recomputes the proximal log-probs of its share of the
        whole batch with the current weights (no grad) and the loss uses them with
        ``behaviour_weight_cap``. ``loss``, ``importance`` and ``behaviour_weight_cap`` default
        to the group's configs.

        Metrics: every metric of :func:`eopd_loss` as a token-weighted mean over all micro-batches
        (``ratio_min``/``ratio_max``: min/max; ``fkl_high_entropy``: over high-entropy tokens),
        ``num_tokens``, ``num_sequences``, ``optimizer_steps``, ``skipped_steps`` (steps of this
        call skipped for a non-finite loss or gradient norm), ``lr`` (of the last step) and
        ``lr_first``, ``grad_norm`` (before clipping, mean over steps) and ``grad_norm_max``,
        ``logprob_mismatch_{mean,max}`` (|log π_θ - behaviour_logprobs| at the first mini-batch,
        over tokens whose version equals the learner's; absent when there are none) and
        ``logprob_mismatch_tokens``, ``staleness_{mean,max}`` (learner version - token version),
        ``time_s`` (driver wall time), ``worker_time_s``, ``proximal_time_s``, ``version`` (after
        this call).
        """
        import ray

        self._check_usable()
        options = self._train_options(loss, importance, behaviour_weight_cap)
        if not batch:
            raise ValueError("train_batch needs at least one rollout")
        t0 = time.perf_counter()
        per_rank = self._shard(batch, mini_batches)
        args = [(ray.put(shard), options) for shard in per_rank]
        replies = self._group.call("train", args, timeout_s=self.command_timeout_s, what="train")
        metrics = aggregate_train_replies(replies)
        for step in replies[0]["steps"]:
            self._consecutive_skipped = self._consecutive_skipped + 1 if step["skipped"] else 0
        metrics["num_sequences"] = float(len(batch))
        self._version += 1
        metrics["version"] = float(self._version)
        metrics["time_s"] = time.perf_counter() - t0
        return metrics

    def _train_options(
        self, loss: LossConfig | None, importance: str | None, behaviour_weight_cap: Any
    ) -> dict[str, Any]:
        """What every rank needs to know of this call besides its shards; checks the choices."""
        loss = loss or self.loss
        importance = importance or self.pipeline.importance
        if behaviour_weight_cap is _UNSET:
            behaviour_weight_cap = self.pipeline.behaviour_weight_cap
        if importance not in ("behaviour", "decoupled"):
            raise ValueError(f"importance must be 'behaviour' or 'decoupled', got {importance!r}")
        if importance == "decoupled" and loss.variant == "kd":
            raise ValueError("decoupled importance needs a ratio; loss variant 'kd' has none")
        return train_options(loss, importance, behaviour_weight_cap, self._version, self.seed)

    def _shard(self, batch: Sequence[ScoredRollout], mini_batches: int) -> list[list[dict]]:
        """Per rank, per mini-batch: the loss normalizer and the micro-batches (``None``: empty,
        so that every rank runs the same number of forward/backward passes)."""
        world = self.num_workers
        per_rank: list[list[dict[str, Any]]] = [[] for _ in range(world)]
        for part in split_mini_batches(list(batch), mini_batches):
            shards = shard_by_tokens(part, world)
            micro = [
                micro_batches([part[i] for i in s], self.learner.micro_batch_sequences)
                for s in shards
            ]
            steps = max(1, max(len(m) for m in micro))
            for rank in range(world):
                per_rank[rank].append(
                    {
                        "normalizer": float(max(count_tokens(part), 1)),
                        "micro": micro[rank] + [None] * (steps - len(micro[rank])),
                    }
                )
        return per_rank

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The full student weights as CPU tensors (gathered on rank 0; works under ZeRO-3)."""
        self._check_usable()
        return self._call("state_dict")[0]

    def save_checkpoint(self, folder: str | os.PathLike) -> Path:
        """Write a Hugging Face folder (safetensors, config, tokenizer) plus the resume state.

        ``folder`` loads with ``AutoModelForCausalLM.from_pretrained`` and can be a later run's
        ``student.path``; ``folder/deepspeed`` holds the optimizer and scheduler state and
        ``folder/learner_state.json`` the version, for :meth:`load_checkpoint`. On a multi-node
        cluster ``folder`` must be on storage every worker can reach.
        """
        self._check_usable()
        path = Path(_absolute(str(folder)))
        path.mkdir(parents=True, exist_ok=True)
        self._call("save", (path, self._version))
        return path

    def load_checkpoint(self, folder: str | os.PathLike) -> int:
        """Restore weights, optimizer, scheduler and version from :meth:`save_checkpoint`.

        Returns the restored version. The optimizer state is partitioned as it was saved: resume
        with the same ``num_workers`` and ZeRO stage (to change them, start a group from the HF
        folder as ``student.path``, which keeps the weights but not the AdamW moments).
        """
        self._check_usable()
        path = Path(_absolute(str(folder)))
        if not (path / DS_SUBDIR).is_dir():
            raise FileNotFoundError(f"{path}: no learner state ({DS_SUBDIR}/ is missing)")
        replies = self._call("load", (path,))
        self._version = replies[0]["version"]
        self._consecutive_skipped = 0
        return self._version

    def restart(self, checkpoint: str | os.PathLike | None = None) -> int:
        """Kill every worker and start a fresh group (new placement group, new process group).

        For recovery after a :class:`LearnerGroupError` (a dead worker, say). With
        ``checkpoint`` the new group loads it (:meth:`load_checkpoint`); without, it starts from
        ``student.path`` at the constructor's starting version. Returns the version.
        """
        if self._closed:
            raise LearnerGroupError("the learner group is shut down")
        self._group.kill()
        self._group = self._start_group()
        self._version = self._start_version
        self._consecutive_skipped = 0
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
        return self._version

    def shutdown(self, timeout_s: float = 120.0) -> None:
        """Stop the workers (cleanly if the group is healthy, by force otherwise). Idempotent."""
        if self._closed:
            return
        self._closed = True
        error = self._group.stop(timeout_s)
        if error is not None:
            logger.warning("learner group did not stop cleanly: %s", error)

    def __enter__(self) -> LearnerGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- internals ----------------------------------------------------------------------------
    def _check_usable(self) -> None:
        if self._closed:
            raise LearnerGroupError("the learner group is shut down")
        if self._group.failure is not None:
            raise LearnerGroupError(f"the learner group failed earlier: {self._group.failure}")

    def _call(self, method: str, args: tuple = ()) -> list[Any]:
        """``method(*args)`` on every rank, within ``command_timeout_s``."""
        per_rank = [args] * self.num_workers
        return self._group.call(method, per_rank, timeout_s=self.command_timeout_s, what=method)


def _absolute(path: str) -> str:
    """Absolute local paths (a worker's working directory need not be the driver's); hub names
    unchanged."""
    p = Path(path).expanduser()
    return str(p.resolve()) if p.exists() or path.startswith((".", "/", "~")) else path
