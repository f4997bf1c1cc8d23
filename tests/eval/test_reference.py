"""Teacher-referenced numbers: per-token sums by hand, the record and the summary blocks."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from eopd_ray.eval.metrics import entropy_edges
from eopd_ray.eval.reference import reference_record, summarize_reference, token_sums
from eopd_ray.learners.loss_terms import topk_fkl

LN = math.log


def test_token_sums_by_hand() -> None:
    sums = token_sums(
        student_logprobs=np.array([LN(0.5), LN(0.9)]),
        teacher_logprobs=np.array([LN(0.25), LN(0.9)]),
        teacher_entropy=np.array([1.2, 0.3]),
        # token 0: teacher top-2 probs 0.5, 0.25 -> renormalised 2/3, 1/3; token 1: 0.9, 0.1
        teacher_topk_logprobs=np.array([[LN(0.5), LN(0.25)], [LN(0.9), LN(0.1)]]),
        student_topk_logprobs=np.array([[LN(0.25), LN(0.25)], [LN(0.9), LN(0.05)]]),
        tau=0.8,
    )
    fkl_0 = 2 / 3 * LN((2 / 3) / 0.25) + 1 / 3 * LN((1 / 3) / 0.25)  # 0.749780
    fkl_1 = 0.1 * LN(0.1 / 0.05)  # 0.069315
    assert sums["tokens"] == 2 and sums["high_tokens"] == 1
    assert sums["rkl_sum"] == pytest.approx(LN(2), abs=1e-12)  # LN(0.5 / 0.25) + 0
    assert sums["fkl_sum"] == pytest.approx(fkl_0 + fkl_1, abs=1e-12)
    assert sums["fkl_high_sum"] == pytest.approx(fkl_0, abs=1e-12)
    assert fkl_0 + fkl_1 == pytest.approx(0.819095, abs=1e-6)


def test_token_sums_gate_is_strict_and_zero_teacher_ids_drop_out() -> None:
    sums = token_sums(
        np.array([-1.0, -2.0]),
        np.array([-1.5, -1.0]),
        np.array([0.8, 0.81]),  # exactly tau is not above it
        np.array([[0.0, -np.inf], [LN(0.5), LN(0.5)]]),
        np.array([[-1.0, -np.inf], [LN(0.5), LN(0.25)]]),
        tau=0.8,
    )
    # token 0: p̃_t = (1, 0): FKL = 1 * (0 - (-1)); token 1: 0.5 * LN(0.5 / 0.25)
    assert sums["high_tokens"] == 1
    assert sums["rkl_sum"] == pytest.approx(0.5 - 1.0)
    assert sums["fkl_sum"] == pytest.approx(1.0 + 0.5 * LN(2))
    assert sums["fkl_high_sum"] == pytest.approx(0.5 * LN(2))
    empty = token_sums(*(np.zeros(0),) * 3, np.zeros((0, 4)), np.zeros((0, 4)), tau=0.8)
    assert empty == {
        "tokens": 0,
        "rkl_sum": 0.0,
        "fkl_sum": 0.0,
        "fkl_high_sum": 0.0,
        "high_tokens": 0,
    }
    with pytest.raises(ValueError, match="shapes differ"):
        token_sums(np.zeros(2), np.zeros(3), np.zeros(2), np.zeros((2, 1)), np.zeros((2, 1)), 0.8)


def test_forward_kl_is_the_loss_term() -> None:
    rng = np.random.default_rng(0)
    teacher = np.log(rng.dirichlet(np.ones(50), size=6))
    student = np.log(rng.dirichlet(np.ones(50), size=6))
    ids = np.argsort(-teacher, axis=-1)[:, :8]
    t_topk = np.take_along_axis(teacher, ids, -1)
    s_topk = np.take_along_axis(student, ids, -1)
    sums = token_sums(np.zeros(6), np.zeros(6), np.ones(6), t_topk, s_topk, tau=0.5)
    expected = topk_fkl(torch.tensor(t_topk)[None], torch.tensor(s_topk)[None]).sum().item()
    assert sums["fkl_sum"] == pytest.approx(expected, rel=1e-9)
    assert sums["fkl_sum"] > 0 and sums["fkl_high_sum"] == sums["fkl_sum"]


def _scores(lp: list[float], h: list[float], topk: list[list[float]]) -> SimpleNamespace:
    arrays = (np.array(lp), np.array(h), np.array(topk))
    return SimpleNamespace(
        logprobs=arrays[0], entropy=arrays[1], topk_logprobs=arrays[2], ids_logprobs=arrays[2]
    )


def test_record_and_summary() -> None:
    edges = entropy_edges(0.5, 2.0)  # 0, 0.5, 1, 1.5, 2
    # Two samples scored by teacher and student identically except one token's log-prob.
    teacher = [_scores([-1.0], [1.2], [[0.0]]), _scores([-1.0, -2.0], [0.1, 3.0], [[0.0], [0.0]])]
    student = [_scores([-0.5], [0.2], [[0.0]]), _scores([-1.0, -2.0], [0.6, 0.7], [[0.0], [0.0]])]
    record = reference_record(teacher, student, tau=0.8, edges=edges, unscored=1)
    assert record == {
        "samples": 2,
        "unscored": 1,
        "tokens": 3,
        "rkl_sum": pytest.approx(0.5),
        "fkl_sum": 0.0,  # one top-1 id: p̃_t = 1 and log p_s = 0 there
        "fkl_high_sum": 0.0,
        "high_tokens": 2,
        "teacher_entropy_counts": [1, 0, 1, 1],  # 0.1 | 1.2 | 3.0 -> last bin
        "student_entropy_counts": [1, 2, 0, 0],
    }
    other = {
        **record,
        "tokens": 5,
        "rkl_sum": 1.5,
        "fkl_sum": 2.0,
        "fkl_high_sum": 1.0,
        "high_tokens": 2,
    }
    summary = summarize_reference(
        [{"teacher_ref": record}, {"teacher_ref": other}, {"skipped": "too long"}], tau=0.8
    )
    assert summary == {
        "tokens": 8,
        "rkl_per_token": pytest.approx(2.0 / 8),
        "fkl_per_token": pytest.approx(2.0 / 8),
        "fkl_high_entropy": pytest.approx(1.0 / 4),
        "high_entropy_frac": pytest.approx(4 / 8),
        "tau": 0.8,
        "teacher_entropy_counts": [2, 0, 2, 2],
        "student_entropy_counts": [2, 4, 0, 0],
    }
    assert summarize_reference([{"id": "0"}], tau=0.8) is None
    none_high = summarize_reference([{"teacher_ref": {**record, "high_tokens": 0}}], tau=0.8)
    assert none_high is not None and none_high["fkl_high_entropy"] is None
