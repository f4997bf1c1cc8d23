"""Peak memory of one learner training step: response-only logits against the full-logits path.

One ``LearnerWorker`` (the real rank: DeepSpeed engine, loss, backward, AdamW step) in this
process's own ``torch.distributed`` group of one, no Ray, on a SmolLM2-shaped student built here
with random weights (Llama, vocabulary 49,152, hidden 576, 15 layers; ~106M parameters, untied)
and a batch like the SmolLM2 preset's (8 sequences of ~150 prompt + 128 response tokens, one
micro-batch). Each path runs in a fresh child process; after a warm-up step on one short rollout
(AdamW allocates its moments there) the peak resident set is reset (``/proc/self/clear_refs``)
and one full step is measured:

- ``full``: the learner before: the output layer at every position, ``logits[:, :-1]`` [B, L-1, V]
  into the loss;
- ``response``: the output layer at the N response positions only, chunk by chunk inside the loss
  (a ``LogitsFn``): no tensor with V columns lives from the forward pass to the backward pass;
- ``one-call``: response positions, one ``[N, V]`` output-layer call (what ZeRO-3 ranks do).

    python benchmarks/learner_memory.py                      # the table (~4 min on 2 cores)
    python benchmarks/learner_memory.py --chunk-sizes 1024 128 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eopd_ray.config import LearnerConfig, LossConfig, ModelConfig, OptimConfig
from eopd_ray.learners.batch import collate, count_tokens, dummy_batch
from eopd_ray.learners.engine import student_logits
from eopd_ray.learners.learner_group import train_options
from eopd_ray.learners.worker import LearnerWorker
from eopd_ray.rollout import Rollout, ScoredRollout, TeacherScores

SMOLLM2_STUDENT = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 15,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "tie_word_embeddings": False,
    "max_position_embeddings": 2048,
    "pad_token_id": 2,
    "eos_token_id": 2,
}
PATHS = ("full", "response", "one-call")


class FullLogitsWorker(LearnerWorker):
    """The learner as it was: per-token tensors [B, L-1], the output layer at every position."""

    def _tensors(self, micro: list[ScoredRollout] | None, top_k: int) -> dict[str, torch.Tensor]:
        pad = self.pad_id
        b = collate(micro, pad, top_k=top_k) if micro else dummy_batch(pad, top_k=top_k)
        return {key: v.to(self.device) for key, v in b.items()}

    def _logits(self, batch: dict[str, torch.Tensor]) -> Any:
        out = self.engine(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        )
        return out.logits[:, :-1]


class OneCallWorker(LearnerWorker):
    """Response positions, one output-layer call for all of them (the ZeRO-3 form)."""

    def _logits(self, batch: dict[str, torch.Tensor]) -> Any:
        return student_logits(self.engine, batch, one_call=True)


WORKERS = {"full": FullLogitsWorker, "response": LearnerWorker, "one-call": OneCallWorker}


def build_student(folder: Path) -> Path:
    """A random-weight SmolLM2-shaped student, saved as a Hugging Face folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**SMOLLM2_STUDENT)).save_pretrained(folder)
    return folder


def rollouts(
    n: int, prompt: int, response: int, top_k: int, vocab: int, seed: int
) -> list[ScoredRollout]:
    """``n`` random rollouts, prompts of ``prompt`` ± 10 tokens, ``response`` tokens each."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        P = max(1, prompt + int(rng.integers(-10, 11)))
        T = response
        lp = np.sort(-rng.random((T, top_k)) * 5, axis=1)[:, ::-1].astype(np.float32)
        scores = TeacherScores(
            logprobs=(-rng.random(T) * 3).astype(np.float32),
            entropy=(rng.random(T) * 2).astype(np.float32),
            topk_ids=rng.integers(0, vocab, (T, top_k)),
            topk_logprobs=lp.copy(),
        )
        r = Rollout(
            i,
            0,
            rng.integers(3, vocab, P).tolist(),
            rng.integers(3, vocab, T).tolist(),
            (-rng.random(T) * 3).tolist(),
            [0] * T,
        )
        out.append(ScoredRollout(r, scores))
    return out


def _rss_mib(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(args: argparse.Namespace) -> dict[str, float]:
    """Child process: set up one worker, warm up, then one measured step."""
    loss = LossConfig(variant=args.variant, chunk_size=args.chunk_size)
    learner = LearnerConfig(
        zero_stage=2,
        micro_batch_sequences=args.sequences,
        num_cpus_per_worker=float(args.threads),
        gradient_checkpointing=args.gradient_checkpointing,
    )
    cfg = {
        "student": ModelConfig(path=str(args.student), dtype=args.dtype),
        "learner": learner,
        "optim": OptimConfig(lr=1e-5),
        "total_steps": 10,
    }
    worker = WORKERS[args.path](0, 1)
    info = worker.setup(cfg, "127.0.0.1", _free_port())
    opts = train_options(loss, "behaviour", None, version=0, seed=0)

    def step(batch: list[ScoredRollout]) -> float:
        shard = {"normalizer": float(count_tokens(batch)), "micro": [batch]}
        t0 = time.perf_counter()
        worker.train([shard], opts)
        return time.perf_counter() - t0

    vocab = int(worker.engine.module.config.vocab_size)
    step(rollouts(1, 2, 1, loss.top_k, vocab, seed=1))  # AdamW's moments exist from here on
    before = _rss_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    batch = rollouts(args.sequences, args.prompt, args.response, loss.top_k, vocab, seed=2)
    seconds = step(batch)
    peak = _rss_mib("VmHWM")
    worker.shutdown()
    return {
        "rss_before_mib": before,
        "peak_mib": peak,
        "step_peak_extra_mib": peak - before,
        "step_s": seconds,
        "threads": info["num_threads"],
    }


def run_child(args: argparse.Namespace, path: str, chunk: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", path, "--chunk-size", str(chunk)]
    for key in ("student", "dtype", "sequences", "prompt", "response", "threads", "variant"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    if args.gradient_checkpointing:
        cmd.append("--gradient-checkpointing")
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{path} (chunk {chunk}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--chunk-sizes", nargs="+", type=int, default=[1024, 256])
    parser.add_argument("--student", type=Path, help="default: build one in a temporary folder")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=150)
    parser.add_argument("--response", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", default="eopd")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--chunk-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.path = args.child
        print(json.dumps(measure(args)))
        return
    with tempfile.TemporaryDirectory(prefix="learner-memory-") as tmp:
        args.student_name = "given" if args.student else "SmolLM2-shaped (V=49,152)"
        if args.student is None:
            args.student = build_student(Path(tmp) / "student")
        # the chunk size changes only the loss's transient [chunk, V] tensors: the full path at
        # the first size, the one-call path at the last
        chunks = {"full": args.chunk_sizes[:1], "one-call": args.chunk_sizes[-1:]}
        rows = [
            (path, chunk, run_child(args, path, chunk))
            for path in args.paths
            for chunk in chunks.get(path, args.chunk_sizes)
        ]
    print(
        f"\n{args.student_name} student, {args.dtype}, B={args.sequences}, prompt ~{args.prompt}"
        f" + response {args.response}, {args.variant}, ZeRO-2, {args.threads} threads"
        + (", gradient checkpointing" if args.gradient_checkpointing else "")
    )
    print(f"{'path':<10} {'chunk':>6} {'RSS before':>11} {'step peak':>10} {'extra':>8} {'s':>6}")
    for path, chunk, r in rows:
        print(
            f"{path:<10} {chunk:>6} {r['rss_before_mib']:>9.0f}Mi {r['peak_mib']:>8.0f}Mi "
            f"{r['step_peak_extra_mib']:>6.0f}Mi {r['step_s']:>6.1f}"
        )


if __name__ == "__main__":
    main()
