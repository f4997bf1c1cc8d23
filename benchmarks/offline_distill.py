"""Offline control for the tiny preset: the same EOPD loss without Ray, vLLM or DeepSpeed.

Samples the student's rollouts with Hugging Face ``generate``, scores them with the teacher in one
forward pass, applies ``eopd_loss`` (any variant) or, as a control, supervised fine-tuning on
ground-truth solutions (``--variant sft``), one AdamW step per batch with a cosine schedule; saves
the student under ``--out`` and prints its accuracy on the held-out problems before and after
(temperature 1, as the preset samples) with the KL diagnostics of the first and last eighth.
It separates what the pipeline does from what the loss and the tiny student can do: the README's
"what the tiny preset shows" quotes its numbers.

    python benchmarks/offline_distill.py --student runs/tiny-models/student \
        --teacher runs/tiny-models/teacher --variant eopd --lr 5e-4 --iters 60
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from eopd_ray.data.synthetic_math.problems import Problem
from eopd_ray.learners.loss import VARIANTS, eopd_loss
from eopd_ray.models.pretrain import (
    PretrainSettings,
    held_out_problems,
    left_padded_prompts,
    padded_batch,
    solution_examples,
    task_accuracy,
    training_problems,
)
from eopd_ray.models.tokenizer import IM_END

MAX_NEW_TOKENS = 96
DIAGNOSTICS = ("reverse_kl", "fkl_mean", "high_entropy_frac", "student_entropy_mean")


def _positions(attention: torch.Tensor) -> torch.Tensor:
    # Left-padded rows: positions count real tokens only, as in generate.
    return (attention.cumsum(1) - 1).clamp(min=0)


@torch.no_grad()
def rollouts(
    student: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, problems: list[Problem]
) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """Sample one response per problem at temperature 1. Returns ``sequences`` [B, P + R] (prompts
    left-padded), ``attention`` [B, P + R], the prompt width P and the response ``mask`` [B, R]
    (up to and including the end-of-turn token)."""
    ids, attention = left_padded_prompts(tokenizer, problems)
    width = ids.shape[1]
    student.eval()
    sequences = student.generate(
        input_ids=ids,
        attention_mask=attention,
        max_new_tokens=MAX_NEW_TOKENS,
        do_sample=True,
        temperature=1.0,
        top_p=None,
        top_k=None,
    )
    student.train()
    ends = sequences[:, width:] == tokenizer.convert_tokens_to_ids(IM_END)
    mask = (ends.long().cumsum(1) - ends.long()) == 0  # through the first end-of-turn token
    return sequences, torch.cat([attention, mask.long()], 1), width, mask


def eopd_step(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    problems: list[Problem],
    args: argparse.Namespace,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one on-policy batch (behaviour = current student, so the ratio is 1)."""
    sequences, attention, width, mask = rollouts(student, tokenizer, problems)
    tokens = sequences[:, width:]
    positions = _positions(attention)
    with torch.no_grad():
        logits = teacher(input_ids=sequences, attention_mask=attention, position_ids=positions)
        teacher_lp = logits.logits[:, width - 1 : -1].float().log_softmax(-1)
    student_logits = student(
        input_ids=sequences, attention_mask=attention, position_ids=positions
    ).logits[:, width - 1 : -1]
    behaviour = student_logits.detach().log_softmax(-1).gather(-1, tokens[..., None])[..., 0]
    topk_logprobs, topk_ids = teacher_lp.topk(args.top_k, -1)
    return eopd_loss(
        student_logits=student_logits,
        tokens=tokens,
        behaviour_logprobs=behaviour,
        teacher_logprobs=teacher_lp.gather(-1, tokens[..., None])[..., 0],
        teacher_entropy=-(teacher_lp.exp() * teacher_lp).sum(-1),
        teacher_topk_ids=topk_ids,
        teacher_topk_logprobs=topk_logprobs,
        mask=mask,
        variant=args.variant,
        tau=args.tau,
    )


def sft_step(
    student: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    problems: list[Problem],
    rng: random.Random,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy on a freshly sampled ground-truth solution of each problem (the control)."""
    examples = solution_examples(tokenizer, problems, rng)
    ids, attention, labels = padded_batch(examples, tokenizer.pad_token_id)
    loss = student(input_ids=ids, attention_mask=attention, labels=labels).loss
    return loss, {"loss": loss.item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", type=Path, required=True)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--variant", choices=[*VARIANTS, "sft"], default="eopd")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--prompts", type=int, default=32, help="prompts per batch")
    parser.add_argument("--samples", type=int, default=2, help="rollouts per prompt")
    parser.add_argument("--tau", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=16)
    parser.add_argument("--eval-samples", type=int, default=4, help="per held-out problem")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/offline-distill"))
    args = parser.parse_args()
    if args.variant in ("kd", "grpo"):
        parser.error("kd trains on teacher samples and grpo needs rewards: not on-policy OPD")

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    settings = PretrainSettings()
    train_set = training_problems(settings)[:512]  # the tiny preset's prompts
    held_out = held_out_problems(settings) * args.eval_samples
    tokenizer = AutoTokenizer.from_pretrained(args.student)
    student = AutoModelForCausalLM.from_pretrained(args.student, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(args.teacher, dtype=torch.float32).eval()
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 2) * 0.5 * (1 + math.cos(math.pi * s / args.iters))
    )

    before = task_accuracy(args.student, held_out, seed=args.seed + 1)
    started = time.perf_counter()
    history: list[dict[str, float]] = []
    student.train()
    for _ in range(args.iters):
        batch = [p for p in rng.sample(train_set, args.prompts) for _ in range(args.samples)]
        if args.variant == "sft":
            loss, metrics = sft_step(student, tokenizer, batch, rng)
        else:
            loss, metrics = eopd_step(student, teacher, tokenizer, batch, args)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        history.append(metrics)

    out = args.out / f"{args.variant}-lr{args.lr:g}"
    student.save_pretrained(out)
    tokenizer.save_pretrained(out)
    after = task_accuracy(out, held_out, seed=args.seed + 1)
    head, tail = history[: max(1, len(history) // 8)], history[-max(1, len(history) // 8) :]
    trend = {
        key: (
            round(sum(m[key] for m in head) / len(head), 3),
            round(sum(m[key] for m in tail) / len(tail), 3),
        )
        for key in DIAGNOSTICS
        if key in history[0]
    }
    report = {
        "variant": args.variant,
        "lr": args.lr,
        "rollouts": args.iters * args.prompts * args.samples,
        "accuracy": (round(before, 4), round(after, 4)),
        "first_vs_last_eighth": trend,
        "seconds": round(time.perf_counter() - started),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
