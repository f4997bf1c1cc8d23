"""Collective weight sync on gloo: buckets, a real broadcast between two members, failures."""

from __future__ import annotations

import threading
import time
from typing import Any

import torch

from eopd_ray.actors.weight_broadcast import (
    GroupMember,
    TensorSpec,
    WeightGroup,
    WeightSender,
    plan_buckets,
    receive_into_engine,
)


def test_buckets_hold_consecutive_tensors_of_one_dtype_up_to_the_size() -> None:
    specs = [
        TensorSpec("a", (10,), "float32"),  # 40 bytes
        TensorSpec("b", (5,), "float32"),  # 20: a + b = 60 <= 64
        TensorSpec("c", (2,), "float32"),  # 8: would make 68 > 64 -> new bucket
        TensorSpec("d", (4,), "bfloat16"),  # another dtype -> new bucket
        TensorSpec("e", (100,), "bfloat16"),  # 200 bytes > 64: alone
        TensorSpec("f", (1,), "bfloat16"),
    ]
    assert [s.nbytes for s in specs] == [40, 20, 8, 8, 200, 2]
    assert plan_buckets(specs, 64) == [[0, 1], [2], [3], [4], [5]]
    assert plan_buckets(specs, 1 << 20) == [[0, 1, 2], [3, 4, 5]]


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(7, 3)
        self.proj = torch.nn.Linear(3, 5)
        self.register_buffer("scale", torch.arange(4, dtype=torch.float64))


def _group(sender: WeightSender, world: int, timeout_s: float = 20.0) -> WeightGroup:
    # 48 bytes per bucket: the model's 5 tensors travel in several buckets
    return WeightGroup(
        f"g{time.monotonic_ns()}", "127.0.0.1", sender.port, world, "gloo", timeout_s,
        sender.specs(), 48,
    )  # fmt: skip


class _Worker:
    """What ``receive_into_engine`` uses of a vLLM worker: its rank, device and reload hook."""

    def __init__(self) -> None:
        self.rank, self.device = 0, "cpu"
        self.loaded: dict[str, torch.Tensor] = {}

    def reload_weights(self, weights_iterator: Any) -> None:
        for name, tensor in weights_iterator:  # consumed as the buckets arrive
            self.loaded[name] = tensor.clone()


def test_rank_zero_broadcasts_every_tensor_to_an_engine_worker() -> None:
    model = _Model()
    sender = WeightSender(model, rank=0, zero_stage=0, host="127.0.0.1")
    group = _group(sender, world=2)
    assert len(group.buckets()) > 2
    worker = _Worker()
    receiving = threading.Thread(target=receive_into_engine, args=(worker, group, 1))
    receiving.start()
    sent = sender.send(group)
    receiving.join(timeout=30)
    assert "error" not in sent
    assert sent["bytes"] == sum(s.nbytes for s in group.tensors)
    expected = model.state_dict()
    assert list(worker.loaded) == list(expected)
    for name, value in expected.items():
        assert worker.loaded[name].dtype == value.dtype
        assert torch.equal(worker.loaded[name], value)

    # the same group again (same members): no new rendezvous, new values arrive
    with torch.no_grad():
        model.proj.weight.add_(1.0)
    member = worker._eopd_weight_member
    joined = member.group
    receiving = threading.Thread(target=receive_into_engine, args=(worker, group, 1))
    receiving.start()
    assert "error" not in sender.send(group)
    receiving.join(timeout=30)
    assert member.group is joined
    assert torch.equal(worker.loaded["proj.weight"], model.proj.weight)


def test_a_member_that_never_joins_is_an_error_not_a_hang() -> None:
    sender = WeightSender(_Model(), rank=0, zero_stage=0, host="127.0.0.1")
    started = time.monotonic()
    sent = sender.send(_group(sender, world=2, timeout_s=2.0))
    assert sent["error"]
    assert time.monotonic() - started < 30


def test_a_member_leaves_the_previous_group_when_it_joins_a_new_one() -> None:
    sender = WeightSender(_Model(), rank=0, zero_stage=0, host="127.0.0.1")
    member = GroupMember()
    for _ in range(2):
        group = _group(sender, world=2)
        joining = threading.Thread(target=member.join, args=(group, 1))
        joining.start()
        sender.member.join(group, 0)
        joining.join(timeout=30)
        assert member.name == group.name


def test_a_staged_copy_is_sent_while_the_model_trains_on() -> None:
    """Overlapped publication: what arrives is the version staged, not the weights changed
    after it (the learner's next step runs during the send)."""
    model = _Model()
    sender = WeightSender(model, rank=0, zero_stage=0, host="127.0.0.1")
    group = _group(sender, world=2)
    staged = {k: v.clone() for k, v in model.state_dict().items()}
    assert sender.stage(group)["bytes"] == sum(s.nbytes for s in group.tensors)
    with torch.no_grad():  # the next step, before the send has even started
        model.proj.weight.add_(1.0)
    worker = _Worker()
    receiving = threading.Thread(target=receive_into_engine, args=(worker, group, 1))
    receiving.start()
    sender.start_send(group)  # returns at once
    with torch.no_grad():
        model.embed.weight.mul_(2.0)
    sent = sender.join_send()
    receiving.join(timeout=30)
    assert "error" not in sent and sent["bytes"] == sum(s.nbytes for s in group.tensors)
    for name, value in staged.items():
        assert torch.equal(worker.loaded[name], value)
    assert not torch.equal(worker.loaded["proj.weight"], model.proj.weight)
    assert sender.join_send() == {}  # nothing in flight any more


def _receive_one_bucket_then_die(group: WeightGroup, rank: int) -> None:
    """A receiver process that takes the first bucket and dies without a word."""
    import os

    from eopd_ray.actors.weight_broadcast import receive

    pg = GroupMember().join(group, rank)
    next(iter(receive(pg, group, "cpu")))
    os._exit(1)


def test_a_receiver_that_dies_mid_broadcast_fails_the_send_within_the_time_out() -> None:
    """Rank 2 dies after the first bucket: the sender and the surviving receiver end with an
    error within the group's time-out (the pool then replaces the dead sampler and sends the
    survivors the weights again), nobody hangs."""
    import multiprocessing

    sender = WeightSender(_Model(), rank=0, zero_stage=0, host="127.0.0.1")
    group = _group(sender, world=3, timeout_s=5.0)
    dying = multiprocessing.get_context("spawn").Process(
        target=_receive_one_bucket_then_die, args=(group, 2)
    )
    dying.start()
    survivor, outcome = _Worker(), {}

    def receive_or_fail() -> None:
        try:
            receive_into_engine(survivor, group, 1)
            outcome["result"] = "received"
        except RuntimeError as exc:
            outcome["result"] = f"error: {exc}"

    receiving = threading.Thread(target=receive_or_fail, daemon=True)
    receiving.start()
    started = time.monotonic()
    sent = sender.send(group)
    receiving.join(timeout=30)
    dying.join(timeout=30)
    assert dying.exitcode == 1
    assert sent["error"], sent
    assert not receiving.is_alive() and outcome["result"].startswith("error")
    assert time.monotonic() - started < 30
