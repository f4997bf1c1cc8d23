"""The teacher: the HF scoring model, Serve, the vocabulary check (its statistics: test_vocab)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from eopd_ray.actors.teacher import TeacherModel, check_shared_vocabulary
from eopd_ray.actors.teacher_deployment import deployment_options, unique_app_name
from eopd_ray.actors.teacher_service import TeacherService
from eopd_ray.config import ModelConfig, TeacherServiceConfig
from eopd_ray.rollout import Rollout, TeacherScores


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """The models here are tiny; two intra-op threads on a shared 2-core box mostly spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------
# TeacherModel
# ----------------------------------------------------------------------------------------------

K = 4


@pytest.fixture(scope="module")
def teacher_model(tiny_models: tuple[Path, Path]) -> TeacherModel:
    return TeacherModel(tiny_models[0], dtype="float32", top_k=K, chunk_size=3)


def _requests(vocab: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    rng = np.random.default_rng(seed)
    shapes = [(5, 7), (1, 4), (9, 1), (3, 12), (6, 0)]
    return [
        (rng.integers(0, vocab, p).tolist(), rng.integers(0, vocab, r).tolist()) for p, r in shapes
    ]


def _assert_scores_close(a: TeacherScores, b: TeacherScores, atol: float = 1e-5) -> None:
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=atol, rtol=0)
    np.testing.assert_allclose(a.entropy, b.entropy, atol=atol, rtol=0)
    np.testing.assert_allclose(a.topk_logprobs, b.topk_logprobs, atol=atol, rtol=0)
    # Ids may only differ where two top-k log-probs tie (within atol).
    mismatch = a.topk_ids != b.topk_ids
    if mismatch.any():
        assert np.allclose(a.topk_logprobs[mismatch], b.topk_logprobs[mismatch], atol=atol)


def test_teacher_model_matches_hf_forward(teacher_model: TeacherModel) -> None:
    model = teacher_model.model
    for prompt, response in _requests(teacher_model.vocab_size)[:4]:
        scores = teacher_model.score(prompt, response)
        ids = torch.tensor([prompt + response])
        with torch.inference_mode():
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
        # Response token j is predicted at position len(prompt) + j - 1.
        logp = logp[len(prompt) - 1 : len(prompt) + len(response) - 1]
        expected_lp = logp.gather(1, torch.tensor(response)[:, None])[:, 0]
        np.testing.assert_allclose(scores.logprobs, expected_lp.numpy(), atol=1e-5, rtol=0)
        expected_h = -(logp.exp() * logp).sum(-1)
        np.testing.assert_allclose(scores.entropy, expected_h.numpy(), atol=1e-5, rtol=0)
        vals, ids_k = logp.topk(K, -1)
        np.testing.assert_allclose(scores.topk_logprobs, vals.numpy(), atol=1e-5, rtol=0)
        assert (scores.topk_ids == ids_k.numpy()).mean() > 0.95  # ties aside
        assert scores.topk_ids.shape == (len(response), K)
        assert scores.logprobs.dtype == np.float32 and scores.topk_ids.dtype == np.int64


def test_teacher_model_batched_equals_unbatched(teacher_model: TeacherModel) -> None:
    requests = _requests(teacher_model.vocab_size, seed=1)
    batched = teacher_model.score_batch(requests)
    assert len(batched) == len(requests)
    for (prompt, response), got in zip(requests, batched, strict=True):
        assert got.logprobs.shape == (len(response),)
        _assert_scores_close(got, teacher_model.score(prompt, response))
    with pytest.raises(ValueError, match="non-empty prompt"):
        teacher_model.score([], [1, 2])
    with pytest.raises(ValueError, match="outside the teacher's vocabulary"):
        teacher_model.score([1], [teacher_model.vocab_size])
    info = teacher_model.info()
    assert info["vocab_size"] == teacher_model.vocab_size
    assert info["tokenizer_size"] <= info["vocab_size"]


def test_teacher_model_fp32_head(
    tiny_models: tuple[Path, Path], teacher_model: TeacherModel
) -> None:
    requests = _requests(teacher_model.vocab_size, seed=4)[:2]
    reference = teacher_model.score_batch(requests)
    fp32 = TeacherModel(tiny_models[0], dtype="float32", top_k=K, chunk_size=3, fp32_head=True)
    for got, ref in zip(fp32.score_batch(requests), reference, strict=True):
        _assert_scores_close(got, ref, atol=1e-6)
    bf16 = TeacherModel(tiny_models[0], dtype="bfloat16", top_k=K, chunk_size=3, fp32_head=True)
    for got, ref in zip(bf16.score_batch(requests), reference, strict=True):
        assert got.logprobs.dtype == np.float32
        np.testing.assert_allclose(got.logprobs, ref.logprobs, atol=0.1, rtol=0)


def test_score_ids_batch_gives_log_probs_at_the_given_ids(teacher_model: TeacherModel) -> None:
    requests = _requests(teacher_model.vocab_size, seed=2)
    rng = np.random.default_rng(5)
    ids = [rng.integers(0, teacher_model.vocab_size, (len(r), 3)) for _, r in requests]
    got = teacher_model.score_ids_batch(requests, ids)
    plain = teacher_model.score_batch(requests)
    for (prompt, response), block, scores, ref in zip(requests, ids, got, plain, strict=True):
        assert scores.ids_logprobs.shape == (len(response), 3)
        np.testing.assert_allclose(scores.logprobs, ref.logprobs, atol=1e-5, rtol=0)
        np.testing.assert_allclose(scores.entropy, ref.entropy, atol=1e-5, rtol=0)
        if not response:
            continue
        with torch.inference_mode():
            logits = teacher_model.model(torch.tensor([prompt + response])).logits[0].float()
        logp = torch.log_softmax(logits, -1)[len(prompt) - 1 : len(prompt) + len(response) - 1]
        expected = logp.gather(1, torch.as_tensor(block)).numpy()
        np.testing.assert_allclose(scores.ids_logprobs, expected, atol=1e-5, rtol=0)
    # at a model's own top-k ids the log-probs are its top-k log-probs
    own = teacher_model.score_ids_batch(requests, [r.topk_ids for r in plain])
    for scores, ref in zip(own, plain, strict=True):
        np.testing.assert_allclose(scores.ids_logprobs, ref.topk_logprobs, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"ids must be \[len\(response\), m\]"):
        teacher_model.score_ids_batch(requests[:1], [np.zeros((1, 3), dtype=np.int64)])
    with pytest.raises(ValueError, match="2 id arrays for 1 requests"):
        teacher_model.score_ids_batch(requests[:1], ids[:2])


# ----------------------------------------------------------------------------------------------
# Serve
# ----------------------------------------------------------------------------------------------


def test_deployment_options_fixed_and_autoscaling() -> None:
    fixed = deployment_options(TeacherServiceConfig(min_replicas=2, max_replicas=2))
    assert fixed["num_replicas"] == 2 and "autoscaling_config" not in fixed
    auto = deployment_options(
        TeacherServiceConfig(min_replicas=1, max_replicas=3, num_cpus=0.5, upscale_delay_s=5)
    )
    assert "num_replicas" not in auto
    assert auto["autoscaling_config"]["max_replicas"] == 3
    assert auto["autoscaling_config"]["upscale_delay_s"] == 5
    assert auto["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.0}
    assert auto["max_ongoing_requests"] >= 8  # >= max_batch_size, as @serve.batch requires


def test_serve_teacher_batches_concurrent_requests(
    ray_local: None, tiny_models: tuple[Path, Path], teacher_model: TeacherModel
) -> None:
    import ray

    service = TeacherService.start(
        ModelConfig(path=str(tiny_models[0]), dtype="float32"),
        TeacherServiceConfig(num_cpus=1, max_batch_size=8, batch_wait_timeout_s=0.2, chunk_size=3),
        top_k=K,
        app_name=unique_app_name(),
    )
    try:
        assert service.info["vocab_size"] == teacher_model.vocab_size
        assert service.info["top_k"] == K
        requests = _requests(teacher_model.vocab_size, seed=2) + _requests(
            teacher_model.vocab_size, seed=3
        )
        rollouts = [
            Rollout(i, 0, p, r, [0.0] * len(r), [0] * len(r)) for i, (p, r) in enumerate(requests)
        ]
        responses = [service.score(r) for r in rollouts]  # all in flight at once
        results = service.results(responses, timeout_s=120)
        for (prompt, response), got in zip(requests, results, strict=True):
            _assert_scores_close(got, teacher_model.score(prompt, response))
        stats = service.stats()
        assert sum(stats["batch_sizes"]) == len(rollouts)
        assert max(stats["batch_sizes"]) > 1, stats["batch_sizes"]

        # The ObjectRef route: ray.wait on teacher refs together with other Ray work. A bad
        # request fails alone, not the batch it shares with good ones.
        other = ray.put("sampler output")
        refs = [service.score_ref(r) for r in rollouts[:3]]
        bad = service.score_ids([1, 2], [teacher_model.vocab_size + 5])
        ready, _ = ray.wait([*refs, other], num_returns=len(refs) + 1, timeout=120)
        assert len(ready) == len(refs) + 1
        for (prompt, response), got in zip(requests[:3], ray.get(refs), strict=True):
            assert isinstance(got, TeacherScores)
            _assert_scores_close(got, teacher_model.score(prompt, response))
        with pytest.raises(ValueError, match="outside the teacher's vocabulary"):
            bad.result(timeout_s=60)
    finally:
        service.shutdown()
    from ray import serve

    assert service.app_name not in serve.status().applications


# ----------------------------------------------------------------------------------------------
# Shared vocabulary
# ----------------------------------------------------------------------------------------------


def test_check_shared_vocabulary_passes_for_tiny_pair(tiny_models: tuple[Path, Path]) -> None:
    info = check_shared_vocabulary(*tiny_models)
    assert info.tokenizer_size <= min(info.teacher_vocab_size, info.student_vocab_size)
    assert info.scoring_vocab_size == min(info.teacher_vocab_size, info.student_vocab_size)


def test_check_shared_vocabulary_rejects_other_tokenizer(
    tiny_models: tuple[Path, Path], tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    from eopd_ray.models.tokenizer import train_tokenizer

    teacher_dir, student_dir = tiny_models
    other = tmp_path / "other"
    shutil.copytree(student_dir, other)
    texts = ["the quick brown fox jumps over the lazy dog " * 3, "lorem ipsum dolor sit amet"] * 20
    train_tokenizer(texts, vocab_size=300).save_pretrained(other)
    with pytest.raises(ValueError, match="tokenizers differ") as err:
        check_shared_vocabulary(teacher_dir, other)
    message = str(err.value)
    teacher_size = len(AutoTokenizer.from_pretrained(teacher_dir))
    assert f"{teacher_size} tokens" in message and "first differences: id " in message

    # Same tokenizer, but a model with fewer output rows than tokens.
    small = tmp_path / "small"
    shutil.copytree(student_dir, small)
    config = json.loads((small / "config.json").read_text())
    config["vocab_size"] = teacher_size - 1
    (small / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no output row"):
        check_shared_vocabulary(teacher_dir, small)
