"""Synchronous (η = 0) vs asynchronous (η = 1) pipeline on a preset, side by side.

    .venv/bin/python benchmarks/pipeline.py [--iterations 12] [--warmup 2] [key=value ...]
    .venv/bin/python benchmarks/pipeline.py --preset smollm2 --iterations 6 --warmup 1
    .venv/bin/python benchmarks/pipeline.py --blocking-too     # η = 1 also with blocking pushes

Runs ``eopd-ray train configs/<preset>.yaml`` (tiny: the pair is built if missing; smollm2: needs
``eopd-ray models smollm2 --out runs/smollm2``) twice in one local Ray, with
``pipeline.max_staleness`` 0 then 1, and prints per stage the time per iteration and its share of
the iteration's wall time, trained tokens/s, the async/sync ratio and step time / max(stage time)
(1.0 means the stages overlap perfectly). The first ``--warmup`` iterations of each run (start-up
effects) are left out. Stage times are busy times: the sampler's generate calls, the teacher
replicas' batched forwards, the learner's train_batch and the weight push; "teacher (scoring
tasks)" is the scoring tasks' latency from their first request to the teacher to their last
result (Serve queueing included). At η = 1 the weights are published while the learner steps
(``pipeline.overlap_publication``, the default there); ``--blocking-too`` adds a third column, η =
1 with blocking publication, for the side-by-side ratio.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from eopd_ray.config import load_config
from eopd_ray.metrics import read_metrics
from eopd_ray.models.pretrain import prepare_tiny_models
from eopd_ray.train import train

REPO = Path(__file__).resolve().parents[1]
STAGES = {
    "sampler": "time/sampler_busy_s",
    "teacher (forward)": "time/teacher_busy_s",
    "teacher (scoring tasks)": "time/teacher_s",
    "learner": "time/learner_s",
    "weight sync": "time/sync_s",
    "driver wait": "time/wait_for_batch_s",
}
LATENCIES = {"teacher (scoring tasks)", "driver wait"}  # not busy times: not in max(stage)


def models(preset: str) -> tuple[Path, Path]:
    """The preset's (teacher, student): the tiny pair is built if missing, SmolLM2's must exist."""
    if preset == "tiny":
        return prepare_tiny_models(REPO / "runs" / "tiny-models")
    pair = REPO / "runs" / "smollm2"
    if not (pair / "student").is_dir():
        raise SystemExit(f"no {pair}: build it with `eopd-ray models smollm2 --out runs/smollm2`")
    return pair / "teacher", pair / "student"


def run(
    preset: str,
    label: str,
    eta: int,
    iterations: int,
    warmup: int,
    overrides: list[str],
    root: Path,
) -> dict:
    teacher, student = models(preset)
    out = root / label.replace(" ", "-")
    config = load_config(
        REPO / "configs" / f"{preset}.yaml",
        [
            f"teacher.path={teacher}",
            f"student.path={student}",
            f"output_dir={out}",
            f"pipeline.max_staleness={eta}",
            f"pipeline.iterations={iterations}",
            f"pipeline.checkpoint_every={iterations}",
            *overrides,
        ],
    )
    train(config, progress=False)
    rows = read_metrics(out / "metrics.jsonl")[warmup:]
    wall = sum(r["time/iteration_s"] for r in rows)
    stages = {
        name: sum(r.get(key) or 0.0 for r in rows) / len(rows) for name, key in STAGES.items()
    }
    tokens = sum(r["train/num_tokens"] for r in rows)
    return {
        "label": label,
        "step_s": wall / len(rows),
        "stages": stages,
        "tokens_per_s": tokens / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--preset", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--blocking-too", action="store_true", help="η = 1, blocking pushes too")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    variants = [("η=0", 0, []), ("η=1", 1, [])]
    if args.blocking_too:
        variants.append(("η=1 blocking", 1, ["pipeline.overlap_publication=false"]))
    with tempfile.TemporaryDirectory(prefix="eopd-bench-") as root:
        results = [
            run(args.preset, label, eta, args.iterations, args.warmup,
                [*args.overrides, *extra], Path(root))
            for label, eta, extra in variants
        ]  # fmt: skip
    labels = [f"{r['label']} s/it" for r in results]
    w = max(14, *(len(label) + 2 for label in labels))
    header = f"{'stage':<24}" + "".join(f"{label:>{w}}{'share':>8}" for label in labels)
    print(header)
    print("-" * len(header))
    for name in STAGES:
        cells = "".join(
            f"{r['stages'][name]:>{w}.3f}{r['stages'][name] / r['step_s']:>8.0%}" for r in results
        )
        print(f"{name:<24}{cells}")
    print(f"{'step (wall)':<24}" + "".join(f"{r['step_s']:>{w}.3f}{'':>8}" for r in results))
    print()
    for r in results:
        busiest = max(v for k, v in r["stages"].items() if k not in LATENCIES)
        print(
            f"{r['label']}: {r['tokens_per_s']:8.1f} trained tokens/s, "
            f"step / max(stage) = {r['step_s'] / busiest:.2f}"
        )
    print(f"async / sync tokens/s = {results[1]['tokens_per_s'] / results[0]['tokens_per_s']:.2f}x")
    if args.blocking_too:
        ratio = results[1]["tokens_per_s"] / results[2]["tokens_per_s"]
        print(f"η=1 overlapped / blocking publication tokens/s = {ratio:.2f}x")


if __name__ == "__main__":
    main()
