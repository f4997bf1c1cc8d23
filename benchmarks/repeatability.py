"""Does a seeded run repeat exactly on one machine? Two identical runs per mode, side by side.

    .venv/bin/python benchmarks/repeatability.py                      # tiny preset, 6 iterations
    .venv/bin/python benchmarks/repeatability.py --config configs/tiny.yaml --iterations 8

For each mode, ``eopd-ray train CONFIG`` runs twice with the same seed at η = 0 (the CLI, as a
user runs it; separate processes and Ray sessions), then the two ``metrics.jsonl`` are compared
iteration by iteration. Modes: ``batched`` (the preset's teacher batching) and ``single``
(``teacher_service.max_batch_size=1``). Prints, per mode and metric, the largest difference and
the first iteration that differs (``-`` when none does), and each mode's seconds per iteration.

Why two modes: the batch is assembled in admission order and vLLM's sampling is seeded per
prompt and sample, so what is left is the teacher's batched prefill, whose results depend on the
padded batch shape at the 1e-6 level (which rollouts Serve puts in one batch depends on timing);
such differences reach the gradients, and after enough steps the sampled tokens.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

METRICS = ("train/loss", "train/reverse_kl", "rollout/response_len_mean")
MODES = {"batched": [], "single": ["teacher_service.max_batch_size=1"]}


def run(config: str, out: Path, iterations: int, extra: list[str]) -> list[dict[str, float]]:
    """One ``eopd-ray train`` run; its metrics rows."""
    command = [sys.executable, "-m", "eopd_ray.cli", "train", config]
    command += [f"pipeline.iterations={iterations}", f"output_dir={out}", "--no-progress", *extra]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"repeatability: {' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def difference(a: list[dict[str, float]], b: list[dict[str, float]], key: str) -> tuple[float, str]:
    """(largest |a - b| over iterations, first differing iteration or '-')."""
    pairs = [(x.get(key, 0.0), y.get(key, 0.0)) for x, y in zip(a, b, strict=True)]
    first = next((str(i) for i, (x, y) in enumerate(pairs) if x != y), "-")
    return max(abs(x - y) for x, y in pairs), first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--iterations", type=int, default=6)
    args = parser.parse_args()
    print("| mode | metric | max abs difference | first differing iteration | s / iteration |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for mode, extra in MODES.items():
            folders = [Path(tmp) / f"{mode}-{r}" for r in "ab"]
            a, b = (run(args.config, folder, args.iterations, extra) for folder in folders)
            seconds = statistics.mean(r["time/iteration_s"] for r in a[1:] + b[1:])
            for key in METRICS:
                diff, first = difference(a, b, key)
                print(f"| {mode} | {key} | {diff:.3g} | {first} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
