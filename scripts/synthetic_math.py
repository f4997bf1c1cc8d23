"""Write the synthetic math task to a JSONL file and print its branching statistics.

Generates ``--n`` problems with ``--seed`` (``eopd_ray.data.synthetic_math``), optionally writes
them to ``--out`` (fields ``problem``, ``answer``, ``family``, ``operands``, ``solution``), trains
the tiny models' tokenizer on the task and prints the ideal next-token entropy profile of the
solutions under it (about 13% of solution positions above 0.8 nats for the ideal model of the
corpus; the paper's teacher shows 15-20%). Run from the repository root:

    .venv/bin/python scripts/synthetic_math.py --help
    .venv/bin/python scripts/synthetic_math.py --n 512 --seed 0 --out data/synthetic.jsonl
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from eopd_ray.data.synthetic_math.branching import measure_branching, pooled_branching
from eopd_ray.data.synthetic_math.corpus import corpus_texts, write_jsonl
from eopd_ray.data.synthetic_math.problems import generate_problems
from eopd_ray.models.tokenizer import train_tokenizer


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=512, help="number of problems")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSONL file to write")
    parser.add_argument("--threshold", type=float, default=0.8)
    args = parser.parse_args(argv)
    problems = generate_problems(args.n, args.seed)
    if args.out is not None:
        print(f"wrote {write_jsonl(args.out, problems, seed=args.seed)}")

    tokenizer = train_tokenizer(corpus_texts(problems, solutions_per_problem=4, seed=args.seed))
    backend = tokenizer.backend_tokenizer
    pooled = pooled_branching(
        measure_branching(
            p, lambda t: backend.encode(t, add_special_tokens=False).ids, threshold=args.threshold
        )
        for p in problems
    )
    print(
        f"ideal next-token entropy over solution positions ({len(tokenizer)}-token BPE): "
        f"> {args.threshold} nats at {pooled.share_above:.1%}, zero at {pooled.share_zero:.1%}, "
        f"mean {pooled.mean_entropy:.3f} nats, {pooled.positions / len(problems):.1f} positions"
    )


if __name__ == "__main__":
    main()
