"""Throughput of the evaluation pool on a tiny model: 1 vs 2 evaluation actors, side by side.

    .venv/bin/python benchmarks/eval.py [--problems 32] [--samples 8] [--max-tokens 64]
                                        [--entropy 0] [--model PATH]

Evaluates the first ``--problems`` MATH-500 problems with ``--samples`` responses each (the
paper's sampling settings otherwise: temperature 1.0, top-p 0.8, the model's chat template) on the
tiny teacher (``runs/tiny-models/teacher`` when ``make run`` has built it, else a freshly built
untrained one), once with 1 actor and once with 2, in one local Ray. Actor start-up and one
warm-up call per actor are left out. Prints problems/s, samples/s and generated tokens/s of the
pool, and the share of the actors' busy time spent in vLLM generate (the rest: decoding and
math-verify scoring, and the entropy forward pass with ``--entropy N``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from eopd_ray.config import validate
from eopd_ray.eval.benchmarks import EvalProblem, load_benchmark
from eopd_ray.eval.config import BenchmarkSpec, EvalConfig
from eopd_ray.eval.evaluator import EvalPool

REPO = Path(__file__).resolve().parents[1]


def tiny_teacher(root: Path) -> Path:
    trained = REPO / "runs" / "tiny-models" / "teacher"
    if (trained / "config.json").is_file():
        return trained
    from eopd_ray.models.tiny import build_tiny_pair

    return build_tiny_pair(root, seed=0)[0]


def measure(config: EvalConfig, problems: list[EvalProblem]) -> dict[str, Any]:
    """Start the pool (not timed), warm each actor up, then time the whole benchmark."""
    pool = EvalPool(config, config.checkpoints[0])
    try:
        import ray

        ray.get([actor.evaluate.remote("warmup", problems[:1]) for actor in pool.actors])
        warm = pool.stats()
        per_call = config.actors.problems_per_call
        chunks = [problems[i : i + per_call] for i in range(0, len(problems), per_call)]
        started = time.perf_counter()
        records = [record for batch in pool.imap("math500", chunks) for record in batch]
        elapsed = time.perf_counter() - started
        stats = pool.stats()
    finally:
        pool.shutdown()
    tokens = sum(n for r in records for n in r.get("lengths", []))
    samples = sum(len(r.get("lengths", [])) for r in records)
    busy = sum(s["busy_s"] for s in stats) - sum(s["busy_s"] for s in warm)
    generate = sum(s["generate_s"] for s in stats) - sum(s["generate_s"] for s in warm)
    return {
        "seconds": elapsed,
        "problems/s": len(records) / elapsed,
        "samples/s": samples / elapsed,
        "tokens/s": tokens / elapsed,
        "mean response tokens": tokens / max(samples, 1),
        "generate share of busy": generate / busy if busy else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--entropy", type=int, default=0, help="samples per problem measured")
    parser.add_argument("--problems-per-call", type=int, default=8)
    parser.add_argument("--model", help="checkpoint folder (default: the tiny teacher)")
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as root:
        model = Path(args.model) if args.model else tiny_teacher(Path(root))
        problems, _ = load_benchmark(
            BenchmarkSpec(name="math500", source="math500", limit=args.problems)
        )
        results = {}
        for actors in (1, 2):
            data = {
                "dtype": "float32",
                "checkpoints": [{"name": "model", "path": str(model)}],
                "benchmarks": [{"name": "math500", "source": "math500"}],
                "sampling": {
                    "samples": args.samples,
                    "max_tokens": args.max_tokens,
                    "max_prompt_tokens": 900,
                },
                "actors": {"num_actors": actors, "problems_per_call": args.problems_per_call},
                "entropy": {"samples_per_problem": args.entropy},
            }
            results[actors] = measure(validate(data, "benchmark", EvalConfig), problems)
    ray.shutdown()

    print(
        f"model {model}; {args.problems} MATH-500 problems x {args.samples} samples, "
        f"max {args.max_tokens} tokens, entropy on {args.entropy} sample(s)/problem"
    )
    print("| metric | 1 actor | 2 actors |\n|---|---|---|")
    for key in results[1]:
        print(f"| {key} | {results[1][key]:.3f} | {results[2][key]:.3f} |")
    print(
        f"| speed-up (problems/s) | | {results[2]['problems/s'] / results[1]['problems/s']:.2f}x |"
    )


if __name__ == "__main__":
    main()
