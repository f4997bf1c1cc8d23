"""The CUDA code paths, on one GPU (``scripts/gpu_check.sh`` runs these; never in CI).

The Qwen3-shaped pair of ``python -m eopd_ray.models.tiny --sizes check`` (the script builds it
into ``runs/gpu-check/models``; ``EOPD_GPU_MODELS`` points elsewhere): the vLLM CUDA engine in
bf16 with CUDA graphs against the learner's own bf16 forward, the teacher on CUDA against a float32
CPU forward, and the weight broadcast from CUDA tensors.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
MODELS = Path(os.environ.get("EOPD_GPU_MODELS", REPO / "runs" / "gpu-check" / "models"))
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def requests() -> list:
    from transformers import AutoTokenizer

    from eopd_ray.actors.chat import render_prompt

    tokenizer = AutoTokenizer.from_pretrained(MODELS / "student")
    problems = ["What is 2+3?", "What is 17*4?", "Solve 4x = 8.", "What is 7-9?"]
    return [(i, render_prompt(tokenizer, p, "model"), None) for i, p in enumerate(problems)]


def test_cuda_sampler_bf16_logprobs_match_the_learners_forward(ray_local, requests) -> None:
    """vLLM (CUDA graphs on) vs a bf16 Hugging Face forward of the same weights: the mismatch
    the learner sees at equal versions (printed; bf16 rounding bounds it)."""
    from transformers import AutoModelForCausalLM

    from eopd_ray.actors.sampler_pool import SamplerPool
    from eopd_ray.config import SamplerConfig

    config = SamplerConfig(num_gpus=0.3, gpu_memory_utilization=0.25, enforce_eager=False)
    pool = SamplerPool(config, str(MODELS / "student"), dtype="bfloat16")
    try:
        rollouts = pool.generate(requests, n=2, max_tokens=64, seed=1)
    finally:
        pool.shutdown()
    model = AutoModelForCausalLM.from_pretrained(MODELS / "student", dtype=torch.bfloat16)
    model = model.cuda().eval()
    worst = 0.0
    for r in rollouts:
        ids = torch.tensor([r.prompt_ids + r.response_ids], device="cuda")
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
        start = len(r.prompt_ids) - 1
        pos = torch.arange(start, start + len(r), device="cuda")
        ref = logp[pos, torch.tensor(r.response_ids, device="cuda")].cpu()
        worst = max(worst, (ref - torch.tensor(r.behaviour_logprobs)).abs().max().item())
    print(f"\nbf16 sampler vs learner log-prob mismatch: max |Δ| = {worst:.3e}")
    assert worst < 0.1


def test_cuda_teacher_matches_a_float32_cpu_forward(requests) -> None:
    from eopd_ray.actors.teacher import TeacherModel

    cuda = TeacherModel(MODELS / "teacher", "bfloat16", top_k=16, device="cuda", fp32_head=True)
    cpu = TeacherModel(MODELS / "teacher", "float32", top_k=16, device="cpu")
    pairs = [(prompt, prompt[-8:]) for _, prompt, _ in requests]  # any response tokens will do
    for a, b in zip(cuda.score_batch(pairs), cpu.score_batch(pairs), strict=True):
        assert abs(a.logprobs - b.logprobs).max() < 0.1
        assert abs(a.entropy - b.entropy).max() < 0.1


def test_weight_broadcast_from_cuda_tensors() -> None:
    """The learner's parameters live on the GPU: a gloo group stages them through the CPU."""
    from eopd_ray.actors.weight_broadcast import WeightGroup, WeightSender, receive

    module = torch.nn.Linear(64, 32).cuda()
    sender = WeightSender(module, rank=0, zero_stage=0, host="127.0.0.1")
    group = WeightGroup("gpu-check", "127.0.0.1", sender.port, 2, "gloo", 30.0, sender.specs(),
                        1 << 20)  # fmt: skip
    received = {}

    def receiver() -> None:
        from eopd_ray.actors.weight_broadcast import GroupMember

        pg = GroupMember().join(group, 1)
        received.update({k: v.clone() for k, v in receive(pg, group, "cpu")})

    thread = threading.Thread(target=receiver)
    thread.start()
    assert "error" not in sender.send(group)
    thread.join(timeout=60)
    for name, value in module.state_dict().items():
        assert torch.equal(received[name], value.cpu())
