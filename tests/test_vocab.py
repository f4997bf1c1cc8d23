"""eopd_ray.vocab: chunked statistics against a float64 log-softmax, gradients, and memory."""

from __future__ import annotations

import gc
import math
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from torch.testing import assert_close

from eopd_ray.vocab import VocabStats, chunk_stats, output_layer_fn, vocab_stats


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny tensors; two intra-op threads on a shared 2-core box mostly spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def teacher_token_stats(
    logits: torch.Tensor,
    targets: torch.Tensor,
    k: int,
    chunk_size: int,
    vocab_limit: int | None = None,
) -> tuple[torch.Tensor, ...]:
    """The teacher's statistics of logits [T, V]: (logprobs, entropy, topk_ids, topk_logprobs)."""
    s = vocab_stats(
        logits,
        targets,
        chunk_size=chunk_size,
        top_k=k,
        entropy=True,
        vocab_limit=vocab_limit,
        dtype=torch.float32,
    )
    return s.logprobs, s.entropy, s.topk_ids, s.topk_logprobs


def reference(logits: torch.Tensor, targets: torch.Tensor, ids: torch.Tensor, k: int) -> VocabStats:
    """The statistics from one float64 log-softmax over the whole [*P, V]."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    values, top_ids = logp.topk(k, dim=-1)
    return VocabStats(
        logprobs=logp.gather(-1, targets[..., None]).squeeze(-1),
        entropy=-(logp.exp() * logp).sum(-1),
        topk_ids=top_ids,
        topk_logprobs=values,
        ids_logprobs=logp.gather(-1, ids),
    )


def assert_matches(got: VocabStats, want: VocabStats, atol: float) -> None:
    for name in ("logprobs", "entropy", "topk_logprobs", "ids_logprobs"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.shape == b.shape, name
        assert_close(a.double(), b, atol=atol, rtol=0, msg=name)
    assert torch.equal(got.topk_ids, want.topk_ids)


# ----------------------------------------------------------------------------------------------
# The teacher's statistics (moved from tests/actors/test_teacher.py)
# ----------------------------------------------------------------------------------------------


def test_token_stats_by_hand_v5() -> None:
    logits = torch.tensor(
        [
            [0.0, 1.0, 2.0, 3.0, 4.0],
            [1.0, 1.0, 1.0, 1.0, 1.0],
            [math.log(4.0), -math.inf, 0.0, -math.inf, 0.0],  # p = (2/3, 0, 1/6, 0, 1/6)
        ]
    )
    targets = torch.tensor([2, 4, 0])
    logprobs, entropy, topk_ids, topk_logprobs = teacher_token_stats(logits, targets, 2, 2)

    z = sum(math.exp(i) for i in range(5))
    p0 = [math.exp(i) / z for i in range(5)]
    assert logprobs[0].item() == pytest.approx(2.0 - math.log(z), abs=1e-6)
    assert entropy[0].item() == pytest.approx(-sum(p * math.log(p) for p in p0), abs=1e-6)
    assert topk_ids[0].tolist() == [4, 3]
    assert topk_logprobs[0].tolist() == pytest.approx([4 - math.log(z), 3 - math.log(z)], abs=1e-6)

    assert logprobs[1].item() == pytest.approx(-math.log(5), abs=1e-6)
    assert entropy[1].item() == pytest.approx(math.log(5), abs=1e-6)
    assert topk_logprobs[1].tolist() == pytest.approx([-math.log(5)] * 2, abs=1e-6)

    # Zero-probability entries contribute nothing to the entropy (no 0 * -inf = nan).
    p2 = [2 / 3, 1 / 6, 1 / 6]
    assert logprobs[2].item() == pytest.approx(math.log(2 / 3), abs=1e-6)
    assert entropy[2].item() == pytest.approx(-sum(p * math.log(p) for p in p2), abs=1e-6)
    assert topk_ids[2, 0].item() == 0
    assert topk_ids[2, 1].item() in (2, 4)
    assert topk_logprobs[2].tolist() == pytest.approx([math.log(2 / 3), math.log(1 / 6)], abs=1e-6)
    # Full-distribution log-probs, not renormalised over the top-k.
    assert topk_logprobs.exp().sum(-1).lt(1.0).all()
    assert [t.dtype for t in (logprobs, entropy, topk_ids, topk_logprobs)] == [
        torch.float32,
        torch.float32,
        torch.int64,
        torch.float32,
    ]


def test_token_stats_chunking_and_categorical_entropy() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(37, 50, generator=gen) * 3
    targets = torch.randint(0, 50, (37,), generator=gen)
    one = teacher_token_stats(logits, targets, k=4, chunk_size=1)
    big = teacher_token_stats(logits, targets, k=4, chunk_size=1000)
    odd = teacher_token_stats(logits.bfloat16(), targets, k=4, chunk_size=7)
    for a, b in zip(one, big, strict=True):
        assert torch.equal(a, b)
    dist = torch.distributions.Categorical(logits=logits)
    torch.testing.assert_close(one[1], dist.entropy(), atol=1e-5, rtol=0)
    torch.testing.assert_close(one[0], dist.log_prob(targets), atol=1e-5, rtol=0)
    ref_vals, ref_ids = torch.log_softmax(logits, -1).topk(4, -1)
    assert torch.equal(one[2], ref_ids)
    torch.testing.assert_close(one[3], ref_vals, atol=1e-5, rtol=0)
    # bf16 logits are upcast to float32 before the softmax: close to the fp32 statistics.
    assert odd[1].dtype == torch.float32
    torch.testing.assert_close(odd[1], one[1], atol=0.1, rtol=0)


def test_token_stats_vocab_limit_and_errors() -> None:
    logits = torch.randn(5, 12)
    targets = torch.tensor([0, 3, 9, 1, 2])
    cut = teacher_token_stats(logits, targets, 3, 2, vocab_limit=10)
    ref = teacher_token_stats(logits[:, :10], targets, 3, 2)
    for a, b in zip(cut, ref, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="target ids"):
        teacher_token_stats(logits, torch.tensor([0, 0, 11, 0, 0]), 3, 2, vocab_limit=10)
    with pytest.raises(ValueError, match="exceeds"):
        teacher_token_stats(logits, targets, 13, 2)
    empty = teacher_token_stats(logits[:0], targets[:0], 3, 2)
    assert empty[2].shape == (0, 3)


# ----------------------------------------------------------------------------------------------
# Values against float64
# ----------------------------------------------------------------------------------------------


def _case(seed: int, B: int = 3, T: int = 7, V: int = 53, k: int = 4) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    padded = torch.randn(B, T + 1, V, generator=gen) * 4  # logits[:, :-1]: not viewable as [B*T, V]
    return {
        "padded": padded,
        "targets": torch.randint(0, V, (B, T), generator=gen),
        "ids": torch.randint(0, V, (B, T, k), generator=gen),
    }


@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 4, 1000])
def test_batched_logits_match_float64(contiguous: bool, chunk_size: int) -> None:
    case = _case(0)
    logits = case["padded"][:, :-1]
    if contiguous:
        logits = logits.contiguous()
    assert logits.is_contiguous() == contiguous
    got = vocab_stats(
        logits, case["targets"], ids=case["ids"], top_k=5, entropy=True, chunk_size=chunk_size
    )
    assert got.logprobs.shape == (3, 7) and got.topk_ids.shape == (3, 7, 5)
    assert got.ids_logprobs.shape == (3, 7, 4) and got.logprobs.dtype == torch.float32
    assert_matches(got, reference(logits, case["targets"], case["ids"], 5), atol=2e-6)


def test_float64_logits_stay_float64_and_vocab_limit() -> None:
    case = _case(1)
    logits = case["padded"][:, :-1].double()
    got = vocab_stats(logits, case["targets"], ids=case["ids"], top_k=3, entropy=True, chunk_size=5)
    assert got.entropy.dtype == torch.float64
    assert_matches(got, reference(logits, case["targets"], case["ids"], 3), atol=1e-12)
    # vocab_limit: the softmax over the first 40 logits only.
    targets, ids = case["targets"] % 40, case["ids"] % 40
    cut = vocab_stats(logits, targets, ids=ids, top_k=3, entropy=True, chunk_size=5, vocab_limit=40)
    assert_matches(cut, reference(logits[..., :40], targets, ids, 3), atol=1e-12)
    assert int(cut.topk_ids.max()) < 40


def test_only_what_is_asked_for() -> None:
    case = _case(2)
    only_lp = vocab_stats(case["padded"], case["targets"].new_zeros(3, 8), chunk_size=4)
    assert only_lp.entropy is None and only_lp.topk_ids is None and only_lp.ids_logprobs is None
    only_h = vocab_stats(case["padded"], entropy=True, chunk_size=4)
    assert only_h.logprobs is None and only_h.entropy.shape == (3, 8)


def test_fp32_head_and_softcap_logits_fn_match_float64() -> None:
    gen = torch.Generator().manual_seed(3)
    N, H, V = 29, 16, 70
    hidden = torch.randn(N, H, generator=gen).bfloat16()
    head = torch.nn.Linear(H, V, bias=False).bfloat16()
    targets = torch.randint(0, V, (N,), generator=gen)
    ids = torch.randint(0, V, (N, 3), generator=gen)
    weight = head.weight.detach().float()
    # As TeacherModel(fp32_head=True): the output layer applied in float32 to bf16 hidden states.
    fp32 = vocab_stats(
        output_layer_fn(hidden, lambda h: torch.nn.functional.linear(h.float(), weight)),
        targets,
        ids=ids,
        top_k=4,
        entropy=True,
        chunk_size=6,
    )
    exact = hidden.double() @ weight.double().T
    assert_matches(fp32, reference(exact, targets, ids, 4), atol=1e-5)
    # The bf16 head rounds the logits to bf16: visibly further from the exact statistics.
    bf16 = vocab_stats(output_layer_fn(hidden, head), targets, entropy=True, chunk_size=6)
    bf16_err = (bf16.logprobs.double() - reference(exact, targets, ids, 4).logprobs).abs().max()
    assert 1e-4 < bf16_err < 0.5
    # Gemma-style soft-capping, applied per chunk.
    capped_fn = output_layer_fn(hidden, head, softcap=2.0)
    cap = vocab_stats(capped_fn, targets, ids=ids, top_k=2, entropy=True, chunk_size=7)
    capped = 2.0 * torch.tanh(head(hidden).double() / 2.0)
    assert_matches(cap, reference(capped, targets, ids, 2), atol=1e-5)


def test_chunk_stats_masks_garbage() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0], [math.nan, math.inf, -math.inf]], requires_grad=True)
    valid = torch.tensor([True, False])
    out = chunk_stats(logits, torch.tensor([0, 2]), top_k=2, entropy=True, valid=valid)
    assert all(torch.isfinite(t).all() for t in out if t is not None)
    (out.logprobs.sum() + out.entropy.sum()).backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[1] == 0).all()


def test_errors() -> None:
    logits = torch.randn(4, 6)
    with pytest.raises(ValueError, match="id ids must lie in"):
        vocab_stats(logits, ids=torch.full((4, 2), -1), chunk_size=2)
    with pytest.raises(ValueError, match="targets must have shape"):
        vocab_stats(logits, torch.zeros(5, dtype=torch.long), chunk_size=2)
    with pytest.raises(ValueError, match="ids must have shape"):
        vocab_stats(logits, ids=torch.zeros(3, 2, dtype=torch.long), chunk_size=2)
    with pytest.raises(ValueError, match="needs targets"):
        vocab_stats(lambda s, e: logits[s:e], entropy=True, chunk_size=2)
    with pytest.raises(ValueError, match="chunk_size"):
        vocab_stats(logits, entropy=True, chunk_size=0)
    by_count = vocab_stats(lambda s, e: logits[s:e], entropy=True, num_positions=4, chunk_size=3)
    assert_close(by_count.entropy, vocab_stats(logits, entropy=True, chunk_size=4).entropy)


# ----------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------


def _grads(logits: torch.Tensor, **kw: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted sum of all statistics, d sum / d logits), the sum in float64."""
    case = _case(5, B=2, T=5, V=11, k=3)
    leaf = logits.detach().clone().requires_grad_(True)
    s = vocab_stats(
        leaf[:, :-1], case["targets"], ids=case["ids"], entropy=True, chunk_size=3, **kw
    )
    gen = torch.Generator().manual_seed(6)
    total = sum(
        (t.double() * torch.randn(t.shape, generator=gen, dtype=torch.float64)).sum()
        for t in (s.logprobs, s.entropy, s.ids_logprobs)
    )
    total.backward()
    return total.detach(), leaf.grad


def test_gradients_with_and_without_checkpoint_match_float64() -> None:
    logits = _case(5, B=2, T=5, V=11, k=3)["padded"]
    want_total, want_grad = _grads(logits.double())
    for checkpoint in (None, True, False):  # None: checkpointed, since the logits require grad
        total, grad = _grads(logits, checkpoint=checkpoint)
        assert grad.dtype == torch.float32
        assert_close(total, want_total, atol=1e-5, rtol=0)
        assert_close(grad.double(), want_grad, atol=1e-5, rtol=0)
        assert (grad[:, -1] == 0).all()
    assert torch.autograd.gradcheck(
        lambda z: vocab_stats(z, torch.tensor([1, 0, 3]), entropy=True, chunk_size=2)[:2],
        torch.randn(3, 5, dtype=torch.float64, requires_grad=True),
    )


def test_gradient_through_logits_fn_under_checkpoint() -> None:
    gen = torch.Generator().manual_seed(7)
    hidden = torch.randn(9, 6, generator=gen, requires_grad=True)
    head = torch.nn.Linear(6, 13)
    targets = torch.randint(0, 13, (9,), generator=gen)
    grads = []
    for checkpoint in (True, False):
        s = vocab_stats(
            output_layer_fn(hidden, head),
            targets,
            entropy=True,
            chunk_size=4,
            checkpoint=checkpoint,
        )
        (s.logprobs.sum() + s.entropy.sum()).backward()
        grads.append((hidden.grad.clone(), head.weight.grad.clone()))
        hidden.grad, head.weight.grad = None, None
    for a, b in zip(*grads, strict=True):
        assert_close(a, b, atol=1e-6, rtol=0)
        assert a.abs().sum() > 0


# ----------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------


def _tracking_fn(logits: torch.Tensor, alive: list[weakref.ref]) -> Callable[[int, int], Any]:
    """A logits_fn returning fresh copies of ``logits[start:end]``, remembering each."""

    def logits_fn(start: int, end: int) -> torch.Tensor:
        gc.collect()
        chunk = logits[start:end].clone()
        alive.append(weakref.ref(chunk))
        return chunk

    return logits_fn


def _alive(refs: list[weakref.ref]) -> int:
    gc.collect()
    return sum(ref() is not None for ref in refs)


def test_one_chunk_of_logits_alive_at_a_time() -> None:
    logits = torch.randn(40, 30).bfloat16()
    targets = torch.randint(0, 30, (40,))
    refs: list[weakref.ref] = []
    seen: list[int] = []

    def logits_fn(start: int, end: int) -> torch.Tensor:
        seen.append(_alive(refs))  # earlier chunks must be gone when the next is made
        return _tracking_fn(logits, refs)(start, end)

    with torch.no_grad():
        vocab_stats(logits_fn, targets, top_k=3, entropy=True, chunk_size=8)
    assert len(refs) == 5 and seen == [0] * 5 and _alive(refs) == 0

    # Under grad with checkpointing no chunk's logits survive the forward pass, without
    # checkpointing autograd keeps every chunk's (the control: this check can fail).
    weight = torch.randn(30, 30, requires_grad=True)
    for checkpoint, expect_alive in ((True, 0), (False, 5)):
        refs.clear()
        tracked = _tracking_fn(logits.float(), refs)
        out = vocab_stats(
            lambda s, e, f=tracked: f(s, e) @ weight,
            targets,
            entropy=True,
            chunk_size=8,
            checkpoint=checkpoint,
        )
        assert _alive(refs) == expect_alive
        out.entropy.sum().backward()
        assert _alive(refs) == 0


def _allocated_bytes(fn: Callable[[], Any]) -> tuple[int, int]:
    """(peak, held at the end) CPU bytes allocated while ``fn`` runs, from the profiler's
    allocator events (``profile_memory``); what ``fn`` returns counts as held."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    del result
    return peak, running


def test_no_float32_copy_of_all_positions() -> None:
    N, V, chunk = 1024, 1024, 16
    logits = torch.randn(N, V).bfloat16()
    targets = torch.randint(0, V, (N,))
    full_fp32, chunk_fp32 = N * V * 4, chunk * V * 4

    # Control: a plain log-softmax of the bf16 logits allocates the [N, V] float32 tensors.
    peak, _ = _allocated_bytes(lambda: torch.log_softmax(logits.float(), -1))
    assert peak >= full_fp32

    peak, _ = _allocated_bytes(
        lambda: vocab_stats(logits, targets, top_k=4, entropy=True, chunk_size=chunk)
    )
    assert 0 < peak <= 8 * chunk_fp32 < full_fp32 / 4, (peak, chunk_fp32)

    # Under grad: with checkpointing the forward keeps no [n, V] intermediates for backward;
    # without, it keeps several float32 [N, V] worth (the control).
    leaf = logits.requires_grad_(True)
    for checkpoint in (True, False):
        peak, held = _allocated_bytes(
            lambda c=checkpoint: vocab_stats(
                leaf, targets, entropy=True, chunk_size=chunk, checkpoint=c
            )
        )
        if checkpoint:
            assert peak <= 8 * chunk_fp32 and held < chunk_fp32, (peak, held)
        else:
            assert held >= full_fp32, held
