"""eopd-ray against Hugging Face TRL's on-policy distillation, same pair, same machine, one run.

    .venv/bin/pip install -e '.[bench]'          # TRL 1.16.0 (make bench-peers does this)
    .venv/bin/python benchmarks/peers.py [--pair tiny|smollm2] [--steps N] [--extra 'k=v ...']
    .venv/bin/python benchmarks/peers.py --pair smollm2 --steps 3 --warmup-steps 1 \\
        --eval-override 'benchmarks=[{name: math500, source: math500, limit: 16}]'

Runs one after the other, each as a process of its own in its own session: ``eopd-ray train``
on the pair's preset (``configs/tiny.yaml`` / ``configs/smollm2.yaml``), each ``--extra`` set of
overrides as another eopd-ray row, then TRL's ``DistillationTrainer`` (``peers_trl.py``) with the
settings :func:`peers_measure.trl_settings` derives from the same preset; then one ``eopd-ray
eval`` job (``configs/eval-tiny.yaml`` / ``eval-smollm2.yaml``, with their ``teacher:`` section)
over every final checkpoint, so both systems are scored by the same code. Prints a Markdown table
(trained response tokens/s after ``--warmup-steps``, start-up = launch to the end of the first
trained batch, wall, peak summed RSS and PSS of the process tree sampled every
``--sample-s``, held-out reverse KL and top-k forward KL to the teacher, Avg@n) with eopd-ray / TRL
ratios, and eopd-ray's per-stage seconds per iteration. Everything goes to
``runs/bench-peers/<pair>-<time>/`` (``results.json``, logs).

What is the same: teacher, student, float32, prompts and their order (``data.train`` of the
preset, rendered with the student's chat template, prompts longer than
``rollout.max_prompt_tokens`` dropped as ``eopd-ray train`` drops them), rollouts per optimizer
step (``rollout.mini_batch_prompts x samples_per_prompt``; each prompt repeated
``samples_per_prompt`` times for TRL, which samples one completion per row), micro-batch,
``max_response_tokens``, temperature 1 / top_p 1, lr, warmup and cosine schedule, AdamW
betas / weight decay, gradient clipping, seed, optimizer steps. Where they differ:

- objective: TRL ``beta=1`` is the exact reverse KL summed over the full vocabulary at every
  completion position (teacher and student forward in the trainer); ours is EOPD: PPO-clipped
  reverse-KL policy gradient on the sampled token (``clip_eps``) plus the forward KL over the
  teacher's top-k where its entropy > tau;
- sampling: TRL generates with ``model.generate`` once per optimizer step (its vLLM path targets
  CUDA), strictly on-policy; ours samples ``batch_prompts`` prompts per iteration in vLLM and
  takes ``batch_prompts / mini_batch_prompts`` optimizer steps on them (later steps are slightly
  off-policy, which the clipping handles);
- processes: TRL is one process (student, teacher, optimizer); ours is a driver, a local Ray (GCS,
  raylet, dashboard), a vLLM sampler actor, a Ray Serve teacher replica, a DeepSpeed learner;
- threads: TRL's torch uses ``--trl-threads`` (default: torch's own default, the physical cores);
  ours what the preset gives each role (``learner.num_threads``, ``sampler.num_cpus``, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from peers_measure import (
    GIB,
    format_stages,
    format_table,
    ratio_row,
    snapshot,
    stage_means,
    startup_s,
    steady_tokens_per_s,
    tree_members,
    tree_memory,
    trl_settings,
    with_memory,
)

REPO = Path(__file__).resolve().parents[1]
PAIRS = {
    "tiny": ("configs/tiny.yaml", "configs/eval-tiny.yaml"),
    "smollm2": ("configs/smollm2.yaml", "configs/eval-smollm2.yaml"),
}
BIN = Path(sys.executable).parent


def monitored(cmd: list[str], log: Path, rows_file: Path, sample_s: float) -> dict[str, Any]:
    """Run ``cmd`` in a session of its own; sample its tree's memory every ``sample_s`` and note
    when each new line of ``rows_file`` appears. Raises RuntimeError when it fails."""
    launch = time.time()
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        peak_rss = peak_pss = procs = 0
        names: Counter[str] = Counter()
        arrivals: list[float] = []
        try:
            while True:
                done = proc.poll() is not None
                snap = snapshot()
                members = tree_members(snap, proc.pid)
                rss, pss = tree_memory(with_memory(snap, members), members)
                if rss > peak_rss:
                    peak_rss, procs = rss, len(members)
                    names = Counter(p.name for p in snap if p.pid in members)
                peak_pss = max(peak_pss, pss)
                if rows_file.is_file():
                    seen = sum(1 for line in rows_file.read_text().splitlines() if line.strip())
                    arrivals += [time.time()] * (seen - len(arrivals))
                if done:
                    break
                time.sleep(sample_s)
        finally:
            if proc.poll() is None:  # interrupted: stop the run's process group, not more
                os.killpg(proc.pid, signal.SIGTERM)
    if proc.returncode:
        raise RuntimeError(f"{cmd[0]} failed (exit {proc.returncode}); see {log}")
    return {
        "launch": launch,
        "wall_s": time.time() - launch,
        "peak_rss_gib": peak_rss / GIB,
        "peak_pss_gib": peak_pss / GIB,
        "procs": procs,
        "names_at_peak": dict(names),
        "arrivals": arrivals,
    }


def training_prompts(config: Any, rows_needed: int) -> list[dict[str, Any]]:
    """The first ``rows_needed`` TRL rows: our prompt stream's order, each prompt repeated
    ``samples_per_prompt`` times, as conversational ``prompt`` messages."""
    from transformers import AutoTokenizer

    from eopd_ray.actors.chat import build_query
    from eopd_ray.data.prompts import PromptStream, load_prompts
    from eopd_ray.train import render_requests

    # the rows eopd-ray trains on, filtered exactly as `eopd-ray train` filters them
    requests, _ = render_requests(config, AutoTokenizer.from_pretrained(config.student.path))
    used = {prompt_id for prompt_id, _, _ in requests}
    kept = [row for row in load_prompts(config.data, config.seed).rows if row.prompt_id in used]
    samples = config.rollout.samples_per_prompt
    stream = PromptStream(kept, epochs=10**6, seed=config.seed)  # TRL needs no epoch end
    rows = []
    for row in stream.take(-(-rows_needed // samples)):
        query = build_query(row.problem, config.data.prompt_suffix)
        rows += [{"prompt": [{"role": "user", "content": query}]}] * samples
    return rows[:rows_needed]


def run_ours(
    preset: str, overrides: list[str], steps: int, args: argparse.Namespace, out: Path, label: str
) -> dict[str, Any]:
    """One ``eopd-ray train`` run; its throughput from metrics rows' arrival times."""
    from eopd_ray.config import load_config
    from eopd_ray.metrics import read_metrics

    config = load_config(REPO / preset, overrides)
    per_it = config.rollout.batch_prompts // config.rollout.mini_batch_prompts
    if steps % per_it:
        raise SystemExit(f"--steps {steps} is not a multiple of {per_it} steps per iteration")
    iterations, warmup = steps // per_it, max(1, -(-args.warmup_steps // per_it))
    run_dir = out / label
    cmd = [
        str(BIN / "eopd-ray"),
        "train",
        str(REPO / preset),
        *overrides,
        f"output_dir={run_dir}",
        f"pipeline.iterations={iterations}",
        f"pipeline.checkpoint_every={iterations}",
    ]
    print(f"[peers] {label}: {' '.join(cmd[1:])}", flush=True)
    m = monitored(cmd, out / f"{label}.log", run_dir / "metrics.jsonl", args.sample_s)
    rows = read_metrics(run_dir / "metrics.jsonl")
    tokens = [r["train/num_tokens"] for r in rows]
    stages = stage_means(rows, warmup)
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "system": f"eopd-ray {' '.join(overrides)}".strip(),
        "checkpoint": summary["final_checkpoint"],
        "tokens_per_s": steady_tokens_per_s(m["arrivals"], tokens, warmup),
        "tokens_per_s_timers": sum(tokens[warmup:])
        / sum(r["time/iteration_s"] for r in rows[warmup:]),
        "startup_s": startup_s(m["launch"], m["arrivals"]),
        "stages": stages,
        **{k: m[k] for k in ("wall_s", "peak_rss_gib", "peak_pss_gib", "procs", "names_at_peak")},
    }


def run_trl(preset: str, steps: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """``peers_trl.py`` on the preset's settings; its throughput from its per-step log."""
    from eopd_ray.config import load_config

    config = load_config(REPO / preset)
    rollout = config.rollout
    per_step = rollout.mini_batch_prompts * rollout.samples_per_prompt
    per_batch = rollout.batch_prompts // rollout.mini_batch_prompts  # steps in our first batch
    prompts = out / "trl-prompts.jsonl"
    rows = training_prompts(config, steps * per_step)
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    trl_dir = out / "trl"
    settings = {
        "student": str(config.student.path),
        "teacher": str(config.teacher.path),
        "prompts": str(prompts),
        "threads": args.trl_threads or _default_torch_threads(),
        "final_dir": str(trl_dir / "final"),
        "steps_file": str(trl_dir / "steps.jsonl"),
        "config": trl_settings(config, steps, str(trl_dir / "trainer")),
    }
    trl_dir.mkdir(parents=True, exist_ok=True)
    (trl_dir / "settings.json").write_text(json.dumps(settings, indent=1))
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "peers_trl.py"),
        str(trl_dir / "settings.json"),
    ]
    print(f"[peers] trl: {' '.join(cmd[1:])}", flush=True)
    m = monitored(cmd, out / "trl.log", trl_dir / "steps.jsonl", args.sample_s)
    log = [json.loads(line) for line in (trl_dir / "steps.jsonl").read_text().splitlines()]
    times, tokens = [r["time"] for r in log], [r["tokens"] for r in log]
    kept = log[args.warmup_steps :]
    gen = sum(r["generate_s"] for r in kept) / len(kept)
    step = (times[-1] - times[args.warmup_steps - 1]) / len(kept)
    return {
        "system": "TRL DistillationTrainer",
        "checkpoint": settings["final_dir"],
        "tokens_per_s": steady_tokens_per_s(times, tokens, args.warmup_steps),
        "startup_s": startup_s(m["launch"], times, per_batch),
        "stages": {
            "generate": gen,
            "rest of step (teacher+student fwd/bwd, AdamW)": step - gen,
            "step": step,
        },
        "settings": settings,
        **{k: m[k] for k in ("wall_s", "peak_rss_gib", "peak_pss_gib", "procs", "names_at_peak")},
    }


def _default_torch_threads() -> int:
    """torch's default intra-op thread count on this machine (without importing torch here)."""
    code = "import torch; print(torch.get_num_threads())"
    return int(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
    )


def run_eval(
    eval_preset: str, named: dict[str, str], out: Path, with_start: str | None, overrides: list[str]
) -> dict:
    """One ``eopd-ray eval`` job over ``named`` checkpoints: name -> its benchmark summary."""
    if with_start:
        named = {"start": with_start, **named}
    listed = ", ".join(f"{{name: {n}, path: {p}}}" for n, p in named.items())
    cmd = [
        str(BIN / "eopd-ray"),
        "eval",
        str(REPO / eval_preset),
        f"checkpoints=[{listed}]",
        f"output_dir={out / 'eval'}",
        *overrides,
    ]
    print(f"[peers] eval: {' '.join(cmd[1:])}", flush=True)
    with (out / "eval.log").open("w") as log:
        subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
    results = json.loads((out / "eval" / "results.json").read_text())
    return {
        name: next(iter(by_bench.values())) for name, by_bench in results["checkpoints"].items()
    }


def add_eval(result: dict[str, Any], summary: dict[str, Any]) -> None:
    ref = summary.get("teacher_ref") or {}
    result |= {
        "rkl": ref.get("rkl_per_token"),
        "fkl": ref.get("fkl_per_token"),
        "avg_at_n": summary.get("avg_at_k"),
    }


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pair", choices=sorted(PAIRS), default="tiny")
    p.add_argument("--steps", type=int, help="optimizer steps (default: tiny 24, smollm2 6)")
    p.add_argument("--warmup-steps", type=int, help="left out of tokens/s (tiny 4, smollm2 1)")
    p.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="'k=v ...'",
        help="another eopd-ray row with these overrides (repeatable)",
    )
    p.add_argument("--trl-threads", type=int, default=0, help="0: torch's default")
    p.add_argument("--sample-s", type=float, default=0.5, help="memory sampling interval")
    p.add_argument(
        "--eval-override",
        action="append",
        default=[],
        metavar="k=v",
        help="override of the eval preset (repeatable)",
    )
    p.add_argument("--with-start", action="store_true", help="evaluate the initial student too")
    p.add_argument("--skip-trl", action="store_true", help="eopd-ray rows only")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench-peers")
    args = p.parse_args()
    args.steps = args.steps or {"tiny": 24, "smollm2": 6}[args.pair]
    args.warmup_steps = args.warmup_steps or {"tiny": 4, "smollm2": 1}[args.pair]
    if not 1 <= args.warmup_steps < args.steps:
        p.error(f"need 1 <= --warmup-steps < --steps, got {args.warmup_steps}, {args.steps}")
    return args


def main() -> None:
    args = parse_args()
    preset, eval_preset = PAIRS[args.pair]
    out = args.out / f"{args.pair}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True)
    variants = [[], *(extra.split() for extra in args.extra)]
    results = [
        run_ours(preset, v, args.steps, args, out, f"ours{i}") for i, v in enumerate(variants)
    ]
    if not args.skip_trl:
        results.append(run_trl(preset, args.steps, args, out))
    named = {f"r{i}": r["checkpoint"] for i, r in enumerate(results)}
    start = None
    if args.with_start:
        from eopd_ray.config import load_config

        start = str(load_config(REPO / preset).student.path)
    summaries = run_eval(eval_preset, named, out, start, args.eval_override)
    for name, r in zip(named, results, strict=True):
        add_eval(r, summaries[name])
    rows = list(results)
    if "start" in summaries:
        rows.append({"system": "student before training"})
        add_eval(rows[-1], summaries["start"])
    peer = results[-1] if not args.skip_trl else None
    ratios = [ratio_row(r, peer) for r in results[:-1]] if peer else []
    (out / "results.json").write_text(
        json.dumps(
            {"args": vars(args) | {"out": str(args.out)}, "results": rows}, indent=1, default=str
        )
    )
    print(
        f"\npair {args.pair}, {args.steps} optimizer steps, tokens/s after {args.warmup_steps}; "
        f"{os.cpu_count()} CPUs; {out}\n"
    )
    print(format_table(rows, ratios))
    print()
    for r in results:
        label = r["system"]
        print(
            format_stages(label, r["stages"])
            if "iteration" in r["stages"]
            else f"{label}: " + ", ".join(f"{k} {v:.2f}s" for k, v in r["stages"].items())
        )


if __name__ == "__main__":
    main()
