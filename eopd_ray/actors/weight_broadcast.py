"""Collective weight sync: learner rank 0 broadcasts the student's weights to the engines.

``sampler.weight_sync: collective`` (the default). Learner rank 0 hosts a rendezvous store
(``torch.distributed.TCPStore``); for a publication the sampler pool forms a group of rank 0 and
every target engine worker (``WeightGroup``: ranks 1.., one per tensor-parallel worker), each
member joins it (a standalone gloo or NCCL process group: the learners' own DeepSpeed group is
not touched), and rank 0 broadcasts the weights in buckets of at most ``weight_bucket_mb``,
straight from the training engine: under ZeRO-3 every learner rank gathers one bucket's
parameters at a time (``deepspeed.zero.GatheredParameters``), so no rank holds the full model
twice. Each engine worker receives inside vLLM (``receive_into_engine``, run through
``LLM.collective_rpc``) and feeds the buckets, as they arrive, to vLLM's in-place
``reload_weights``: no copy through the driver or the object store, no files. The group is kept
while the pool's membership is unchanged; a restarted or added sampler gets the weights in a
group of its own first.

Backends: gloo on CPU (what runs and is tested here), NCCL when learner and engines are on GPUs.
Every operation is bounded by ``weight_sync_timeout_s``: a member that died mid-broadcast makes
the others fail instead of hang, and the pool replaces it and broadcasts again
(``eopd_ray/actors/weight_sync.py``).
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["GroupMember", "TensorSpec", "WeightGroup", "WeightSender", "plan_buckets"]


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the broadcast, in checkpoint naming."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # torch dtype name, e.g. "float32"

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * getattr(torch, self.dtype).itemsize


@dataclass(frozen=True)
class WeightGroup:
    """Everything a member needs to join one broadcast group and to know what it carries."""

    name: str  # unique per group: the members' prefix in the store
    host: str  # learner rank 0's node: the rendezvous store
    port: int
    world_size: int  # rank 0 (the learner) + every target engine worker
    backend: str  # "gloo" or "nccl"
    timeout_s: float
    tensors: tuple[TensorSpec, ...]
    bucket_bytes: int

    def buckets(self) -> list[list[int]]:
        return plan_buckets(self.tensors, self.bucket_bytes)


def plan_buckets(tensors: Sequence[TensorSpec], bucket_bytes: int) -> list[list[int]]:
    """Indices of ``tensors`` per bucket, in order: a bucket holds consecutive tensors of one
    dtype up to ``bucket_bytes`` (a larger tensor travels alone)."""
    buckets: list[list[int]] = []
    size, dtype = 0, None
    for i, t in enumerate(tensors):
        if not buckets or t.dtype != dtype or size + t.nbytes > bucket_bytes:
            buckets.append([])
            size, dtype = 0, t.dtype
        buckets[-1].append(i)
        size += t.nbytes
    return buckets


class GroupMember:
    """One member's current group: joined once, kept while the pool reuses the same group."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.group: Any = None

    def join(self, group: WeightGroup, rank: int) -> Any:
        if self.name == group.name:
            return self.group
        from torch import distributed as dist

        self.group = None  # the previous group's connections go with it
        timeout = datetime.timedelta(seconds=group.timeout_s)
        store = dist.TCPStore(group.host, group.port, is_master=False, timeout=timeout)
        prefixed = dist.PrefixStore(f"{group.name}/", store)
        if group.backend == "nccl":
            self.group = dist.ProcessGroupNCCL(prefixed, rank, group.world_size)
        else:
            self.group = dist.ProcessGroupGloo(prefixed, rank, group.world_size, timeout)
        self.name = group.name
        return self.group


def _broadcast(pg: Any, flat: torch.Tensor) -> None:
    from torch import distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    pg.broadcast([flat], opts).wait()


class WeightSender:
    """Learner side, on every rank: rank 0 hosts the store and sends; under ZeRO-3 every rank
    takes part in each bucket's gather (a collective of the learners' own group)."""

    def __init__(self, module: torch.nn.Module, rank: int, zero_stage: int, host: str) -> None:
        self.rank, self.zero3 = rank, zero_stage == 3
        self.named = list(module.state_dict(keep_vars=True).items())  # params and buffers
        self.member = GroupMember()
        self.store: Any = None
        self.host = host
        self.staged: list[torch.Tensor] = []  # overlapped publication: the copy being sent
        self._sending: tuple[threading.Thread, dict[str, Any]] | None = None
        if rank == 0:
            from torch import distributed as dist

            self.store = dist.TCPStore(host, 0, is_master=True, wait_for_workers=False)

    @property
    def port(self) -> int:
        return int(self.store.port)

    def specs(self) -> tuple[TensorSpec, ...]:
        """What is sent, in order (ZeRO-3 parameters by their full shape)."""
        return tuple(
            TensorSpec(name, tuple(getattr(t, "ds_shape", t.shape)), str(t.dtype).split(".")[-1])
            for name, t in self.named
        )

    def send(self, group: WeightGroup) -> dict[str, Any]:
        """Broadcast every bucket straight from the engine (all ranks call this; only rank 0
        sends). A failure of the group (a receiver died or timed out) is returned as ``error``,
        not raised: the learners are fine, and under ZeRO-3 rank 0 keeps taking part in the
        gathers so no rank hangs."""
        return self._send_buckets(group, self._flat_buckets(group))

    def stage(self, group: WeightGroup) -> dict[str, float]:
        """Copy the current weights, bucketed as ``group`` sends them, for ``start_send``
        (overlapped publication: training may change the engine's weights meanwhile). Every
        rank calls this (ZeRO-3: the gathers); rank 0 keeps the copy."""
        started = time.perf_counter()
        staged = [flat for flat in self._flat_buckets(group) if flat is not None]
        self.join_send()  # an earlier send still reading the previous copy
        self.staged = staged
        nbytes = sum(flat.numel() * flat.element_size() for flat in staged)
        return {"stage_s": time.perf_counter() - started, "bytes": float(nbytes)}

    def start_send(self, group: WeightGroup) -> None:
        """Rank 0: broadcast the staged copy from a thread and return at once (the actor goes
        on training); ``join_send`` gives the timings. Other ranks: nothing to do."""
        if self.rank != 0:
            return
        self.join_send()  # one send at a time
        result: dict[str, Any] = {}
        staged = self.staged

        def run() -> None:
            try:
                result.update(self._send_buckets(group, staged))
            except BaseException as exc:  # reported by join_send, never lost in the thread
                result.update(error=_first_line(exc))

        thread = threading.Thread(target=run, name="eopd-weight-send", daemon=True)
        thread.start()
        self._sending = (thread, result)

    def join_send(self) -> dict[str, Any]:
        """The last ``start_send``'s timings (``error`` if a receiver failed), once it is done;
        bounded by the group's time-out. Empty when none was started."""
        if self._sending is None:
            return {}
        thread, result = self._sending
        thread.join()
        self._sending = None
        return result

    def _send_buckets(
        self, group: WeightGroup, flats: Iterable[torch.Tensor | None]
    ) -> dict[str, Any]:
        """Join ``group`` (rank 0) and broadcast each of ``flats``; the timings, ``error`` once a
        send failed. ``flats`` is consumed to its end even then: from the engine under ZeRO-3,
        every bucket's gather must still run on every rank."""
        started = time.perf_counter()
        pg, error = self._join(group)
        joined, sent = time.perf_counter(), 0
        for flat in flats:
            if flat is None or pg is None or error is not None:
                continue
            error = self._send_one(pg, flat)
            sent += flat.numel() * flat.element_size()
        timings: dict[str, Any] = {"join_s": joined - started, "bytes": float(sent),
                                   "send_s": time.perf_counter() - joined}  # fmt: skip
        return timings | ({"error": error} if error else {})

    def _join(self, group: WeightGroup) -> tuple[Any, str | None]:
        """Rank 0's process group of ``group`` (None elsewhere), or the rendezvous error."""
        if self.rank != 0:
            return None, None
        try:
            return self.member.join(group, 0), None
        except RuntimeError as exc:  # a member never came: the rendezvous timed out
            return None, _first_line(exc)

    def _send_one(self, pg: Any, flat: torch.Tensor) -> str | None:
        try:
            _broadcast(pg, flat)
        except RuntimeError as exc:  # gloo / NCCL: a peer closed or timed out
            self.member = GroupMember()  # never reuse a broken group
            return _first_line(exc)
        return None

    def _flat_buckets(self, group: WeightGroup) -> Iterator[torch.Tensor | None]:
        """Each bucket as one contiguous copy on rank 0 (None on the others); under ZeRO-3
        every rank takes part in the bucket's gather."""
        for bucket in group.buckets():
            tensors = [self.named[i][1] for i in bucket]
            with self._gathered(tensors):
                yield _flatten(tensors, group.backend) if self.rank == 0 else None

    def _gathered(self, tensors: list[torch.Tensor]) -> Any:
        params = [t for t in tensors if hasattr(t, "ds_id")]
        if not (self.zero3 and params):
            return nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _flatten(tensors: list[torch.Tensor], backend: str) -> torch.Tensor:
    """One contiguous buffer of the bucket, on the backend's device (gloo: CPU)."""
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    return flat.cpu() if backend == "gloo" else flat


def receive(
    pg: Any, group: WeightGroup, device: torch.device | str
) -> Iterator[tuple[str, torch.Tensor]]:
    """Receiver side: the weights as (name, tensor), one bucket received at a time."""
    for bucket in group.buckets():
        specs = [group.tensors[i] for i in bucket]
        total = sum(s.numel for s in specs)
        flat = torch.empty(total, dtype=getattr(torch, specs[0].dtype), device=device)
        _broadcast(pg, flat)
        offset = 0
        for s in specs:
            yield s.name, flat[offset : offset + s.numel].view(s.shape)
            offset += s.numel


def receive_into_engine(worker: Any, group: WeightGroup, base_rank: int) -> dict[str, float]:
    """Run in each vLLM worker (``LLM.collective_rpc``): join ``group`` as ``base_rank`` + the
    worker's tensor-parallel rank and reload the weights in place as the buckets arrive."""
    member = getattr(worker, "_eopd_weight_member", None)
    if member is None:
        member = worker._eopd_weight_member = GroupMember()
    started = time.perf_counter()
    pg = member.join(group, base_rank + int(getattr(worker, "rank", 0)))
    joined = time.perf_counter()
    device = "cpu" if group.backend == "gloo" else worker.device
    worker.reload_weights(weights_iterator=receive(pg, group, device))
    return {"join_s": joined - started, "receive_s": time.perf_counter() - joined}
