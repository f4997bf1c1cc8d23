"""The learner: DeepSpeed data-parallel workers on Ray Train, driven step by step from the driver.

RLlib's LearnerGroup idea: one interface for a *local* learner (``num_workers=1``, the same code)
and a *distributed* one. Ray Train's ``TorchTrainer.fit()`` blocks and runs a whole training loop
inside its workers, while the pipeline needs generate -> score -> train -> sync, one step at a
time, under the driver's control. So ``fit()`` runs in a background thread of the driver, and the
workers' ``train_loop_per_worker`` is a *command loop*: each worker builds the student and its
DeepSpeed engine once, then serves commands (train, state_dict, save, load, stop) until told to
stop.

Commands travel through Ray queues (:class:`ray.util.queue.Queue`): one in-queue per rank, since
each rank gets its own shard of a batch, and one shared out-queue for the replies. Queues are
plain Ray actors with no CPU reservation; a coordinator actor would add nothing but code. Bulky
data never sits in a queue: a batch shard is ``ray.put`` by the driver and a state dict by rank 0,
and only the object refs are queued.

Failure handling. A worker that raises puts the formatted exception on the out-queue before
re-raising, so the driver raises :class:`LearnerGroupError` with the worker's message and
traceback; Ray Train (``max_failures=0``) then tears the worker group down, which also frees ranks
stuck in a collective. The driver polls the out-queue with a short timeout and checks that
``fit()`` is still running, so a worker killed from outside (OOM, node loss) surfaces as an error
too, and every command has a deadline; after a timeout the workers are killed. A group that has
failed refuses further commands.

Versions: ``LearnerGroup.version`` is the number of completed :meth:`LearnerGroup.train_batch`
calls (plus the starting version given to the constructor, or the one restored by
:meth:`LearnerGroup.load_checkpoint`). A sampler running the weights of :meth:`state_dict` taken
at version ``v`` must stamp its tokens with ``v``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from eopd_ray.config import (
    LearnerConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    PipelineConfig,
    RunConfig,
)
from eopd_ray.learners.batch import (
    collate,
    count_tokens,
    dummy_batch,
    micro_batches,
    shard_by_tokens,
    split_mini_batches,
)
from eopd_ray.rollout import ScoredRollout

__all__ = ["LearnerGroup", "LearnerGroupError", "loss_variant_args", "token_logprobs"]

logger = logging.getLogger(__name__)

_DS_SUBDIR = "deepspeed"  # DeepSpeed optimizer/scheduler state inside a checkpoint folder
_DS_TAG = "state"
_STATE_FILE = "learner_state.json"
_POLL_S = 0.5


class LearnerGroupError(RuntimeError):
    """A learner worker failed (its message and traceback are included) or the group is unusable."""


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


@torch.no_grad()
def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """``log softmax(logits)[..., tokens]`` in float32, [B, T], without a [B, T, V] float32 copy."""
    B, T, _ = logits.shape
    out = torch.empty((B, T), dtype=torch.float32, device=logits.device)
    for b in range(B):
        for s in range(0, T, chunk_size):
            z = logits[b, s : s + chunk_size].float()
            tok = tokens[b, s : s + chunk_size].to(z.device)
            out[b, s : s + chunk_size] = z.gather(-1, tok[:, None]).squeeze(-1) - z.logsumexp(-1)
    return out


# --------------------------------------------------------------------------------------------
# Worker side (runs inside the Ray Train workers)
# --------------------------------------------------------------------------------------------


def _ds_config(learner: LearnerConfig, optim: OptimConfig, dtype: str, world: int) -> dict:
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


class _Worker:
    """One data-parallel rank: the student, its DeepSpeed engine, and the command handlers."""

    def __init__(self, cfg: dict[str, Any], rank: int, world: int) -> None:
        t_import = time.perf_counter()
        import deepspeed
        from transformers import AutoModelForCausalLM

        from eopd_ray.learners.schedule import make_scheduler

        self.cfg, self.rank, self.world = cfg, rank, world
        student: ModelConfig = cfg["student"]
        learner: LearnerConfig = cfg["learner"]
        optim: OptimConfig = cfg["optim"]
        if not learner.use_gpu:
            torch.set_num_threads(max(1, int(learner.num_cpus_per_worker)))
            if student.dtype == "float16":
                raise ValueError("student.dtype float16 needs GPUs: DeepSpeed has no fp16 on CPU")
        t0 = time.perf_counter()
        dtype = getattr(torch, student.dtype)
        model = AutoModelForCausalLM.from_pretrained(student.path, dtype=dtype)
        if learner.gradient_checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        model.config.use_cache = False
        pad = model.config.pad_token_id
        if pad is None:
            pad = model.config.eos_token_id
        if isinstance(pad, list | tuple):
            pad = pad[0] if pad else None
        self.pad_id = int(pad) if pad is not None else 0
        t1 = time.perf_counter()
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=optim.lr,
            betas=tuple(optim.betas),
            weight_decay=optim.weight_decay,
        )
        scheduler = make_scheduler(optimizer, optim, cfg["total_steps"])
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=_ds_config(learner, optim, student.dtype, world),
        )
        self.zero_stage = learner.zero_stage
        self.device = self.engine.device
        self._clip_norm: float | None = None
        if learner.zero_stage == 0 and student.dtype == "float32":
            self._record_fp32_grad_norm()
        self.init_info = {
            "import_s": t0 - t_import,
            "load_s": t1 - t0,
            "deepspeed_init_s": time.perf_counter() - t1,
            "num_parameters": sum(
                p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters()
            ),
            "pid": os.getpid(),
        }
        self._keep: Any = None  # the last object ref handed out, kept alive until the next command

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
            self._clip_norm = float(norm)

        engine.clip_fp32_gradients = clip_and_record

    # -- commands ---------------------------------------------------------------------------
    def handle(self, cmd: str, payload: Any) -> Any:
        import ray

        self._keep = None
        if cmd == "train":
            return self.train(ray.get(payload["data"][0]), payload["options"])
        if cmd == "state_dict":
            sd = self.full_state_dict()
            if sd is None:
                return None
            self._keep = ray.put(sd)
            return {"ref": [self._keep]}
        if cmd == "save":
            return self.save(Path(payload["dir"]), payload["version"])
        if cmd == "load":
            return self.load(Path(payload["dir"]))
        if cmd == "raise":  # for tests: a worker error that is not a collective mismatch
            raise RuntimeError(payload.get("message", "requested failure"))
        if cmd == "stop":
            return None
        raise ValueError(f"unknown learner command {cmd!r}")

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in batch.items()}

    def _logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.engine(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        )
        return out.logits[:, :-1]

    def train(self, shards: list[dict[str, Any]], opts: dict[str, Any]) -> dict[str, Any]:
        """Algorithm 1 on this rank's shards: one optimizer step per mini-batch."""
        from eopd_ray.learners.loss import eopd_loss

        t0 = time.perf_counter()
        k, chunk = opts["top_k"], opts["chunk_size"]

        def tensors(m: list[ScoredRollout] | None) -> dict[str, torch.Tensor]:
            b = collate(m, self.pad_id, top_k=k) if m else dummy_batch(self.pad_id, top_k=k)
            return self._to_device(b)

        batches = [[tensors(m) for m in shard["micro"]] for shard in shards]
        decoupled = opts["importance"] == "decoupled"
        proximal: list[list[torch.Tensor]] | None = None
        prox_s = 0.0
        if decoupled:  # the proximal policy: the weights at the start of this iteration
            tp = time.perf_counter()
            self.engine.eval()  # no dropout in the proximal policy
            with torch.no_grad():
                proximal = [
                    [token_logprobs(self._logits(b), b["tokens"], chunk) for b in mb]
                    for mb in batches
                ]
            prox_s = time.perf_counter() - tp

        self.engine.train()
        version = opts["version"]
        records: list[dict[str, float]] = []
        steps: list[dict[str, float]] = []
        mismatch = [0.0, 0.0, 0]  # sum |Δ|, max |Δ|, tokens
        stale = [0.0, 0.0, 0]  # sum, max, tokens of (learner version - token version)
        for i, mb in enumerate(batches):
            normalizer = shards[i]["normalizer"] / self.world  # DeepSpeed averages over ranks
            for j, b in enumerate(mb):
                variant_args = dict(opts["variant_args"])
                if opts["variant"] == "random_fkl":
                    seed = hash((opts["seed"], version, self.rank, i, j)) & (2**63 - 1)
                    gen = torch.Generator(device=self.device).manual_seed(seed)
                    variant_args["generator"] = gen
                if opts["variant"] == "grpo":
                    if "advantages" not in b and b["mask"].any():
                        raise ValueError("loss variant 'grpo' needs stats['advantage'] per rollout")
                    no_adv = torch.zeros(b["mask"].shape[0], device=self.device)
                    variant_args["advantages"] = b.get("advantages", no_adv)
                logits = self._logits(b)
                loss, metrics = eopd_loss(
                    student_logits=logits,
                    tokens=b["tokens"],
                    mask=b["mask"],
                    behaviour_logprobs=b["behaviour_logprobs"],
                    teacher_logprobs=b["teacher_logprobs"],
                    teacher_entropy=b["teacher_entropy"],
                    teacher_topk_ids=b["teacher_topk_ids"],
                    teacher_topk_logprobs=b["teacher_topk_logprobs"],
                    variant=opts["variant"],
                    tau=opts["tau"],
                    clip_eps=opts["clip_eps"],
                    proximal_logprobs=proximal[i][j] if proximal is not None else None,
                    behaviour_weight_cap=opts["behaviour_weight_cap"] if decoupled else None,
                    token_normalizer=normalizer,
                    chunk_size=chunk,
                    **variant_args,
                )
                n = int(metrics["num_tokens"])
                if n:
                    # eopd_loss's "loss" is Σ/normalizer; the mean over this micro-batch's tokens:
                    metrics["loss"] = metrics["loss"] * normalizer / n
                    records.append({"mini_batch": i, **metrics})
                    response = b["mask"]
                    lag = (version - b["versions"][response]).float()
                    stale[0] += lag.sum().item()
                    stale[1] = max(stale[1], lag.max().item())
                    stale[2] += n
                    if i == 0:  # sampler vs learner at equal versions, iteration-start weights
                        same = response & (b["versions"] == version)
                        if same.any():
                            logp = token_logprobs(logits.detach(), b["tokens"], chunk)
                            diff = (logp - b["behaviour_logprobs"]).abs()[same]
                            mismatch[0] += diff.sum().item()
                            mismatch[1] = max(mismatch[1], diff.max().item())
                            mismatch[2] += int(same.sum())
                self.engine.backward(loss, scale_wrt_gas=False)
                del logits, loss
            lr = float(self.optimizer.param_groups[0]["lr"])
            self.engine.step()
            grad_norm = self.engine.get_global_grad_norm()
            if grad_norm is None:
                grad_norm, self._clip_norm = self._clip_norm, None
            steps.append(
                {"lr": lr, "grad_norm": float(grad_norm) if grad_norm is not None else math.nan}
            )
        return {
            "records": records,
            "steps": steps,
            "mismatch": mismatch,
            "staleness": stale,
            "time_s": time.perf_counter() - t0,
            "proximal_time_s": prox_s,
        }

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full CPU weights on rank 0 (``None`` elsewhere); a collective under ZeRO-3."""
        module = self.engine.module
        out: dict[str, torch.Tensor] = {}
        copies: dict[int, torch.Tensor] = {}  # tied weights stay one tensor
        if self.zero_stage == 3:
            import deepspeed

            params = dict(module.named_parameters(remove_duplicate=False))
            for name, value in module.state_dict().items():
                p = params.get(name)
                if p is None:  # a buffer: not partitioned
                    if self.rank == 0:
                        out[name] = value.detach().to("cpu", copy=True)
                    continue
                if id(p) in copies:
                    if self.rank == 0:
                        out[name] = copies[id(p)]
                    continue
                with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                    if self.rank == 0:
                        copies[id(p)] = out[name] = p.detach().to("cpu", copy=True)
                    else:
                        copies[id(p)] = p  # only to know it was gathered
            return out if self.rank == 0 else None
        if self.rank != 0:
            return None
        for name, value in module.state_dict(keep_vars=True).items():
            key = id(value)
            if key not in copies:
                copies[key] = value.detach().to("cpu", copy=True)
            out[name] = copies[key]
        return out

    def save(self, folder: Path, version: int) -> dict[str, Any]:
        sd = self.full_state_dict()
        self.engine.save_checkpoint(
            str(folder / _DS_SUBDIR), tag=_DS_TAG, client_state={"version": version}
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
        path, client_state = self.engine.load_checkpoint(
            str(folder / _DS_SUBDIR),
            tag=_DS_TAG,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed learner state under {folder / _DS_SUBDIR}")
        # LambdaLR.load_state_dict restores the step count, not the optimizer's lr: set it.
        sched = self.scheduler
        for group, base, fn in zip(
            sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas, strict=True
        ):
            group["lr"] = base * fn(sched.last_epoch)
        return {"version": int((client_state or {}).get("version", 0))}


def _error_text(exc: BaseException) -> str:
    """The exception's own line first, then the worker's traceback."""
    summary = "".join(traceback.format_exception_only(exc)).strip()
    return f"{summary}\n{''.join(traceback.format_exception(exc)).rstrip()}"


def _train_loop_per_worker(cfg: dict[str, Any]) -> None:
    """Ray Train's per-worker function: build the engine, then serve commands until ``stop``."""
    import ray
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    in_queue, out_queue = cfg["in_queues"][rank], cfg["out_queue"]

    def reply(cmd_id: int, ok: bool, payload: Any) -> None:
        key = "payload" if ok else "error"
        out_queue.put({"id": cmd_id, "rank": rank, "ok": ok, key: payload})

    try:
        worker = _Worker(cfg, rank, world)
    except BaseException as exc:
        reply(0, False, _error_text(exc))
        raise
    handle = ray.get_runtime_context().current_actor
    reply(0, True, {**worker.init_info, "actor": handle})
    while True:
        msg = in_queue.get()
        try:
            result = worker.handle(msg["cmd"], msg["payload"])
        except BaseException as exc:
            # Report first, then fail the worker: Ray Train tears the whole group down, which
            # also frees the ranks that wait in a collective for this one.
            reply(msg["id"], False, _error_text(exc))
            raise
        reply(msg["id"], True, result)
        if msg["cmd"] == "stop":
            return


# --------------------------------------------------------------------------------------------
# Driver side
# --------------------------------------------------------------------------------------------

_UNSET: Any = object()


def _aggregate(replies: list[dict[str, Any]]) -> dict[str, float]:
    """Token-weighted means of the per-micro-batch metrics of all ranks, and the step metrics."""
    records = [r for rep in replies for r in rep["records"]]
    out: dict[str, float] = {}
    total = sum(r["num_tokens"] for r in records)
    keys = sorted({k for r in records for k in r} - {"num_tokens", "mini_batch"})
    for key in keys:
        rows = [r for r in records if key in r]
        if key == "ratio_min":
            out[key] = min(r[key] for r in rows)
        elif key == "ratio_max":
            out[key] = max(r[key] for r in rows)
        elif key == "fkl_high_entropy":  # a mean over high-entropy tokens only
            w = [r["num_tokens"] * r.get("high_entropy_frac", 0.0) for r in rows]
            out[key] = sum(wi * r[key] for wi, r in zip(w, rows, strict=True)) / max(sum(w), 1e-12)
        else:
            out[key] = sum(r["num_tokens"] * r[key] for r in rows) / max(total, 1)
    out["num_tokens"] = float(total)
    steps = replies[0]["steps"]
    out["optimizer_steps"] = float(len(steps))
    out["lr"] = steps[-1]["lr"]
    out["lr_first"] = steps[0]["lr"]
    norms = [s["grad_norm"] for s in steps]
    out["grad_norm"] = sum(norms) / len(norms)
    out["grad_norm_max"] = max(norms)
    m_sum = sum(rep["mismatch"][0] for rep in replies)
    m_n = sum(rep["mismatch"][2] for rep in replies)
    out["logprob_mismatch_tokens"] = float(m_n)
    if m_n:
        out["logprob_mismatch_mean"] = m_sum / m_n
        out["logprob_mismatch_max"] = max(rep["mismatch"][1] for rep in replies)
    s_n = sum(rep["staleness"][2] for rep in replies)
    if s_n:
        out["staleness_mean"] = sum(rep["staleness"][0] for rep in replies) / s_n
        out["staleness_max"] = max(rep["staleness"][1] for rep in replies)
    out["worker_time_s"] = max(rep["time_s"] for rep in replies)
    out["proximal_time_s"] = max(rep["proximal_time_s"] for rep in replies)
    return out


class LearnerGroup:
    """Data-parallel DeepSpeed learners on Ray Train, driven one command at a time.

    Needs a running Ray (``ray.init``). Construction starts the workers and waits until every rank
    has built its DeepSpeed engine (``startup_timeout_s``); ``startup_info`` then holds the load
    and DeepSpeed-init times per rank.

    Args:
        student: the checkpoint the learner starts from (and its dtype).
        learner: workers, ZeRO stage, micro-batch size, backend.
        optim: AdamW and its schedule (cosine or constant, with warmup and ``min_lr_ratio``).
        loss: the default objective of :meth:`train_batch`.
        pipeline: the default ``importance`` and ``behaviour_weight_cap``.
        total_steps: optimizer steps of the whole run (for the cosine schedule); one per
            mini-batch.
        version: the starting policy version.
        seed: seeds the ``random_fkl`` draws.
        storage_path: Ray Train's run folder; a temporary folder (removed at shutdown) if None.
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
        storage_path: str | os.PathLike | None = None,
        name: str | None = None,
        startup_timeout_s: float = 900.0,
        command_timeout_s: float = 3600.0,
    ) -> None:
        import ray
        from ray.util.queue import Queue

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
        self.command_timeout_s = command_timeout_s
        self._version = version
        self._cmd_id = 0
        self._failure: BaseException | None = None
        self._closed = False
        self._actors: list[Any] = []
        self._fit_error: BaseException | None = None
        self._tmp_storage = None
        if storage_path is None:
            self._tmp_storage = tempfile.mkdtemp(prefix="eopd-learner-")
            storage_path = self._tmp_storage
        world = self.learner.num_workers
        opts = {"num_cpus": 0}
        self._in = [Queue(actor_options=opts) for _ in range(world)]
        self._out = Queue(actor_options=opts)

        cfg = {
            "student": self.student,
            "learner": self.learner,
            "optim": self.optim,
            "total_steps": total_steps,
            "in_queues": self._in,
            "out_queue": self._out,
        }
        self._trainer = _make_trainer(
            cfg, self.learner, str(storage_path), name or f"learner-{uuid.uuid4().hex[:8]}"
        )
        self._thread = threading.Thread(target=self._fit, name="learner-group-fit", daemon=True)
        t0 = time.perf_counter()
        self._thread.start()
        try:
            hello = self._wait(0, startup_timeout_s, "start-up")
        except BaseException:
            self.shutdown()
            raise
        self.startup_info: dict[str, Any] = {
            "startup_s": time.perf_counter() - t0,
            "ranks": hello,
            "deepspeed_init_s": max(h["deepspeed_init_s"] for h in hello),
        }

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
        ``num_tokens``, ``num_sequences``, ``optimizer_steps``, ``lr`` (of the last step) and
        ``lr_first``, ``grad_norm`` (before clipping, mean over steps) and ``grad_norm_max``,
        ``logprob_mismatch_{mean,max}`` (|log π_θ - behaviour_logprobs| at the first mini-batch,
        over tokens whose version equals the learner's; absent when there are none) and
        ``logprob_mismatch_tokens``, ``staleness_{mean,max}`` (learner version - token version),
        ``time_s`` (driver wall time), ``worker_time_s``, ``proximal_time_s``, ``version`` (after
        this call).
        """
        import ray

        self._check_usable()
        loss = loss or self.loss
        importance = importance or self.pipeline.importance
        if behaviour_weight_cap is _UNSET:
            behaviour_weight_cap = self.pipeline.behaviour_weight_cap
        if importance not in ("behaviour", "decoupled"):
            raise ValueError(f"importance must be 'behaviour' or 'decoupled', got {importance!r}")
        if importance == "decoupled" and loss.variant == "kd":
            raise ValueError("decoupled importance needs a ratio; loss variant 'kd' has none")
        if not batch:
            raise ValueError("train_batch needs at least one rollout")
        t0 = time.perf_counter()
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
        options = {
            "variant": loss.variant,
            "tau": loss.tau,
            "clip_eps": loss.clip_eps,
            "top_k": loss.top_k,
            "chunk_size": loss.chunk_size,
            "variant_args": loss_variant_args(loss),
            "importance": importance,
            "behaviour_weight_cap": behaviour_weight_cap,
            "version": self._version,
            "seed": self.seed,
        }
        payloads = [{"data": [ray.put(shard)], "options": options} for shard in per_rank]
        replies = self._command("train", payloads)
        metrics = _aggregate(replies)
        metrics["num_sequences"] = float(len(batch))
        self._version += 1
        metrics["version"] = float(self._version)
        metrics["time_s"] = time.perf_counter() - t0
        return metrics

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The full student weights as CPU tensors (gathered on rank 0; works under ZeRO-3)."""
        import ray

        self._check_usable()
        replies = self._command("state_dict", None)
        return ray.get(replies[0]["ref"][0])

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
        self._command("save", {"dir": str(path), "version": self._version})
        return path

    def load_checkpoint(self, folder: str | os.PathLike) -> int:
        """Restore weights, optimizer, scheduler and version from :meth:`save_checkpoint`.

        Returns the restored version. The optimizer state is partitioned as it was saved: resume
        with the same ``num_workers`` and ZeRO stage (to change them, start a group from the HF
        folder as ``student.path``, which keeps the weights but not the AdamW moments).
        """
        self._check_usable()
        path = Path(_absolute(str(folder)))
        if not (path / _DS_SUBDIR).is_dir():
            raise FileNotFoundError(f"{path}: no learner state ({_DS_SUBDIR}/ is missing)")
        replies = self._command("load", {"dir": str(path)})
        self._version = replies[0]["version"]
        return self._version

    def shutdown(self, timeout_s: float = 120.0) -> None:
        """Stop the workers (cleanly if the group is healthy, by force otherwise). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._failure is None and self._thread.is_alive() and self._actors:
            try:
                self._command("stop", None, timeout_s=timeout_s, check=False)
            except BaseException as exc:
                logger.warning("learner group did not stop cleanly: %s", exc)
            else:
                self._thread.join(timeout=timeout_s)  # fit() returns once every rank has stopped
        if self._thread.is_alive():
            self._kill_workers()
            self._thread.join(timeout=timeout_s)
        for q in [*self._in, self._out]:
            with contextlib.suppress(Exception):  # the queue actor is gone already
                q.shutdown(force=True)
        if self._tmp_storage is not None:
            shutil.rmtree(self._tmp_storage, ignore_errors=True)

    def __enter__(self) -> LearnerGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- internals ----------------------------------------------------------------------------
    def _fit(self) -> None:
        try:
            self._trainer.fit()
        except BaseException as exc:  # reported by _wait
            self._fit_error = exc

    def _check_usable(self) -> None:
        if self._closed:
            raise LearnerGroupError("the learner group is shut down")
        if self._failure is not None:
            raise LearnerGroupError(f"the learner group failed earlier: {self._failure}")

    def _command(
        self, cmd: str, payload: Any, *, timeout_s: float | None = None, check: bool = True
    ) -> list[Any]:
        """Send ``cmd`` to every rank (``payload``: one for all, or a list with one per rank)."""
        if check:
            self._check_usable()
        self._cmd_id += 1
        payloads = payload if isinstance(payload, list) else [payload] * self.num_workers
        for q, p in zip(self._in, payloads, strict=True):
            q.put({"id": self._cmd_id, "cmd": cmd, "payload": p})
        return self._wait(self._cmd_id, timeout_s or self.command_timeout_s, cmd)

    def _wait(self, cmd_id: int, timeout_s: float, what: str) -> list[Any]:
        from ray.util.queue import Empty

        deadline = time.monotonic() + timeout_s
        replies: dict[int, Any] = {}
        while len(replies) < self.num_workers:
            try:
                msg = self._out.get(timeout=_POLL_S)
            except Empty:
                if not self._thread.is_alive():
                    raise self._fail(
                        LearnerGroupError(
                            f"learner workers exited during {what}: {self._fit_error!r}"
                        )
                    ) from self._fit_error
                if time.monotonic() > deadline:
                    raise self._fail(
                        LearnerGroupError(
                            f"learner {what} timed out after {timeout_s:.0f} s "
                            f"({len(replies)}/{self.num_workers} ranks replied)"
                        )
                    ) from None
                continue
            if not msg["ok"]:
                raise self._fail(
                    LearnerGroupError(
                        f"learner rank {msg['rank']} failed during {what}:\n{msg['error']}"
                    )
                )
            if msg["id"] == cmd_id:
                replies[msg["rank"]] = msg["payload"]
                if cmd_id == 0:  # start-up: the rank's actor, to kill it if anything goes wrong
                    self._actors.append(msg["payload"].pop("actor"))
        return [replies[r] for r in range(self.num_workers)]

    def _fail(self, exc: BaseException) -> BaseException:
        self._failure = exc
        self._kill_workers()
        return exc

    def _kill_workers(self) -> None:
        import ray

        for actor in self._actors:
            with contextlib.suppress(Exception):  # already dead
                ray.kill(actor, no_restart=True)


def _absolute(path: str) -> str:
    """Absolute local paths (Ray Train changes the workers' directory); hub names unchanged."""
    p = Path(path).expanduser()
    return str(p.resolve()) if p.exists() or path.startswith((".", "/", "~")) else path


def _make_trainer(cfg: dict[str, Any], learner: LearnerConfig, storage: str, name: str) -> Any:
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    backend = learner.backend
    if backend == "auto":
        backend = "nccl" if learner.use_gpu else "gloo"
    resources: dict[str, float] = {"CPU": learner.num_cpus_per_worker}
    resources.update(learner.resources_per_worker)
    if learner.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        _train_loop_per_worker,
        train_loop_config=cfg,
        torch_config=TorchConfig(backend=backend),
        scaling_config=ray.train.ScalingConfig(
            num_workers=learner.num_workers,
            use_gpu=learner.use_gpu,
            resources_per_worker=resources,
            placement_strategy=learner.placement_strategy,  # one placement group, all workers
            label_selector=dict(learner.label_selector) or None,
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=0),
        ),
    )
