"""Pre-train the tiny teacher on the synthetic math task (supervised, on CPU); prune it into the
student.

The tiny preset needs a teacher that knows the task, with the branching uncertainty of its
solutions, and a smaller student that is clearly worse but can be repaired by distillation within
a CPU-sized run. The teacher is fine-tuned on prompts rendered with the model's chat template and
freshly sampled solution paths (so it learns the distribution over paths, not one path), one
example per row, right-padded: packing examples into rows without a block mask let the model read
the previous problems' numbers, and it never learned to copy its own operands. The student is the
teacher with every MLP pruned to its most active neurons (``eopd_ray.models.prune``, Minitron-style
width pruning): about half the parameters, and a large accuracy drop that distillation recovers.
Both are graded on held-out problems that are disjoint from the training problems (sampling at
temperature 1, as the distillation run samples), and the accuracies go into ``pretrain.json``.

    python -m eopd_ray.models.pretrain --out runs/tiny-models    # ~14 min on 2 cores, cached

The result is cached: a folder whose ``pretrain.json`` matches the requested settings is reused.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from eopd_ray.actors.chat import render_prompt
from eopd_ray.data.synthetic_math.corpus import PROMPT_SUFFIX
from eopd_ray.data.synthetic_math.problems import Problem, generate_problems
from eopd_ray.data.synthetic_math.solutions import sample_solution
from eopd_ray.models.prune import prune_teacher_into_student
from eopd_ray.models.tiny import build_tiny_pair
from eopd_ray.models.tokenizer import IM_END

_MARKER = "pretrain.json"


@dataclass(frozen=True)
class PretrainSettings:
    seed: int = 0
    num_problems: int = 2000
    difficulty: str = "small"  # a ``synthetic_math.DIFFICULTIES`` name; the tiny preset matches it
    teacher_steps: int = 600
    batch_examples: int = 48  # examples (rows) per step
    lr: float = 3e-3
    # The student: the teacher's MLPs cut from 768 to this many neurons (~half the parameters).
    student_mlp_width: int = 192
    calibration_examples: int = 256  # ranking the neurons
    eval_problems: int = 256
    version: int = 4  # bump when the task or the recipe changes, to invalidate caches


def solution_examples(
    tokenizer: PreTrainedTokenizerBase, problems: list[Problem], rng: random.Random
) -> list[tuple[list[int], list[int]]]:
    """One shuffled pass over ``problems``: (prompt ids, response ids + end-of-turn), each with a
    freshly sampled solution path."""
    end = tokenizer.convert_tokens_to_ids(IM_END)
    out = []
    for problem in rng.sample(problems, len(problems)):
        prompt = render_prompt(tokenizer, problem.problem, "model", PROMPT_SUFFIX)
        response = tokenizer.encode(sample_solution(problem, rng), add_special_tokens=False)
        out.append((prompt, [*response, end]))
    return out


def padded_batch(
    examples: list[tuple[list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One (prompt, response) example per row, right-padded to the longest: ``input_ids``,
    ``attention_mask`` and ``labels`` [len(examples), longest]; labels are -100 on prompt and
    padding tokens."""
    width = max(len(p) + len(r) for p, r in examples)
    ids, mask, labels = [], [], []
    for prompt, response in examples:
        pad = width - len(prompt) - len(response)
        ids.append(prompt + response + [pad_id] * pad)
        mask.append([1] * (len(prompt) + len(response)) + [0] * pad)
        labels.append([-100] * len(prompt) + response + [-100] * pad)
    return torch.tensor(ids), torch.tensor(mask), torch.tensor(labels)


def sft(
    model_dir: Path,
    problems: list[Problem],
    *,
    steps: int,
    batch_examples: int,
    lr: float,
    seed: int,
) -> dict[str, float]:
    """Fine-tune the model in ``model_dir`` in place on (prompt, sampled solution) examples."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, min(20, steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.05, 1 - s / max(steps, 1))
    )
    rng = random.Random(seed)
    pending: list[tuple[list[int], list[int]]] = []
    losses: list[float] = []
    # ~10 min for the tiny teacher on 2 cores: show the live loss and an estimate of the time left
    bar = tqdm(range(steps), desc=f"fine-tuning {model_dir.name}", unit="step", mininterval=2.0)
    for _ in bar:
        if len(pending) < batch_examples:
            pending = solution_examples(tokenizer, problems, rng) + pending
        batch, pending = pending[-batch_examples:], pending[:-batch_examples]
        input_ids, attention_mask, labels = padded_batch(batch, tokenizer.pad_token_id)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    bar.close()
    model.save_pretrained(model_dir)
    tail = losses[-10:] or [float("nan")]
    return {
        "steps": steps,
        "loss_first": losses[0] if losses else float("nan"),
        "loss_last": sum(tail) / len(tail),
    }


def left_padded_prompts(
    tokenizer: PreTrainedTokenizerBase, problems: list[Problem]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The problems' chat-templated prompts left-padded for ``generate``: ``input_ids`` and
    ``attention_mask`` [len(problems), longest prompt]."""
    prompts = [render_prompt(tokenizer, p.problem, "model", PROMPT_SUFFIX) for p in problems]
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, attention


@torch.no_grad()
def task_accuracy(
    model_dir: Path,
    problems: list[Problem],
    *,
    temperature: float = 1.0,
    max_new_tokens: int = 96,
    seed: int = 0,
    batch_size: int = 64,
) -> float:
    """Share of ``problems`` whose sampled answer (HF ``generate``; greedy at temperature 0)
    has a last ``\\boxed{}`` equal to the gold answer (math-verify)."""
    from eopd_ray.eval.scoring import is_correct

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer.padding_side = "left"
    torch.manual_seed(seed)
    correct = 0
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        ids, attention = left_padded_prompts(tokenizer, chunk)
        width = ids.shape[1]
        sampled = temperature > 0
        out = model.generate(
            input_ids=ids,
            attention_mask=attention,
            max_new_tokens=max_new_tokens,
            do_sample=sampled,
            temperature=temperature if sampled else None,
            top_p=None,
            top_k=None,
        )
        for problem, row in zip(chunk, out[:, width:], strict=True):
            correct += is_correct(tokenizer.decode(row, skip_special_tokens=True), problem.answer)
    return correct / max(len(problems), 1)


def training_problems(settings: PretrainSettings) -> list[Problem]:
    """The problems both models are pre-trained on."""
    return generate_problems(settings.num_problems, settings.seed, difficulty=settings.difficulty)


def held_out_problems(settings: PretrainSettings) -> list[Problem]:
    """``settings.eval_problems`` problems none of which is a training problem (the synthetic
    benchmark's held-out set, ``eopd_ray/data/synthetic_math/held_out.py``)."""
    from eopd_ray.data.synthetic_math.held_out import held_out_problems as held_out

    return held_out(
        settings.difficulty,
        settings.eval_problems,
        seed=settings.seed,
        pretrain_problems=settings.num_problems,
    )


def prepare_tiny_models(
    out_dir: str | Path, settings: PretrainSettings | None = None
) -> tuple[Path, Path]:
    """(teacher_dir, student_dir) under ``out_dir``, built and fine-tuned unless cached."""
    settings = settings or PretrainSettings()
    out = Path(out_dir)
    marker = out / _MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("settings") == asdict(settings):
        return out / "teacher", out / "student"
    marker.unlink(missing_ok=True)
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    teacher_dir, student_dir = build_tiny_pair(
        out, seed=settings.seed, num_problems=settings.num_problems
    )
    problems = training_problems(settings)
    held_out = held_out_problems(settings)
    report: dict[str, dict[str, float]] = {
        "teacher": sft(
            teacher_dir,
            problems,
            steps=settings.teacher_steps,
            batch_examples=settings.batch_examples,
            lr=settings.lr,
            seed=settings.seed,
        )
    }
    # The random student build_tiny_pair saved is replaced by the pruned teacher.
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    calibration = solution_examples(tokenizer, problems, random.Random(settings.seed))
    input_ids, attention_mask, _ = padded_batch(
        calibration[: settings.calibration_examples], tokenizer.pad_token_id
    )
    report["student"] = prune_teacher_into_student(
        teacher_dir, student_dir, (input_ids, attention_mask), settings.student_mlp_width
    )
    for role, model_dir in (("teacher", teacher_dir), ("student", student_dir)):
        report[role]["accuracy_t1"] = task_accuracy(model_dir, held_out, seed=settings.seed)
    timed = {**report, "seconds": time.perf_counter() - started}
    marker.write_text(json.dumps({"settings": asdict(settings), "report": timed}, indent=1))
    return teacher_dir, student_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = PretrainSettings()
    parser.add_argument("--out", type=Path, default=Path("runs/tiny-models"))
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--difficulty", default=defaults.difficulty)
    parser.add_argument("--teacher-steps", type=int, default=defaults.teacher_steps)
    parser.add_argument("--student-mlp-width", type=int, default=defaults.student_mlp_width)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    args = parser.parse_args()
    settings = PretrainSettings(
        seed=args.seed,
        difficulty=args.difficulty,
        teacher_steps=args.teacher_steps,
        student_mlp_width=args.student_mlp_width,
        lr=args.lr,
    )
    teacher, student = prepare_tiny_models(args.out, settings)
    print(json.loads((args.out / _MARKER).read_text())["report"])
    print(f"teacher: {teacher}\nstudent: {student}")


if __name__ == "__main__":
    main()
