"""Tests of eopd_ray.learners.loss against values computed by hand with scalar ``math`` loops."""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any

import pytest
import torch
from torch.testing import assert_close

from eopd_ray.learners import loss as loss_module
from eopd_ray.learners.loss import (
    VARIANT_ARGS,
    VARIANT_SPECS,
    VARIANTS,
    VariantSpec,
    eopd_loss,
    grpo_advantages,
)
from eopd_ray.learners.loss_terms import (
    ALL_POSITIONS_GATE,
    HIGH_ENTROPY_GATE,
    KD_CE,
    TEACHER_ADVANTAGE,
    kd_fkl_weight,
)

# ---------------------------------------------------------------- scalar reference (plain math)


def log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    lse = m + math.log(sum(math.exp(x - m) for x in row))
    return [x - lse for x in row]


def softmax(row: list[float]) -> list[float]:
    return [math.exp(x) for x in log_softmax(row)]


def entropy(row: list[float]) -> float:
    return -sum(math.exp(lp) * lp for lp in log_softmax(row))


def clip(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


def ppo_term(log_r: float, adv: float, eps: float = 0.2) -> float:
    r = math.exp(log_r)
    return max(-r * adv, -clip(r, 1 - eps, 1 + eps) * adv)


def fkl(student_row: list[float], ids: list[int], teacher_lps: list[float]) -> float:
    s_lp = log_softmax(student_row)
    z = sum(math.exp(lp) for lp in teacher_lps)
    total = 0.0
    for i, lp in zip(ids, teacher_lps, strict=True):
        pt = math.exp(lp) / z
        total += pt * (math.log(pt) - s_lp[i])
    return total


# ---------------------------------------------------------------- the small case: B=2, T=3, V=5

S_LOGITS = [
    [[0.5, -1.0, 2.0, 0.1, -0.3], [1.2, 0.3, -0.7, 0.0, 0.9], [-0.2, 0.4, 0.4, 1.5, -1.1]],
    [[0.0, 0.3, -0.4, 0.8, 0.1], [2.2, -0.5, 0.3, 0.8, -1.4], [0.6, 1.6, -0.9, 0.2, 0.7]],
]
TE_LOGITS = [  # teacher entropies: 1.595, 0.545, 1.595 / 0.668, 1.604, 0.427
    [[0.1, -0.2, 0.3, 0.0, 0.2], [3.0, 0.0, -1.0, 0.5, -2.0], [0.4, 0.1, 0.3, 0.6, 0.5]],
    [[2.8, 0.0, -0.5, 0.3, -1.0], [0.2, 0.2, 0.1, 0.0, 0.3], [1.0, 4.0, 0.0, -1.0, 0.5]],
]
TOKENS = [[2, 4, 3], [1, 0, 1]]
LOG_R = [[0.1, -0.3, 0.25], [0.0, 0.5, -0.05]]  # log r = log π_θ(x_t) - behaviour log-prob
MASK = [[1, 1, 1], [1, 1, 0]]
K = 3
POSITIONS = [(b, t) for b in range(2) for t in range(3) if MASK[b][t]]


def topk_ids(row: list[float]) -> list[int]:
    return sorted(range(len(row)), key=lambda i: -row[i])[:K]


def ref(b: int, t: int) -> dict[str, Any]:
    """Every per-token quantity of position (b, t), from the lists above."""
    s, te, tok = S_LOGITS[b][t], TE_LOGITS[b][t], TOKENS[b][t]
    logp = log_softmax(s)[tok]
    behav = logp - LOG_R[b][t]
    te_lp = log_softmax(te)
    ids = topk_ids(te)
    return {
        "logp": logp,
        "behav": behav,
        "teacher_lp": te_lp[tok],
        "adv": te_lp[tok] - behav,
        "h_te": entropy(te),
        "h_s": entropy(s),
        "fkl": fkl(s, ids, [te_lp[i] for i in ids]),
        "ids": ids,
        "topk_lps": [te_lp[i] for i in ids],
    }


def small_case(dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    refs = [[ref(b, t) for t in range(3)] for b in range(2)]

    def field(name: str, **kw: Any) -> torch.Tensor:
        return torch.tensor([[r[name] for r in row] for row in refs], **kw)

    return {
        "student_logits": torch.tensor(S_LOGITS, dtype=dtype, requires_grad=True),
        "tokens": torch.tensor(TOKENS),
        "behaviour_logprobs": field("behav", dtype=torch.float64),
        "teacher_logprobs": field("teacher_lp", dtype=torch.float64),
        "teacher_entropy": field("h_te", dtype=torch.float64),
        "teacher_topk_ids": field("ids"),
        "teacher_topk_logprobs": field("topk_lps", dtype=torch.float64),
        "mask": torch.tensor(MASK, dtype=torch.bool),
    }


def expected_loss(variant: str, tau: float = 0.8, **kw: float) -> float:
    total = 0.0
    for b, t in POSITIONS:
        q = ref(b, t)
        adv = q["adv"]
        if variant == "advantage_shaping":
            adv += min(kw.get("alpha", 0.1) * q["h_s"], abs(adv) / kw.get("kappa", 2.0))
        if variant == "grpo":
            adv = kw["adv"][b]
        pg = ppo_term(LOG_R[b][t], adv)
        if variant in ("opd", "advantage_shaping", "grpo"):
            total += pg
        elif variant == "eopd":
            total += pg + (q["fkl"] if q["h_te"] > tau else 0.0)
        elif variant == "full_fkl":
            total += pg + q["fkl"]
        elif variant == "entropy_bonus":
            total += pg - kw.get("beta", 0.01) * q["h_s"]
        elif variant == "kd":
            w = kw.get("w", 0.5)
            total += w * -q["logp"] + (1 - w) * q["fkl"]
    return total / len(POSITIONS)


def run(case: dict[str, torch.Tensor], **kw: Any) -> tuple[torch.Tensor, dict[str, float]]:
    return eopd_loss(**{**case, **kw})


def grad_of(case: dict[str, torch.Tensor], **kw: Any) -> tuple[torch.Tensor, torch.Tensor]:
    logits = case["student_logits"].detach().clone().requires_grad_(True)
    loss, _ = run({**case, "student_logits": logits}, **kw)
    loss.backward()
    return loss.detach(), logits.grad


GRPO_ADV = [0.7, -1.3]
H_EQUAL = entropy(TE_LOGITS[0][0])  # the teacher entropy at (0, 0) and (0, 2)

# ---------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("variant", "kw", "ref_kw"),
    [
        ("opd", {}, {}),
        ("eopd", {}, {}),
        ("eopd", {"tau": 0.6}, {"tau": 0.6}),
        ("eopd", {"tau": H_EQUAL}, {"tau": H_EQUAL}),  # the gate is strict: H_te > tau
        ("full_fkl", {}, {}),
        ("entropy_bonus", {}, {}),
        ("entropy_bonus", {"entropy_bonus_beta": 0.3}, {"beta": 0.3}),
        ("advantage_shaping", {}, {}),
        (
            "advantage_shaping",
            {"shaping_alpha": 2.0, "shaping_kappa": 4.0},
            {"alpha": 2.0, "kappa": 4.0},
        ),
        ("kd", {}, {}),
        ("kd", {"kd_ce_weight": 0.2}, {"w": 0.2}),
        ("grpo", {"advantages": torch.tensor(GRPO_ADV, dtype=torch.float64)}, {"adv": GRPO_ADV}),
        (
            "grpo",
            {"advantages": torch.tensor(GRPO_ADV, dtype=torch.float64)[:, None].expand(2, 3)},
            {"adv": GRPO_ADV},
        ),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_variant_value(variant: str, kw: dict, ref_kw: dict, dtype: torch.dtype) -> None:
    loss, metrics = run(small_case(dtype), variant=variant, **kw)
    want = expected_loss(variant, **ref_kw)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert_close(loss.item(), want, rtol=tol, atol=tol)
    assert loss.dtype == dtype
    assert metrics["loss"] == pytest.approx(want, rel=tol, abs=tol)
    assert metrics["num_tokens"] == 5.0


def test_random_fkl_fraction_one_and_zero_are_full_fkl_and_opd() -> None:
    g = torch.Generator().manual_seed(0)
    loss1, m1 = run(small_case(), variant="random_fkl", random_fkl_fraction=1.0, generator=g)
    loss0, m0 = run(small_case(), variant="random_fkl", random_fkl_fraction=0.0, generator=g)
    assert_close(loss1.item(), expected_loss("full_fkl"), rtol=1e-12, atol=1e-12)
    assert_close(loss0.item(), expected_loss("opd"), rtol=1e-12, atol=1e-12)
    assert (m1["fkl_applied_frac"], m0["fkl_applied_frac"]) == (1.0, 0.0)


def test_metrics_hand_checked() -> None:
    _, m = run(small_case(), variant="eopd")
    refs = [ref(b, t) for b, t in POSITIONS]
    high = [q for q in refs if q["h_te"] > 0.8]
    assert len(high) == 3  # (0,0), (0,2), (1,1)
    # log r = 0.1, -0.3, 0.25, 0.0, 0.5: r = 1.105, 0.741, 1.284, 1.0, 1.649 with ε = 0.2
    clipped = [
        (r > 1.2 and q["adv"] > 0) or (r < 0.8 and q["adv"] < 0)
        for q, r in zip(refs, [math.exp(LOG_R[b][t]) for b, t in POSITIONS], strict=True)
    ]
    assert m["high_entropy_frac"] == pytest.approx(3 / 5)
    assert m["fkl_applied_frac"] == pytest.approx(3 / 5)
    assert m["clip_frac"] == pytest.approx(sum(clipped) / 5)
    assert 0 < sum(clipped) < 5
    assert m["fkl_high_entropy"] == pytest.approx(sum(q["fkl"] for q in high) / 3)
    assert m["fkl_mean"] == pytest.approx(sum(q["fkl"] for q in refs) / 5)
    assert m["fkl_loss"] == pytest.approx(sum(q["fkl"] for q in high) / 5)
    assert m["opd_loss"] == pytest.approx(expected_loss("opd"))
    assert m["opd_loss"] + m["fkl_loss"] == pytest.approx(m["loss"])
    assert m["teacher_entropy_mean"] == pytest.approx(sum(q["h_te"] for q in refs) / 5)
    assert m["student_entropy_mean"] == pytest.approx(sum(q["h_s"] for q in refs) / 5)
    assert m["reverse_kl"] == pytest.approx(sum(q["behav"] - q["teacher_lp"] for q in refs) / 5)
    assert m["advantage_mean"] == pytest.approx(sum(q["adv"] for q in refs) / 5)
    assert m["ratio_min"] == pytest.approx(math.exp(-0.3))
    assert m["ratio_max"] == pytest.approx(math.exp(0.5))  # not exp(-0.05): that one is masked
    assert m["ratio_mean"] == pytest.approx(sum(math.exp(LOG_R[b][t]) for b, t in POSITIONS) / 5)
    assert all(isinstance(v, float) for v in m.values())


def test_fkl_high_entropy_is_zero_without_high_entropy_positions() -> None:
    _, m = run(small_case(), variant="eopd", tau=5.0)
    assert m["high_entropy_frac"] == 0.0
    assert m["fkl_high_entropy"] == 0.0
    assert m["fkl_loss"] == 0.0


# ---------------------------------------------------------------- clipping, by hand


@pytest.mark.parametrize(
    ("r", "adv", "want", "clipped"),
    [
        (1.5, 0.5, -0.6, True),  # Â > 0, r > 1+ε: clipped branch, no gradient
        (1.5, -0.5, 0.75, False),  # Â < 0, r > 1+ε: unclipped
        (0.5, 0.5, -0.25, False),  # Â > 0, r < 1-ε: unclipped
        (0.5, -0.5, 0.4, True),  # Â < 0, r < 1-ε: clipped
        (1.1, 0.5, -0.55, False),  # inside [1-ε, 1+ε]
        (0.9, -0.5, 0.45, False),
    ],
)
def test_clip(r: float, adv: float, want: float, clipped: bool) -> None:
    logits = torch.zeros(1, 1, 5, dtype=torch.float64, requires_grad=True)  # p = 0.2 each
    behav = torch.tensor([[-math.log(5) - math.log(r)]], dtype=torch.float64)
    loss, m = eopd_loss(
        student_logits=logits,
        tokens=torch.tensor([[3]]),
        behaviour_logprobs=behav,
        teacher_logprobs=behav + adv,
        mask=torch.ones(1, 1),
        variant="opd",
    )
    loss.backward()
    assert_close(loss.item(), want, rtol=1e-12, atol=1e-12)
    assert m["clip_frac"] == (1.0 if clipped else 0.0)
    # d(-r·Â)/dz = -Â·r·(onehot - p); zero on the clipped branch
    g = [0.0 if clipped else -adv * r * ((j == 3) - 0.2) for j in range(5)]
    assert_close(logits.grad, torch.tensor([[g]], dtype=torch.float64), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- analytic gradients


def on_policy_case(adv: list[list[float]]) -> dict[str, torch.Tensor]:
    """The small case with r = 1 exactly (behaviour = the student's own log-probs)."""
    case = small_case()
    logp = torch.tensor(
        [[ref(b, t)["logp"] for t in range(3)] for b in range(2)], dtype=torch.float64
    )
    return {
        **case,
        "behaviour_logprobs": logp,
        "teacher_logprobs": logp + torch.tensor(adv, dtype=torch.float64),
    }


ADV = [[0.3, -0.7, 0.4], [-0.2, 1.1, 9.0]]


def expected_grad(per_position: Any) -> torch.Tensor:
    """[B, T, V] from ``per_position(b, t, j) / N`` at masked positions, 0 elsewhere."""
    n = len(POSITIONS)
    return torch.tensor(
        [
            [[per_position(b, t, j) / n if MASK[b][t] else 0.0 for j in range(5)] for t in range(3)]
            for b in range(2)
        ],
        dtype=torch.float64,
    )


def test_opd_gradient_at_r_equal_one() -> None:
    _, grad = grad_of(on_policy_case(ADV), variant="opd")

    def g(b: int, t: int, j: int) -> float:  # -Â·(onehot - p)
        return -ADV[b][t] * ((j == TOKENS[b][t]) - softmax(S_LOGITS[b][t])[j])

    assert_close(grad, expected_grad(g), rtol=1e-12, atol=1e-12)


def test_fkl_gradient() -> None:
    _, grad = grad_of(on_policy_case([[0.0] * 3] * 2), variant="full_fkl")

    def g(b: int, t: int, j: int) -> float:  # d/dz_j -Σ π̃ log p = p_j·Σπ̃ - π̃_j
        q = ref(b, t)
        pt = softmax(q["topk_lps"])
        pt_j = sum(p for i, p in zip(q["ids"], pt, strict=True) if i == j)
        return softmax(S_LOGITS[b][t])[j] * sum(pt) - pt_j

    assert_close(grad, expected_grad(g), rtol=1e-12, atol=1e-12)


def test_entropy_bonus_gradient_carries_entropy() -> None:
    case = on_policy_case(ADV)
    _, g_opd = grad_of(case, variant="opd")
    _, g_bonus = grad_of(case, variant="entropy_bonus", entropy_bonus_beta=0.5)

    def g(b: int, t: int, j: int) -> float:  # -β·dH/dz_j = β·p_j·(log p_j + H)
        lp = log_softmax(S_LOGITS[b][t])
        return 0.5 * math.exp(lp[j]) * (lp[j] + entropy(S_LOGITS[b][t]))

    assert_close(g_bonus - g_opd, expected_grad(g), rtol=1e-10, atol=1e-12)


def test_advantage_shaping_gradient_treats_entropy_as_constant() -> None:
    _, grad = grad_of(on_policy_case(ADV), variant="advantage_shaping", shaping_alpha=0.5)

    def g(b: int, t: int, j: int) -> float:  # -Â'·(onehot - p), Â' = Â + min(αH, |Â|/κ)
        a = ADV[b][t]
        a += min(0.5 * entropy(S_LOGITS[b][t]), abs(a) / 2.0)
        return -a * ((j == TOKENS[b][t]) - softmax(S_LOGITS[b][t])[j])

    assert_close(grad, expected_grad(g), rtol=1e-12, atol=1e-12)


def random_case(seed: int, B: int = 2, T: int = 3, V: int = 5, k: int = 3) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    te = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 1.5
    te_lp = te.log_softmax(-1)
    top_lp, top_ids = te_lp.topk(k, dim=-1)
    tokens = torch.randint(V, (B, T), generator=g)
    return {
        "student_logits": torch.randn(B, T, V, generator=g, dtype=torch.float64),
        "tokens": tokens,
        "behaviour_logprobs": -1.6 + 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64),
        "teacher_logprobs": te_lp.gather(-1, tokens[..., None]).squeeze(-1),
        "teacher_entropy": -(te_lp.exp() * te_lp).sum(-1),
        "teacher_topk_ids": top_ids,
        "teacher_topk_logprobs": top_lp,
        "mask": torch.rand(B, T, generator=g) < 0.8,
    }


def variant_kwargs(variant: str, B: int = 2, T: int = 3) -> dict[str, Any]:
    if variant == "random_fkl":
        return {"generator": torch.Generator().manual_seed(1), "random_fkl_fraction": 0.5}
    if variant == "grpo":
        return {"advantages": torch.linspace(-1.0, 1.0, B * T, dtype=torch.float64).view(B, T)}
    return {}


@pytest.mark.parametrize(
    ("variant", "decoupled"),
    [(v, False) for v in VARIANTS] + [(v, True) for v in VARIANTS if v != "kd"],  # kd: no ratio
)
def test_gradcheck(variant: str, decoupled: bool) -> None:
    case = random_case(7)
    case["tau"] = float(case["teacher_entropy"].median())  # a mix of gated and ungated positions
    if decoupled:
        case["proximal_logprobs"] = case["behaviour_logprobs"] + 0.3
        case["behaviour_weight_cap"] = 1.2
    if variant == "advantage_shaping":
        # H is detached, so finite differences disagree with autograd wherever the bonus is α·H;
        # a large α makes min(α·H, |Â|/κ) pick |Â|/κ (the stop-gradient is tested analytically)
        case["shaping_alpha"] = 100.0
    logits = case.pop("student_logits").requires_grad_(True)

    def f(z: torch.Tensor) -> torch.Tensor:  # a fresh generator per call: the same random mask
        kw = variant_kwargs(variant)
        return eopd_loss(student_logits=z, variant=variant, chunk_size=4, **kw, **case)[0]

    assert torch.autograd.gradcheck(f, (logits,), eps=1e-6, atol=1e-8, rtol=1e-6)


# ---------------------------------------------------------------- equivalences


def test_eopd_equals_opd_and_full_fkl_at_extreme_tau() -> None:
    case = random_case(3, B=2, T=6, V=11)
    for tau, other in ((100.0, "opd"), (-1.0, "full_fkl")):
        loss_e, grad_e = grad_of(case, variant="eopd", tau=tau)
        loss_o, grad_o = grad_of(case, variant=other, tau=tau)
        assert_close(loss_e, loss_o, rtol=0, atol=0)
        assert_close(grad_e, grad_o, rtol=0, atol=0)
        assert grad_e.abs().sum() > 0


def test_random_fkl_reproducible_and_fraction() -> None:
    case = random_case(5, B=2, T=5000, V=5)
    case["mask"] = torch.ones(2, 5000, dtype=torch.bool)

    def go(seed: int) -> tuple[torch.Tensor, dict[str, float]]:
        return run(case, variant="random_fkl", generator=torch.Generator().manual_seed(seed))

    (l1, m1), (l2, m2), (l3, _) = go(11), go(11), go(12)
    assert_close(l1, l2, rtol=0, atol=0)
    assert m1 == m2
    assert l1.item() != l3.item()
    assert m1["fkl_applied_frac"] == pytest.approx(0.2, abs=0.015)
    # the loss is exactly the OPD term plus FKL at the applied positions
    assert m1["loss"] == pytest.approx(m1["opd_loss"] + m1["fkl_loss"], rel=1e-9)
    assert 0 < m1["fkl_loss"] < m1["fkl_mean"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_chunk_size_does_not_matter(variant: str) -> None:
    case = random_case(9, B=3, T=7, V=13, k=4)
    case["student_logits"] = case["student_logits"].float()
    kw = variant_kwargs(variant, B=3, T=7)
    loss1, grad1 = grad_of(case, variant=variant, chunk_size=1, **kw)
    loss2, grad2 = grad_of(
        case, variant=variant, chunk_size=10_000, **variant_kwargs(variant, 3, 7)
    )
    assert_close(loss1, loss2, rtol=1e-6, atol=1e-7)
    assert_close(grad1, grad2, rtol=1e-6, atol=1e-8)


def test_non_contiguous_logits() -> None:
    case = random_case(4, B=3, T=5, V=7)
    padded = torch.randn(3, 6, 7, dtype=torch.float64)
    padded[:, :-1] = case["student_logits"]
    view = padded.requires_grad_(True)[:, :-1]  # as in logits[:, :-1]: not viewable as [B*T, V]
    assert not view.is_contiguous()
    loss, _ = run({**case, "student_logits": view}, chunk_size=2)
    loss.backward()
    want_loss, want_grad = grad_of(case, chunk_size=2)
    assert_close(loss.detach(), want_loss, rtol=1e-12, atol=1e-12)
    assert_close(padded.grad[:, :-1], want_grad, rtol=1e-12, atol=1e-12)
    assert (padded.grad[:, -1] == 0).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_logits_fn_is_the_logits_tensor_it_makes(variant: str) -> None:
    """``student_logits`` as a LogitsFn over the B*T flat positions (the learner's form): the
    same loss, metrics and gradient as the tensor, and it is only called for chunks."""
    case = random_case(8, B=3, T=5, V=7)

    def kw() -> dict[str, Any]:  # a fresh generator for random_fkl each time
        return {"variant": variant, "chunk_size": 4, **variant_kwargs(variant, 3, 5)}

    want_loss, want_grad = grad_of(case, **kw())
    _, want_metrics = run(case, **kw())
    logits = case["student_logits"].detach().clone().requires_grad_(True)
    calls: list[tuple[int, int]] = []

    def logits_fn(start: int, end: int) -> torch.Tensor:
        calls.append((start, end))
        return logits.view(15, 7)[start:end] * 1.0  # a new tensor per chunk, as a layer makes

    loss, metrics = run({**case, "student_logits": logits_fn}, **kw())
    loss.backward()
    assert_close(loss.detach(), want_loss, rtol=1e-12, atol=1e-12)
    assert_close(logits.grad, want_grad, rtol=1e-12, atol=1e-12)
    assert metrics == pytest.approx(want_metrics, rel=1e-12, abs=1e-12)
    assert set(calls) == {(0, 4), (4, 8), (8, 12), (12, 15)}  # forward, then recomputed
    with pytest.raises(ValueError, match=r"tokens must be \[B, T\], got \(15,\)"):
        run({**case, "student_logits": logits_fn, "tokens": case["tokens"].view(15)}, **kw())


def test_bf16_logits() -> None:
    case = random_case(6, B=2, T=4, V=9)
    bf = case["student_logits"].to(torch.bfloat16)
    loss_bf, grad_bf = grad_of({**case, "student_logits": bf}, variant="eopd")
    loss_32, grad_32 = grad_of({**case, "student_logits": bf.float()}, variant="eopd")
    assert loss_bf.dtype == torch.float32
    assert grad_bf.dtype == torch.bfloat16
    assert_close(loss_bf, loss_32, rtol=1e-6, atol=1e-7)  # same float32 math on the same values
    assert_close(grad_bf.float(), grad_32, rtol=1e-2, atol=1e-3)


# ---------------------------------------------------------------- masking


def test_masked_positions_change_nothing() -> None:
    case = small_case()
    garbage = {k: v.detach().clone() for k, v in case.items()}
    garbage["student_logits"][1, 2] = torch.tensor([math.nan, math.inf, -math.inf, 1e30, 0.0])
    garbage["tokens"][1, 2] = 10_000  # out of the vocabulary
    garbage["teacher_topk_ids"][1, 2] = -5
    for name in ("behaviour_logprobs", "teacher_logprobs", "teacher_entropy"):
        garbage[name][1, 2] = math.nan
    garbage["teacher_topk_logprobs"][1, 2] = math.inf
    adv = torch.tensor([[0.5, -0.2, 0.1], [0.3, 0.9, math.nan]], dtype=torch.float64)
    for variant in VARIANTS:
        kw = {"advantages": adv} if variant == "grpo" else variant_kwargs(variant)
        loss_c, grad_c = grad_of(case, variant=variant, **kw)
        kw = {"advantages": adv} if variant == "grpo" else variant_kwargs(variant)
        loss_g, grad_g = grad_of(garbage, variant=variant, **kw)
        assert_close(loss_g, loss_c, rtol=0, atol=0, msg=variant)
        assert_close(grad_g, grad_c, rtol=0, atol=0, msg=variant)
        assert (grad_g[1, 2] == 0).all()
        _, m = run(garbage, variant=variant, **kw)
        assert all(math.isfinite(v) for v in m.values()), (variant, m)


def test_float_mask_equals_bool_mask() -> None:
    case = small_case()
    loss_f, _ = run({**case, "mask": case["mask"].double()})
    assert_close(loss_f.item(), expected_loss("eopd"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
def test_all_zero_mask(variant: str) -> None:
    case = small_case()
    case["student_logits"] = torch.full((2, 3, 5), math.nan, dtype=torch.float64)
    case["mask"] = torch.zeros(2, 3)
    loss, grad = grad_of(case, variant=variant, **variant_kwargs(variant))
    assert loss.item() == 0.0
    assert (grad == 0).all()
    _, m = run(case, variant=variant, **variant_kwargs(variant))
    assert m["num_tokens"] == 0.0
    assert all(v == 0.0 for v in m.values()), m


def test_all_zero_mask_loss_has_graph() -> None:
    case = small_case()
    case["mask"] = torch.zeros(2, 3, dtype=torch.bool)
    loss, _ = run(case)
    assert loss.requires_grad


# ---------------------------------------------------------------- decoupled PPO, normaliser


def test_decoupled_with_proximal_equal_behaviour_is_standard() -> None:
    case = random_case(8, B=2, T=5, V=7)
    for variant in ("opd", "eopd", "advantage_shaping", "grpo"):
        kw = variant_kwargs(variant, 2, 5)
        loss_s, grad_s = grad_of(case, variant=variant, **kw)
        loss_d, grad_d = grad_of(
            case, variant=variant, proximal_logprobs=case["behaviour_logprobs"], **kw
        )
        assert_close(loss_d, loss_s, rtol=1e-12, atol=1e-12)
        assert_close(grad_d, grad_s, rtol=1e-12, atol=1e-12)


def test_decoupled_with_cap_by_hand() -> None:
    logits = torch.zeros(1, 3, 5, dtype=torch.float64, requires_grad=True)  # log π_θ = -ln 5
    prox = torch.full((1, 3), -math.log(5), dtype=torch.float64)
    prox[0, 2] += math.log(1.5)  # r = π_θ/π_prox = 1/1.5 at t = 2
    # π_prox/π_behav = 3 (capped at 2), 0.5, 1.0
    behav = prox - torch.tensor([[math.log(3), math.log(0.5), 0.0]], dtype=torch.float64)
    teacher = prox + torch.tensor([[0.4, -0.6, 0.5]], dtype=torch.float64)  # Â vs π_prox
    loss, m = eopd_loss(
        student_logits=logits,
        tokens=torch.tensor([[0, 1, 2]]),
        behaviour_logprobs=behav,
        teacher_logprobs=teacher,
        mask=torch.ones(1, 3),
        variant="opd",
        proximal_logprobs=prox,
        behaviour_weight_cap=2.0,
    )
    # t=0: 2·max(-0.4, -0.4); t=1: 0.5·0.6; t=2: r = 2/3 < 0.8, Â > 0: max(-(2/3)·0.5, -0.8·0.5)
    want = (2 * -0.4 + 0.5 * 0.6 + 1.0 * -(2 / 3) * 0.5) / 3
    assert_close(loss.item(), want, rtol=1e-12, atol=1e-12)
    assert m["behaviour_weight_mean"] == pytest.approx((2 + 0.5 + 1) / 3)
    assert m["behaviour_weight_capped_frac"] == pytest.approx(1 / 3)
    assert m["advantage_mean"] == pytest.approx((0.4 - 0.6 + 0.5) / 3)
    assert m["ratio_min"] == pytest.approx(2 / 3)
    loss.backward()
    g0 = [-2 * 0.4 * ((j == 0) - 0.2) / 3 for j in range(5)]  # weight·(-Â)·(onehot - p)/N
    assert_close(logits.grad[0, 0], torch.tensor(g0, dtype=torch.float64), rtol=1e-12, atol=1e-12)

    no_cap, m2 = eopd_loss(
        student_logits=logits,
        tokens=torch.tensor([[0, 1, 2]]),
        behaviour_logprobs=behav,
        teacher_logprobs=teacher,
        mask=torch.ones(1, 3),
        variant="opd",
        proximal_logprobs=prox,
    )
    assert_close(no_cap.item(), (3 * -0.4 + 0.5 * 0.6 - (2 / 3) * 0.5) / 3, rtol=1e-12, atol=1e-12)
    assert m2["behaviour_weight_capped_frac"] == 0.0


def test_token_normalizer() -> None:
    loss, m = run(small_case(), variant="eopd", token_normalizer=20.0)
    assert_close(loss.item(), expected_loss("eopd") * 5 / 20, rtol=1e-12, atol=1e-12)
    assert m["num_tokens"] == 5.0
    with pytest.raises(ValueError, match="token_normalizer"):
        run(small_case(), token_normalizer=0.0)


# ---------------------------------------------------------------- GRPO advantages, errors


def test_grpo_advantages() -> None:
    adv = grpo_advantages(
        torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
    )
    s = 0.5 / (0.5 + 1e-6)
    # third group: mean 0.75, population std sqrt((2.25² + 3·0.75²)/4) = sqrt(27/16)
    std3 = math.sqrt(27 / 16) + 1e-6
    want = [[s, -s, -s, s], [0.0] * 4, [2.25 / std3, -0.75 / std3, -0.75 / std3, -0.75 / std3]]
    assert_close(adv, torch.tensor(want), rtol=1e-6, atol=1e-7)


def test_unknown_variant_and_args_raise() -> None:
    with pytest.raises(ValueError, match="bogus"):
        run(small_case(), variant="bogus")
    with pytest.raises(ValueError, match="not_an_arg"):
        run(small_case(), variant="eopd", not_an_arg=1)
    with pytest.raises(ValueError, match="kd_ce_weight"):
        run(small_case(), variant="opd", kd_ce_weight=0.5)  # belongs to another variant
    with pytest.raises(ValueError, match="advantages"):
        run(small_case(), variant="grpo")
    with pytest.raises(ValueError, match="teacher_topk_ids"):
        run(
            {**small_case(), "teacher_topk_ids": None, "teacher_topk_logprobs": None},
            variant="eopd",
        )
    with pytest.raises(ValueError, match="proximal_logprobs"):
        case = small_case()
        run(case, variant="kd", proximal_logprobs=case["behaviour_logprobs"])
    assert set(VARIANT_ARGS) == set(VARIANTS)


def test_grpo_needs_no_teacher() -> None:
    case = {
        k: v
        for k, v in small_case().items()
        if k in ("student_logits", "tokens", "behaviour_logprobs", "mask")
    }
    loss, m = run(case, variant="grpo", advantages=torch.tensor(GRPO_ADV, dtype=torch.float64))
    assert_close(loss.item(), expected_loss("grpo", adv=GRPO_ADV), rtol=1e-12, atol=1e-12)
    assert "teacher_entropy_mean" not in m


def test_autograd_saves_no_float32_vocab_tensor() -> None:
    """Checkpointed chunks: the only [*, V] tensors autograd keeps are views of the bf16 logits."""
    case = random_case(1, B=2, T=8, V=64)
    logits = case.pop("student_logits").to(torch.bfloat16).requires_grad_(True)
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = eopd_loss(student_logits=logits, chunk_size=4, **case)
    vocab_sized = [t for t in saved if t.dim() > 0 and t.shape[-1] == 64]
    assert vocab_sized
    for t in vocab_sized:
        assert t.dtype == torch.bfloat16
        assert t.untyped_storage().data_ptr() == logits.untyped_storage().data_ptr()
    loss.backward()
    assert logits.grad is not None and logits.grad.dtype == torch.bfloat16


# ---------------------------------------------------------------- the variant table


OPTIONAL_INPUTS = (
    "behaviour_logprobs",
    "teacher_logprobs",
    "teacher_entropy",
    "teacher_topk_ids",
    "teacher_topk_logprobs",
)
TOPK_PAIR = ("teacher_topk_ids", "teacher_topk_logprobs")


def test_every_variant_has_a_spec_and_its_args_are_the_public_ones() -> None:
    assert tuple(VARIANT_SPECS) == VARIANTS
    assert all(isinstance(spec, VariantSpec) for spec in VARIANT_SPECS.values())
    assert {name: dict(spec.args) for name, spec in VARIANT_SPECS.items()} == {
        name: dict(args) for name, args in VARIANT_ARGS.items()
    }
    assert {name: set(args) for name, args in VARIANT_ARGS.items()} == {
        "opd": set(),
        "eopd": set(),
        "full_fkl": set(),
        "random_fkl": {"random_fkl_fraction", "generator"},
        "entropy_bonus": {"entropy_bonus_beta"},
        "advantage_shaping": {"shaping_alpha", "shaping_kappa"},
        "kd": {"kd_ce_weight"},
        "grpo": {"advantages"},
    }
    assert VARIANT_ARGS["random_fkl"] == {"random_fkl_fraction": 0.2, "generator": None}
    assert VARIANT_ARGS["entropy_bonus"] == {"entropy_bonus_beta": 0.01}
    assert VARIANT_ARGS["advantage_shaping"] == {"shaping_alpha": 0.1, "shaping_kappa": 2.0}
    assert VARIANT_ARGS["kd"] == {"kd_ce_weight": 0.5}
    with pytest.raises(TypeError):
        VARIANT_SPECS["eopd"].args["x"] = 1  # type: ignore[index]


@pytest.mark.parametrize("variant", VARIANTS)
def test_spec_required_inputs_match_the_errors(variant: str) -> None:
    spec = VARIANT_SPECS[variant]
    required = spec.required_inputs
    assert set(required) <= set(OPTIONAL_INPUTS)
    assert ("behaviour_logprobs" in required) == spec.uses_ratio
    assert set(TOPK_PAIR) <= set(required) or not set(TOPK_PAIR) & set(required)
    for name in required:
        dropped = TOPK_PAIR if name in TOPK_PAIR else (name,)  # the pair goes together
        case = {**small_case(), **dict.fromkeys(dropped)}
        why = required[dropped[0]].format(variant=variant)
        with pytest.raises(ValueError, match=f"^{dropped[0]} is required \\({why}\\)$"):
            run(case, variant=variant, **variant_kwargs(variant))
    # what the spec does not declare is optional: the loss runs without all of it
    case = {**small_case(), **dict.fromkeys(set(OPTIONAL_INPUTS) - set(required))}
    loss, _ = run(case, variant=variant, **variant_kwargs(variant))
    assert math.isfinite(loss.item())


def test_a_new_table_entry_is_a_new_variant(monkeypatch: pytest.MonkeyPatch) -> None:
    """The table drives eopd_loss: a spec added under a new name behaves as its parts say."""
    specs = {
        **VARIANT_SPECS,
        "all_fkl_copy": VariantSpec(advantage=TEACHER_ADVANTAGE, fkl_gate=ALL_POSITIONS_GATE),
        "gated_kd": VariantSpec(
            advantage=None,
            fkl_gate=HIGH_ENTROPY_GATE,
            fkl_weight=kd_fkl_weight,
            extra=KD_CE,
            args={"kd_ce_weight": 0.25},
        ),
    }
    monkeypatch.setattr(loss_module, "VARIANT_SPECS", MappingProxyType(specs))
    case = random_case(3, B=2, T=6, V=11)
    loss_new, grad_new = grad_of(case, variant="all_fkl_copy")
    loss_old, grad_old = grad_of(case, variant="full_fkl")
    assert_close(loss_new, loss_old, rtol=0, atol=0)
    assert_close(grad_new, grad_old, rtol=0, atol=0)
    # gated_kd at tau below every entropy is kd with its own default weight
    loss_g, m_g = run(case, variant="gated_kd", tau=-1.0)
    loss_kd, m_kd = run(case, variant="kd", tau=-1.0, kd_ce_weight=0.25)
    assert_close(loss_g, loss_kd, rtol=0, atol=0)
    assert m_g == m_kd
    with pytest.raises(ValueError, match="teacher_entropy is required"):
        run({**case, "teacher_entropy": None}, variant="gated_kd")
