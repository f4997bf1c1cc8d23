"""Tiny models and their tokenizer: special tokens, digits, chat template, loading, vLLM."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from eopd_ray.data.synthetic_math.corpus import corpus_texts, prompt_text
from eopd_ray.data.synthetic_math.problems import generate_problems
from eopd_ray.data.synthetic_math.solutions import sample_solution
from eopd_ray.models.tiny import PRESETS, build_tiny_model
from eopd_ray.models.tokenizer import CHAT_TEMPLATE, train_tokenizer

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


@pytest.fixture(scope="module")
def tokenizer(tiny_models: tuple[Path, Path]) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tiny_models[1])


def test_round_trip(tokenizer: PreTrainedTokenizerBase) -> None:
    rng = random.Random(0)
    texts = [sample_solution(p, rng) for p in generate_problems(50, seed=3)]
    texts += ["naïve café — ünïcode ✓", "  two  spaces\n\ttab", "<|im_start|>user\nhi<|im_end|>"]
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text


def test_special_tokens_are_single_ids(tokenizer: PreTrainedTokenizerBase) -> None:
    ids = [tokenizer.encode(tok, add_special_tokens=False) for tok in SPECIALS]
    assert all(len(i) == 1 for i in ids), ids
    assert [i[0] for i in ids[:3]] == [0, 1, 2]  # fixed control ids, whatever the corpus
    assert len({i[0] for i in ids}) == len(SPECIALS)
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None
    # Inside text they are still one id each, and <think> survives skip_special_tokens (Qwen3).
    ids = tokenizer.encode("a<think>\n\n</think>b<|im_end|>", add_special_tokens=False)
    assert ids.count(tokenizer.convert_tokens_to_ids("<think>")) == 1
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a<think>\n\n</think>b"


def test_digits_are_single_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    for text in ["1234567890", "x = -54 / 9", "\\frac{16}{21}", "20 + 18 + 10 is 48", " 7"]:
        pieces = tokenizer.convert_ids_to_tokens(tokenizer.encode(text, add_special_tokens=False))
        assert all(sum(ch.isdigit() for ch in piece) <= 1 for piece in pieces), pieces
        assert sum(any(ch.isdigit() for ch in p) for p in pieces) == sum(map(str.isdigit, text))


def test_synthetic_task_fits_the_tiny_preset_lengths(tokenizer: PreTrainedTokenizerBase) -> None:
    # configs/tiny.yaml: max_prompt_tokens 96 and max_response_tokens 96 (solution + <|im_end|>).
    rng = random.Random(0)
    for p in generate_problems(300, seed=8):
        chat = [{"role": "user", "content": prompt_text(p)}]
        prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert len(tokenizer.encode(prompt + "<think>\n\n</think>", add_special_tokens=False)) <= 96
        for _ in range(3):
            solution = sample_solution(p, rng) + "<|im_end|>"
            assert len(tokenizer.encode(solution, add_special_tokens=False)) <= 96


def test_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    user = [{"role": "user", "content": "What is 2 + 2?"}]
    prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
    chat = [*user, {"role": "assistant", "content": "4"}]
    assert tokenizer.apply_chat_template(chat, tokenize=False) == (
        "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
    )
    assert tokenizer.chat_template == CHAT_TEMPLATE


def test_tokenizer_training_is_deterministic() -> None:
    texts = corpus_texts(generate_problems(300, seed=1), solutions_per_problem=2)
    first, second = train_tokenizer(texts, 512), train_tokenizer(texts, 512)
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    assert len(first) <= 512 + 2
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(texts, 100)


def test_tiny_pair_loads_and_runs(tiny_models: tuple[Path, Path]) -> None:
    teacher_dir, student_dir = tiny_models
    assert (teacher_dir / "tokenizer.json").read_bytes() == (
        student_dir / "tokenizer.json"
    ).read_bytes()
    assert json.loads((teacher_dir / "tokenizer_config.json").read_text())["chat_template"]
    sizes = {}
    for folder in tiny_models:
        assert (folder / "model.safetensors").is_file()
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        config = model.config
        assert config.model_type == "qwen3" and config.tie_word_embeddings is False
        assert config.vocab_size == len(tokenizer)
        assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
        assert config.max_position_embeddings == 1024
        generation = json.loads((folder / "generation_config.json").read_text())
        assert set(generation["eos_token_id"]) == {
            tokenizer.convert_tokens_to_ids("<|im_end|>"),
            tokenizer.eos_token_id,
        }
        batch = tokenizer(
            ["Compute 2 + 3.", "What is \\frac{1}{2} + \\frac{1}{3}?"],
            return_tensors="pt",
            padding=True,
        )
        with torch.no_grad():
            logits = model(**batch).logits
        assert logits.shape == (2, batch["input_ids"].shape[1], config.vocab_size)
        assert torch.isfinite(logits).all()
        sizes[folder.name] = (config.vocab_size, sum(p.numel() for p in model.parameters()))
    assert sizes["teacher"][0] == sizes["student"][0]
    assert sizes["teacher"][1] > 3 * sizes["student"][1]


def test_build_is_seeded_and_leaves_global_rng_alone(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    state = torch.random.get_rng_state()
    a = build_tiny_model(tmp_path / "a", tokenizer, "student", seed=5)
    b = build_tiny_model(tmp_path / "b", tokenizer, PRESETS["student"], seed=5)
    assert torch.equal(state, torch.random.get_rng_state())
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    c = build_tiny_model(tmp_path / "c", tokenizer, "student", seed=6)
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_vllm_cpu_loads_and_generates(tiny_models: tuple[Path, Path]) -> None:
    # A separate process: an in-process engine would keep its threads and memory for the session.
    script = textwrap.dedent(
        """
        import sys, torch
        from transformers import AutoModelForCausalLM
        from vllm import LLM, SamplingParams
        path = sys.argv[1]
        llm = LLM(model=path, dtype="float32", enforce_eager=True, max_model_len=256, seed=0)
        tok = llm.get_tokenizer()
        prompt = tok.apply_chat_template([{"role": "user", "content": "Compute 3 + 4."}],
                                         tokenize=False, add_generation_prompt=True)
        out = llm.generate([prompt], SamplingParams(max_tokens=16, logprobs=0, seed=0))[0]
        gen = out.outputs[0]
        assert len(gen.token_ids) > 0
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        ids = list(out.prompt_token_ids) + list(gen.token_ids)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
        n = len(out.prompt_token_ids)
        diff = max(abs(gen.logprobs[i][t].logprob - logp[n + i - 1, t].item())
                   for i, t in enumerate(gen.token_ids))
        llm.collective_rpc("reload_weights", kwargs={"weights_path": path})
        llm.reset_prefix_cache()
        print("MAX_DIFF", diff)
        """
    )
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }
    for folder in tiny_models:
        done = subprocess.run(
            [sys.executable, "-c", script, str(folder)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        diff = float(done.stdout.split("MAX_DIFF")[-1])
        assert diff < 1e-4, diff
