"""The GPU check's runs and report (issue #16); ``scripts/gpu_check.sh`` runs it after the tests
marked ``gpu``, on one CUDA GPU:

    python benchmarks/gpu_check.py --out runs/gpu-check [--iterations 8]

Runs ``eopd-ray train configs/gpu-check.yaml`` twice (CUDA graphs on: ``enforce_eager=false``, the
preset; and off), then ``eopd-ray eval`` of the graphs run's final checkpoint against the teacher,
and prints one table: the sampler vs learner log-prob mismatch at equal versions in bf16 (the
largest |Δ| over every token of every iteration), the weight sync's seconds per iteration next to
a device-to-device copy of the same bytes on this GPU, and seconds per iteration per stage and
trained tokens/s (first ``--warmup`` iterations left out). The pure parts (summary, table) are
tested on CPU (``tests/benchmarks/test_gpu_check.py``); the runs need the GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EOPD_RAY = str(Path(sys.executable).with_name("eopd-ray"))
STAGES = {
    "sampler": "time/sampler_busy_s",
    "teacher (forward)": "time/teacher_busy_s",
    "learner": "time/learner_s",
    "weight sync": "time/sync_s",
    "driver wait": "time/wait_for_batch_s",
    "iteration": "time/iteration_s",
}


def summarize(rows: list[dict[str, float]], warmup: int) -> dict[str, float]:
    """A run's figures from its metrics rows: the worst mismatch over all rows; stage means and
    tokens/s over the rows after ``warmup``."""
    steady = rows[warmup:] or rows
    out = {"mismatch_max": max(r.get("train/logprob_mismatch_max", 0.0) for r in rows)}
    for stage, key in STAGES.items():
        out[stage] = sum(r.get(key, 0.0) for r in steady) / len(steady)
    out["tokens_per_s"] = sum(r["time/trained_tokens_per_s"] for r in steady) / len(steady)
    return out


def format_report(runs: dict[str, dict[str, float]], weight_bytes: int, copy_s: float) -> str:
    """The check's table: one column per run."""
    labels = list(runs)
    lines = [
        "| | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
        "| log-prob mismatch, max |Δ| (bf16) | "
        + " | ".join(f"{runs[k]['mismatch_max']:.2e}" for k in labels) + " |",
    ]  # fmt: skip
    for stage in STAGES:
        cells = " | ".join(f"{runs[k][stage]:.3f}" for k in labels)
        lines.append(f"| {stage} s/iteration | {cells} |")
    tokens = " | ".join(f"{runs[k]['tokens_per_s']:.0f}" for k in labels)
    lines.append(f"| trained tokens/s | {tokens} |")
    sync = min(runs[k]["weight sync"] for k in labels)
    lines.append(
        f"\nweights: {weight_bytes / 2**20:.0f} MiB; sync {sync:.3f} s/iteration vs a "
        f"device-to-device copy of the same bytes {copy_s * 1e3:.2f} ms ({sync / copy_s:.0f}x)"
    )
    return "\n".join(lines)


def _cli(*args: str) -> None:
    done = subprocess.run([EOPD_RAY, *args], cwd=REPO, check=False)
    if done.returncode != 0:
        raise SystemExit(f"eopd-ray {args[0]} failed (exit {done.returncode})")


def train(out: Path, eager: bool, iterations: int) -> Path:
    run = out / ("train-eager" if eager else "train-graphs")
    models = out / "models"
    _cli("train", "configs/gpu-check.yaml", f"output_dir={run}",
         f"teacher.path={models / 'teacher'}", f"student.path={models / 'student'}",
         f"sampler.enforce_eager={str(eager).lower()}", f"pipeline.iterations={iterations}",
         "--no-progress")  # fmt: skip
    return run


def evaluate(out: Path, run: Path) -> dict:
    """Teacher-referenced numbers of the run's final checkpoint (eval-tiny's synthetic task)."""
    final = json.loads((run / "summary.json").read_text())["final_checkpoint"]
    _cli("eval", "configs/eval-tiny.yaml", f"output_dir={out / 'eval'}", "dtype=bfloat16",
         f"checkpoints=[{{name: student, path: {final}}}]",
         f"teacher.path={out / 'models' / 'teacher'}", "actors.num_gpus=0.3",
         "benchmarks=[{name: synthetic, source: synthetic, limit: 32}]")  # fmt: skip
    return json.loads((out / "eval" / "results.json").read_text())


def weight_bytes(student: Path) -> int:
    """The student's parameters in bf16 (what the learner broadcasts)."""
    from safetensors import safe_open

    total = 0
    for file in student.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                total += math.prod(f.get_slice(key).get_shape())
    return total * 2


def d2d_copy_s(nbytes: int, repeats: int = 5) -> float:
    """Seconds of one device-to-device copy of ``nbytes`` on this GPU (best of ``repeats``)."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    from eopd_ray.metrics import read_metrics

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"))
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    out = args.out.resolve()
    runs = {}
    for eager in (False, True):
        run = train(out, eager, args.iterations)
        label = "CUDA graphs off" if eager else "CUDA graphs on"
        runs[label] = summarize(read_metrics(run / "metrics.jsonl"), args.warmup)
    results = evaluate(out, out / "train-graphs")
    nbytes = weight_bytes(out / "models" / "student")
    print(format_report(runs, nbytes, d2d_copy_s(nbytes)))
    ref = results["checkpoints"]["student"]["synthetic"].get("teacher_ref", {})
    print(f"eval of the graphs run: reverse KL to the teacher {ref.get('rkl_per_token')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
