"""The pure parts of benchmarks/peers.py (benchmarks/peers_measure.py): the TRL settings mapping,
process-tree membership and memory on a hand-made tree, tokens/s and start-up from hand-made step
times, the ratio row and the table. No TRL, Ray or torch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from peers_measure import (  # noqa: E402
    ProcInfo,
    format_table,
    ratio_row,
    stage_means,
    startup_s,
    steady_tokens_per_s,
    tree_members,
    tree_memory,
    trl_settings,
)

from eopd_ray.config import load_config  # noqa: E402


def test_trl_settings_of_the_tiny_preset() -> None:
    config = load_config(REPO / "configs" / "tiny.yaml")
    s = trl_settings(config, steps=24, output_dir="/x")
    # 16 prompts x 2 samples per optimizer step = 32 rollouts, micro-batches of 8
    assert (s["per_device_train_batch_size"], s["gradient_accumulation_steps"]) == (8, 4)
    assert s["max_steps"] == 24 and s["output_dir"] == "/x"
    assert s["learning_rate"] == 1e-3 and s["lr_scheduler_type"] == "cosine"
    assert s["warmup_steps"] == 2 and s["max_grad_norm"] == 1.0
    assert (s["adam_beta1"], s["adam_beta2"], s["weight_decay"]) == (0.9, 0.999, 0.0)
    assert s["beta"] == 1.0 and s["temperature"] == 1.0 and s["top_p"] == 1.0
    assert s["max_completion_length"] == 96
    assert s["bf16"] is False and s["gradient_checkpointing"] is False  # TRL defaults: True
    assert s["model_init_kwargs"] == {"dtype": "float32"} == s["teacher_model_init_kwargs"]
    assert "lr_scheduler_kwargs" not in s


def test_trl_settings_of_the_smollm2_preset_and_overrides() -> None:
    config = load_config(REPO / "configs" / "smollm2.yaml")
    s = trl_settings(config, steps=6, output_dir="/x")
    assert (s["per_device_train_batch_size"], s["gradient_accumulation_steps"]) == (4, 2)
    assert s["max_completion_length"] == 128 and s["learning_rate"] == 2e-5
    config = load_config(
        REPO / "configs" / "tiny.yaml",
        ["optim.min_lr_ratio=0.1", "optim.schedule=cosine", "learner.micro_batch_sequences=64"],
    )
    s = trl_settings(config, steps=4, output_dir="/x")
    assert s["lr_scheduler_type"] == "cosine_with_min_lr"
    assert s["lr_scheduler_kwargs"] == {"min_lr_rate": 0.1}
    # a micro-batch above the step's 32 rollouts is capped at one micro-batch per step
    assert (s["per_device_train_batch_size"], s["gradient_accumulation_steps"]) == (32, 1)
    constant = load_config(REPO / "configs" / "tiny.yaml", ["optim.schedule=constant"])
    assert trl_settings(constant, 4, "/x")["lr_scheduler_type"] == "constant_with_warmup"


def test_trl_settings_refuses_a_micro_batch_that_does_not_divide() -> None:
    config = load_config(REPO / "configs" / "tiny.yaml", ["learner.micro_batch_sequences=5"])
    with pytest.raises(ValueError, match="must divide"):
        trl_settings(config, steps=4, output_dir="/x")


def _p(pid: int, ppid: int, sid: int, rss: int = 0, pss: int = 0) -> ProcInfo:
    return ProcInfo(pid, ppid, sid, rss, pss, f"p{pid}")


def test_tree_members_follow_parents_and_the_session() -> None:
    procs = [
        _p(1, 0, 1),  # init
        _p(10, 1, 5),  # the benchmark itself
        _p(100, 10, 100),  # the system under test: leader of its own session
        _p(101, 100, 100),  # its child (e.g. the raylet)
        _p(102, 101, 102),  # a Ray worker that started a session of its own
        _p(103, 102, 102),  # ... and its child
        _p(104, 1, 100),  # daemonised (re-parented to init), still in the session
        _p(200, 10, 5),  # a sibling of the system under test: not counted
        _p(201, 1, 201),  # unrelated
    ]
    assert tree_members(procs, 100) == {100, 101, 102, 103, 104}


def test_tree_memory_sums_the_members() -> None:
    procs = [_p(1, 0, 1, 7, 7), _p(2, 1, 1, 30, 20), _p(3, 2, 1, 500, 100), _p(4, 0, 4, 9, 9)]
    assert tree_memory(procs, {2, 3}) == (530, 120)
    assert tree_memory(procs, set()) == (0, 0)


def test_steady_tokens_per_s_leaves_out_the_warmup() -> None:
    # ends of 5 steps; steps 2..4 (warmup 2) trained 300 + 300 + 400 tokens in 13 - 8 = 5 s
    times = [4.0, 8.0, 10.0, 11.5, 13.0]
    tokens = [100, 200, 300, 300, 400]
    assert steady_tokens_per_s(times, tokens, warmup=2) == pytest.approx(1000 / 5)
    assert steady_tokens_per_s(times, tokens, warmup=1) == pytest.approx(1200 / 9)
    with pytest.raises(ValueError, match="more than 5 steps"):
        steady_tokens_per_s(times, tokens, warmup=5)
    with pytest.raises(ValueError, match=">= 1"):
        steady_tokens_per_s(times, tokens, warmup=0)


def test_startup_counts_the_first_batch() -> None:
    assert startup_s(100.0, [130.0, 132.0, 134.0]) == pytest.approx(30.0)
    assert startup_s(100.0, [130.0, 132.0, 134.0], steps_per_batch=2) == pytest.approx(32.0)
    with pytest.raises(ValueError):
        startup_s(100.0, [130.0], steps_per_batch=2)


def test_stage_means_after_warmup() -> None:
    rows = [
        {"time/sampler_busy_s": 9.0, "time/iteration_s": 20.0},
        {"time/sampler_busy_s": 2.0, "time/teacher_s": 1.0, "time/iteration_s": 4.0},
        {"time/sampler_busy_s": 4.0, "time/teacher_s": None, "time/iteration_s": 6.0},
    ]
    means = stage_means(rows, warmup=1)
    assert means["sampler"] == 3.0 and means["teacher"] == 0.5 and means["iteration"] == 5.0
    assert means["learner"] == 0.0


def test_ratio_row_and_table() -> None:
    ours = {"system": "eopd-ray", "tokens_per_s": 600.0, "startup_s": 40.0, "rkl": 0.3}
    peer = {"system": "TRL", "tokens_per_s": 200.0, "startup_s": 10.0, "rkl": None}
    ratio = ratio_row(ours, peer)
    assert ratio["system"] == "eopd-ray / TRL"
    assert ratio["tokens_per_s"] == 3.0 and ratio["startup_s"] == 4.0
    assert ratio["rkl"] is None and ratio["avg_at_n"] is None
    table = format_table([ours, peer], [ratio]).splitlines()
    assert table[0].startswith("| system | tokens/s (steady) | start-up s |")
    assert table[2].startswith("| eopd-ray | 600.0 | 40.0 | – |")
    assert table[4].startswith("| **eopd-ray / TRL** | 3.00x | 4.00x | – |")
    assert len(table) == 5
