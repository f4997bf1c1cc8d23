"""The learner's response-only forward pass (engine.response_batch / student_logits) against the
full-logits path it replaced: same loss, metrics and gradients, on tiny random models, no Ray."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GraniteConfig,
    LlamaConfig,
    PretrainedConfig,
    Qwen3Config,
)

from eopd_ray.learners.batch import collate, dummy_batch
from eopd_ray.learners.engine import response_batch, student_logits
from eopd_ray.learners.loss import eopd_loss
from eopd_ray.learners.worker import token_logprobs, worker_threads
from eopd_ray.rollout import Rollout, ScoredRollout, TeacherScores

V, K, CHUNK = 97, 4, 5  # chunks of 5 positions: several per micro-batch
SMALL = {
    "vocab_size": V,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "pad_token_id": 0,
}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny tensors; two intra-op threads on a shared 2-core box mostly spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(config: PretrainedConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(torch.float64)
    with torch.no_grad():  # larger output weights: logits of order 1, non-trivial softmaxes
        model.get_output_embeddings().weight.mul_(20.0)
    return model.eval()


def scored_batch(n: int, seed: int, with_teacher: bool = True) -> list[ScoredRollout]:
    """Random prompts (2-7 tokens) and responses (1-9), random teacher scores, advantages."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        prompt = rng.integers(1, V, int(rng.integers(2, 8))).tolist()
        T = int(rng.integers(1, 10))
        response = rng.integers(1, V, T).tolist()
        rollout = Rollout(i, 0, prompt, response, (-rng.random(T) * 3).tolist(), [0] * T)
        teacher = None
        if with_teacher:
            lp = np.sort(-rng.random((T, K)) * 4, axis=1)[:, ::-1].astype(np.float32)
            ids = np.stack([rng.choice(np.arange(1, V), K, replace=False) for _ in range(T)])
            teacher = TeacherScores(
                logprobs=(-rng.random(T) * 3).astype(np.float32),
                entropy=(rng.random(T) * 2).astype(np.float32),
                topk_ids=ids,
                topk_logprobs=lp.copy(),
            )
        out.append(ScoredRollout(rollout, teacher, {"advantage": float(rng.normal())}))
    return out


def loss_kwargs(b: dict[str, torch.Tensor], variant: str) -> dict:
    kw = {
        key: b.get(key)
        for key in (
            "behaviour_logprobs",
            "teacher_logprobs",
            "teacher_entropy",
            "teacher_topk_ids",
            "teacher_topk_logprobs",
        )
    }
    extra = {
        "random_fkl": {"random_fkl_fraction": 1.0},  # deterministic gate: the draws' shapes differ
        "entropy_bonus": {"entropy_bonus_beta": 0.3},
        "kd": {"kd_ce_weight": 0.4},
        "grpo": {"advantages": b.get("advantages")},
    }.get(variant, {})
    return kw | extra | {"variant": variant, "tau": 1.0, "chunk_size": CHUNK}


def grads(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def full_path(model, b: dict, variant: str, decoupled: bool = False):
    """What the learner did before: logits at every position, [B, L-1, V]."""
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
    prox = token_logprobs(logits, b["tokens"], CHUNK) + 0.1 if decoupled else None
    loss, metrics = eopd_loss(
        student_logits=logits,
        tokens=b["tokens"],
        mask=b["mask"],
        proximal_logprobs=prox,
        **loss_kwargs(b, variant),
    )
    return loss, metrics, grads(model, loss)


def response_path(model, b: dict, variant: str, decoupled: bool = False, one_call: bool = False):
    """The learner's path: the output layer at the response positions only."""
    r = response_batch(b)
    logits = student_logits(model, r, one_call=one_call, check=True)
    prox = token_logprobs(logits, r["tokens"], CHUNK) + 0.1 if decoupled else None
    loss, metrics = eopd_loss(
        student_logits=logits,
        tokens=r["tokens"],
        mask=r["mask"],
        proximal_logprobs=prox,
        **loss_kwargs(r, variant),
    )
    return loss, metrics, grads(model, loss)


def assert_same(old, new) -> None:
    (loss_a, metrics_a, grads_a), (loss_b, metrics_b, grads_b) = old, new
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-10, atol=1e-12)
    assert metrics_b.keys() == metrics_a.keys()
    for key, value in metrics_a.items():
        assert metrics_b[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert grads_b.keys() == grads_a.keys()
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, rtol=1e-9, atol=1e-12, msg=name)
    assert any(g.abs().max() > 1e-3 for g in grads_a.values())  # a real gradient


LLAMA = LlamaConfig(**SMALL, tie_word_embeddings=False)  # SmolLM2's family


@pytest.mark.parametrize(
    "variant",
    ["eopd", "kd", "opd", "full_fkl", "random_fkl", "entropy_bonus", "advantage_shaping", "grpo"],
)
def test_response_path_has_the_full_paths_loss_and_gradients(variant: str) -> None:
    model = tiny_model(LLAMA)
    b = collate(scored_batch(5, seed=1), 0, top_k=K)
    assert_same(full_path(model, b, variant), response_path(model, b, variant))


@pytest.mark.parametrize(
    ("config", "variant", "one_call", "decoupled"),
    [
        (Qwen3Config(**SMALL, head_dim=8, tie_word_embeddings=True), "eopd", False, False),
        (LLAMA, "eopd", True, False),  # ZeRO-3's one output-layer call
        (LLAMA, "opd", False, True),  # decoupled: proximal log-probs from the same logits
        (LLAMA, "kd", True, False),
    ],
)
def test_response_path_ties_chunks_and_decoupled(config, variant, one_call, decoupled) -> None:
    model = tiny_model(config, seed=2)
    b = collate(scored_batch(4, seed=3), 0, top_k=K)
    old = full_path(model, b, variant, decoupled)
    assert_same(old, response_path(model, b, variant, decoupled, one_call))


def test_grpo_without_teacher_tensors() -> None:
    model = tiny_model(LLAMA)
    b = collate(scored_batch(3, seed=4, with_teacher=False), 0, top_k=K)
    assert "teacher_logprobs" not in b
    assert_same(full_path(model, b, "grpo"), response_path(model, b, "grpo"))


def test_response_batch_gathers_the_masked_positions_by_hand() -> None:
    b = collate(scored_batch(2, seed=5), 0, top_k=K)
    r = response_batch(b)
    rows, cols = torch.nonzero(b["mask"], as_tuple=True)
    assert r["rows"].tolist() == rows.tolist() and r["cols"].tolist() == cols.tolist()
    first = scored_batch(2, seed=5)[0].rollout
    P, T = len(first.prompt_ids), len(first.response_ids)
    assert r["cols"][:T].tolist() == list(range(P - 1, P - 1 + T))  # collate's alignment
    assert r["tokens"][0, :T].tolist() == first.response_ids
    assert r["mask"].shape == (1, int(b["mask"].sum())) and bool(r["mask"].all())
    assert r["teacher_topk_ids"].shape == (1, r["mask"].shape[1], K)
    assert r["advantages"].shape == r["mask"].shape
    assert r["input_ids"] is b["input_ids"]


def test_an_empty_micro_batch_gives_an_exact_zero_with_a_graph() -> None:
    model = tiny_model(LLAMA)
    r = response_batch(dummy_batch(0, top_k=K))
    assert r["mask"].shape == (1, 1) and not r["mask"].any()
    logits = student_logits(model, r)
    loss, metrics = eopd_loss(
        student_logits=logits, tokens=r["tokens"], mask=r["mask"], **loss_kwargs(r, "eopd")
    )
    g = grads(model, loss)
    assert loss.item() == 0.0 and metrics["num_tokens"] == 0.0
    assert g and all(x.abs().max() == 0.0 for x in g.values())


def test_autograd_keeps_no_vocabulary_sized_tensor() -> None:
    """What the forward pass saves for backward: nothing with V columns (the chunks' logits are
    recomputed), while the full path saves the whole [B, L-1, V]."""
    model = tiny_model(LLAMA)
    b = collate(scored_batch(4, seed=6), 0, top_k=K)

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def saved_vocab_rows(path) -> int:
        rows = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            activation = t.untyped_storage().data_ptr() not in weights  # not lm_head.weight.T
            if activation and t.dim() >= 2 and t.shape[-1] == V:
                rows.append(t.numel() // V)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            path(model, b)
        return sum(rows)

    def new(model, b):
        r = response_batch(b)
        return eopd_loss(
            student_logits=student_logits(model, r),
            tokens=r["tokens"],
            mask=r["mask"],
            **loss_kwargs(r, "eopd"),
        )

    def old(model, b):
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        return eopd_loss(
            student_logits=logits[:, :-1],
            tokens=b["tokens"],
            mask=b["mask"],
            **loss_kwargs(b, "eopd"),
        )

    B, L = b["input_ids"].shape
    assert saved_vocab_rows(old) >= B * (L - 1)
    assert saved_vocab_rows(new) == 0


def test_a_model_that_rescales_its_logits_is_refused() -> None:
    granite = GraniteConfig(**SMALL, logits_scaling=8.0, tie_word_embeddings=False)
    model = tiny_model(granite)
    r = response_batch(collate(scored_batch(2, seed=7), 0, top_k=K))
    with pytest.raises(ValueError, match="rescales its logits is not supported"):
        student_logits(model, r, check=True)
    student_logits(tiny_model(LLAMA), r, check=True)  # passes


def test_worker_threads() -> None:
    assert worker_threads(None, 2.0) == 2
    assert worker_threads(None, 2.7) == 2
    assert worker_threads(None, 0.5) == 1  # fractional CPUs: still one thread
    assert worker_threads(3, 1.0) == 3
