"""Pre-train the tiny teacher and student on the synthetic math task (supervised, on CPU).

The tiny preset needs a teacher that knows the task, with the branching uncertainty of its
solutions, and a weaker student that already speaks the format: both are fine-tuned on prompts
rendered with the model's chat template and freshly sampled solution paths (so the models learn
the distribution over paths, not one path). Examples are packed into fixed-length rows (no
padding: the CPU spends its time on real tokens). The student gets fewer steps than the teacher,
so distillation has something to close. Both are then graded on held-out problems (sampling at
temperature 1, as the distillation run samples), and the accuracies go into ``pretrain.json``.

    python -m eopd_ray.models.pretrain --out runs/tiny-models    # a few minutes on 2 cores, cached

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
from transformers import PreTrainedTokenizerBase

from eopd_ray.actors.chat import render_prompt
from eopd_ray.data.synthetic_math import PROMPT_SUFFIX, Problem, generate_problems, sample_solution
from eopd_ray.models.tiny import build_tiny_pair
from eopd_ray.models.tokenizer import IM_END

_MARKER = "pretrain.json"
# Held-out problems are drawn with a seed the training problems never use.
_HELD_OUT_SEED_OFFSET = 10_000


@dataclass(frozen=True)
class PretrainSettings:
    seed: int = 0
    num_problems: int = 2000
    difficulty: str = "easy"  # a ``synthetic_math.DIFFICULTIES`` name; the tiny preset matches it
    teacher_steps: int = 300
    student_steps: int = 30
    rows: int = 8  # packed rows per step
    row_tokens: int = 512  # tokens per packed row
    lr: float = 3e-3
    eval_problems: int = 128
    version: int = 2  # bump when the task or the recipe changes, to invalidate caches


def _examples(
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


def packed_batch(
    examples: list[tuple[list[int], list[int]]], rows: int, row_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate (prompt, response) examples into ``rows`` rows of ``row_tokens`` tokens:
    ``input_ids`` and ``labels`` [rows, row_tokens], labels -100 on prompt tokens. Pops (consumes)
    examples from the end of the list. Rows attend across example boundaries (standard
    packing without masks; harmless for this task and cheaper than padding)."""
    need = rows * row_tokens
    ids: list[int] = []
    labels: list[int] = []
    while len(ids) < need:
        prompt, response = examples.pop()
        ids += prompt + response
        labels += [-100] * len(prompt) + response
    shape = (rows, row_tokens)
    return torch.tensor(ids[:need]).view(shape), torch.tensor(labels[:need]).view(shape)


def sft(
    model_dir: Path,
    problems: list[Problem],
    *,
    steps: int,
    rows: int,
    row_tokens: int,
    lr: float,
    seed: int,
) -> dict[str, float]:
    """Fine-tune the model in ``model_dir`` in place on packed (prompt, sampled solution) rows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
    for _ in range(steps):
        # Refill before a step could run dry: no example is shorter than 16 tokens.
        if len(pending) < rows * row_tokens // 16:
            pending = _examples(tokenizer, problems, rng) + pending
        input_ids, labels = packed_batch(pending, rows, row_tokens)
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.save_pretrained(model_dir)
    tail = losses[-10:] or [float("nan")]
    return {
        "steps": steps,
        "loss_first": losses[0] if losses else float("nan"),
        "loss_last": sum(tail) / len(tail),
    }


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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eopd_ray.eval.scoring import is_correct

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer.padding_side = "left"
    torch.manual_seed(seed)
    correct = 0
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        prompts = [render_prompt(tokenizer, p.problem, "model", PROMPT_SUFFIX) for p in chunk]
        width = max(len(p) for p in prompts)
        pad = tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
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
    problems = generate_problems(
        settings.num_problems, settings.seed, difficulty=settings.difficulty
    )
    held_out = generate_problems(
        settings.eval_problems,
        settings.seed + _HELD_OUT_SEED_OFFSET,
        difficulty=settings.difficulty,
    )
    common = {
        "rows": settings.rows,
        "row_tokens": settings.row_tokens,
        "lr": settings.lr,
        "seed": settings.seed,
    }
    report: dict[str, object] = {}
    for role, model_dir, steps in (
        ("teacher", teacher_dir, settings.teacher_steps),
        ("student", student_dir, settings.student_steps),
    ):
        result = sft(model_dir, problems, steps=steps, **common)
        result["accuracy_t1"] = task_accuracy(model_dir, held_out, seed=settings.seed)
        report[role] = result
    report["seconds"] = time.perf_counter() - started
    marker.write_text(json.dumps({"settings": asdict(settings), "report": report}, indent=1))
    return teacher_dir, student_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = PretrainSettings()
    parser.add_argument("--out", type=Path, default=Path("runs/tiny-models"))
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--difficulty", default=defaults.difficulty)
    parser.add_argument("--teacher-steps", type=int, default=defaults.teacher_steps)
    parser.add_argument("--student-steps", type=int, default=defaults.student_steps)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    args = parser.parse_args()
    settings = PretrainSettings(
        seed=args.seed,
        difficulty=args.difficulty,
        teacher_steps=args.teacher_steps,
        student_steps=args.student_steps,
        lr=args.lr,
    )
    teacher, student = prepare_tiny_models(args.out, settings)
    print(json.loads((args.out / _MARKER).read_text())["report"])
    print(f"teacher: {teacher}\nstudent: {student}")


if __name__ == "__main__":
    main()
