"""``eopd-ray compare CONFIG --variants opd,eopd,... --seeds 0,1,2 [key=value ...]``.

    eopd-ray compare configs/tiny.yaml --variants opd,eopd --seeds 0,1,2
    eopd-ray compare configs/tiny.yaml --variants opd,eopd,kd=configs/tiny-kd.yaml --seeds 0,1 \\
        --out runs/cmp pipeline.iterations=8 --eval-override sampling.samples=4

Trains every (variant, seed) with the same data (``eopd_ray.compare.plan``), one run after another
on this machine, each its own ``eopd-ray train`` process and Ray session
(``eopd_ray.compare.runner``); then one ``eopd-ray eval`` over every run's final checkpoint
(checkpoint names ``V-sS``; ``--eval`` default: ``configs/eval-X.yaml`` for ``configs/X.yaml``);
then writes ``OUT/report.md``, ``OUT/report.json`` and ``OUT/figures/*.png``
(``eopd_ray.compare.report``, ``eopd_ray.compare.figures``). Layout of ``OUT``::

    runs/V-sS/      each run's output_dir (metrics.jsonl, summary.json, checkpoints/)
    logs/V-sS.log   each job's output; logs/eval.log
    eval/           the evaluation job's output_dir (results.json, samples)

Everything is resumable: a finished run is not re-run, an unfinished one resumes from its newest
checkpoint, and the evaluation redoes nothing already scored. Re-running the same command after a
crash or Ctrl-C picks up where it stopped. A run whose iteration count changed (``pipeline.
iterations``) is continued, and its new final checkpoint needs a fresh ``OUT/eval``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eopd_ray.compare.figures import write_figures
from eopd_ray.compare.plan import (
    ComparePlan,
    default_eval_config,
    describe,
    parse_seeds,
    parse_variants,
    plan_compare,
    plan_summary,
)
from eopd_ray.compare.report import build_report, write_outputs
from eopd_ray.compare.runner import Launcher, LocalLauncher, run_jobs, run_training
from eopd_ray.compare.table import load_run
from eopd_ray.config_io import ConfigError

__all__ = ["add_compare_parser", "cmd_compare", "run_compare", "write_compare_report"]


def write_compare_report(plan: ComparePlan, results: dict[str, Any] | None) -> dict[str, Any]:
    """report.json, report.md and the figures of ``plan``'s finished runs (and ``results``)."""
    runs = [load_run(r.variant, r.seed, r.output_dir) for r in plan.runs]
    report = build_report(runs, results, plan.variants, plan.seeds)
    report["plan"] = plan_summary(plan)
    figures = write_figures(report, plan.out / "figures")
    write_outputs(plan.out, report, [str(f) for f in figures])
    return report


def run_compare(
    plan: ComparePlan, launcher: Launcher, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Train, evaluate, report (module docstring); returns what report.json holds."""
    summaries = run_training(plan.runs, launcher, log)
    results = None
    if plan.eval_config is not None:
        checkpoints = {name: s["final_checkpoint"] for name, s in summaries.items()}
        job = plan.eval_job(checkpoints)
        run_jobs([job], launcher, log)
        results = json.loads((plan.out / "eval" / "results.json").read_text())
    return write_compare_report(plan, results)


def cmd_compare(args: argparse.Namespace) -> int:
    """The ``compare`` command: plan (every config checked), run, report; prints where."""
    eval_config = None
    if not args.no_eval:
        eval_config = args.eval or default_eval_config(args.config)
        if eval_config is None:
            raise ConfigError(
                f"no evaluation config for {args.config}: pass --eval EVAL_CONFIG (or --no-eval)"
            )
    out = Path(args.out or f"runs/compare-{Path(args.config).stem}")
    plan = plan_compare(
        args.config,
        parse_variants(args.variants),
        parse_seeds(args.seeds),
        out,
        list(args.overrides),
        eval_config,
        list(args.eval_override),
    )
    print(describe(plan), flush=True)
    started = time.perf_counter()
    # a failed run raises CompareError: one line (exit 1) naming the run and its log
    run_compare(plan, LocalLauncher(), lambda line: print(line, flush=True))
    print((plan.out / "report.md").read_text(), end="")
    took = time.perf_counter() - started
    print(f"wrote {plan.out}/report.md, report.json and figures/ in {took:.0f} s")
    return 0


class _IntermixedParser(argparse.ArgumentParser):
    """Options and ``key=value`` overrides in any order: plain argparse takes no positional after
    the first option (``compare CONFIG --variants opd k=v`` would refuse ``k=v``)."""

    _inner = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._inner:  # parse_known_intermixed_args calls back into parse_known_args
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def add_compare_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``compare`` on the ``eopd-ray`` sub-command parser."""
    cmp = sub.add_parser(
        "compare",
        help="train variants x seeds on the same data, evaluate, report mean ± std (resumable)",
    )
    cmp.__class__ = _IntermixedParser  # add_parser builds the parent's class; this one's parsing
    cmp.add_argument("config", help="YAML preset of every run, e.g. configs/tiny.yaml")
    cmp.add_argument("overrides", nargs="*", metavar="key=value", help="for every run")
    cmp.add_argument(
        "--variants",
        required=True,
        help="comma-separated loss variants; NAME=PRESET.yaml runs that preset (its "
        "loss.variant must be NAME), e.g. opd,eopd,kd=configs/tiny-kd.yaml",
    )
    cmp.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    cmp.add_argument("--eval", help="eval config (default: configs/eval-X.yaml for configs/X.yaml)")
    cmp.add_argument("--no-eval", action="store_true", help="report the training metrics only")
    cmp.add_argument(
        "--eval-override",
        action="append",
        default=[],
        metavar="key=value",
        help="override of the eval config (repeat), e.g. sampling.samples=4",
    )
    cmp.add_argument("--out", help="output folder (default runs/compare-<config name>)")
    cmp.set_defaults(func=cmd_compare)
