"""Train the tiny models' byte-level BPE tokenizer on the synthetic math corpus and save it.

Generates ``--problems`` problems with ``--seed``, samples one solution each, trains the tokenizer
of ``eopd_ray.models.tokenizer`` on the prompt + solution texts and saves ``tokenizer.json`` +
``tokenizer_config.json`` to ``--out``. Run from the repository root:

    .venv/bin/python scripts/tokenizer.py --help
    .venv/bin/python scripts/tokenizer.py --out runs/tiny-tokenizer
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from eopd_ray.data.synthetic_math.corpus import corpus_texts
from eopd_ray.data.synthetic_math.problems import generate_problems
from eopd_ray.models.tokenizer import save_tokenizer, train_tokenizer


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--vocab-size", type=int, default=768)
    parser.add_argument("--problems", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    texts = corpus_texts(generate_problems(args.problems, args.seed), seed=args.seed)
    tokenizer = train_tokenizer(texts, args.vocab_size)
    save_tokenizer(tokenizer, args.out)
    print(f"saved a {len(tokenizer)}-token tokenizer to {args.out}")


if __name__ == "__main__":
    main()
