"""Pre-train the tiny teacher and student on the synthetic math task (supervised, on CPU).

The tiny preset needs a teacher that knows the task, with the branching uncertainty of its
solutions, and a weaker student that already speaks the format: both are fine-tuned on prompts
rendered with the model's chat template and freshly sampled solution paths (so the models learn
the distribution over paths, not one path). The student gets fewer steps than the teacher, so
distillation has something to close.

    python -m eopd_ray.models.pretrain --out runs/tiny-models    # ~3 min on 2 cores, cached

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

from eopd_ray.actors.chat import render_prompt
from eopd_ray.data.synthetic_math import PROMPT_SUFFIX, Problem, generate_problems, sample_solution
from eopd_ray.models.tiny import build_tiny_pair
from eopd_ray.models.tokenizer import IM_END

_MARKER = "pretrain.json"


@dataclass(frozen=True)
class PretrainSettings:
    seed: int = 0
    num_problems: int = 2000
    teacher_steps: int = 200
    student_steps: int = 40
    batch_size: int = 32
    lr: float = 3e-3
    version: int = 1  # bump when the task or the recipe changes, to invalidate caches


def sft(
    model_dir: Path, problems: list[Problem], *, steps: int, batch_size: int, lr: float, seed: int
) -> dict[str, float]:
    """Fine-tune the model in ``model_dir`` in place on (prompt, sampled solution) pairs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / max(steps, 1))
    )
    rng = random.Random(seed)
    prompts = {
        p.problem: render_prompt(tokenizer, p.problem, "model", PROMPT_SUFFIX) for p in problems
    }
    end = tokenizer.convert_tokens_to_ids(IM_END)
    pad = tokenizer.pad_token_id
    losses: list[float] = []
    for _ in range(steps):
        rows = []
        for problem in rng.sample(problems, batch_size):
            prompt = prompts[problem.problem]
            response = tokenizer.encode(sample_solution(problem, rng), add_special_tokens=False)
            rows.append((prompt, [*response, end]))
        length = max(len(p) + len(r) for p, r in rows)
        ids = torch.full((batch_size, length), pad, dtype=torch.long)
        labels = torch.full((batch_size, length), -100, dtype=torch.long)
        attention = torch.zeros((batch_size, length), dtype=torch.long)
        for i, (prompt, response) in enumerate(rows):
            seq = prompt + response
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, len(prompt) : len(seq)] = torch.tensor(response)  # loss on the answer only
            attention[i, : len(seq)] = 1
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
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
    problems = generate_problems(settings.num_problems, settings.seed)
    common = {"batch_size": settings.batch_size, "lr": settings.lr, "seed": settings.seed}
    report = {
        "teacher": sft(teacher_dir, problems, steps=settings.teacher_steps, **common),
        "student": sft(student_dir, problems, steps=settings.student_steps, **common),
    }
    report["seconds"] = time.perf_counter() - started
    marker.write_text(json.dumps({"settings": asdict(settings), "report": report}, indent=1))
    return teacher_dir, student_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/tiny-models"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher-steps", type=int, default=PretrainSettings.teacher_steps)
    parser.add_argument("--student-steps", type=int, default=PretrainSettings.student_steps)
    args = parser.parse_args()
    settings = PretrainSettings(
        seed=args.seed, teacher_steps=args.teacher_steps, student_steps=args.student_steps
    )
    teacher, student = prepare_tiny_models(args.out, settings)
    print(json.loads((args.out / _MARKER).read_text())["report"])
    print(f"teacher: {teacher}\nstudent: {student}")


if __name__ == "__main__":
    main()
