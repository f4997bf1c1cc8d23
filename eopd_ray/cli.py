"""The ``eopd-ray`` command line.

    eopd-ray train configs/tiny.yaml [key=value ...] [--address URL]   # distillation run
    eopd-ray generate configs/tiny-kd.yaml [key=value ...] [--out PATH]  # teacher answers (kd)
    eopd-ray toy --out runs/toy                 # the paper's toy experiment (§3.2, Table 1)
    eopd-ray config configs/tiny.yaml loss.tau=1.0   # validate a preset and print it resolved
    eopd-ray tiny-models --out runs/tiny-models  # build + pre-train the tiny pair (cached)
    eopd-ray models smollm2 --out runs/smollm2   # SmolLM2 teacher + pruned, healed student
    eopd-ray eval configs/eval-tiny.yaml [key=value ...] [--address URL]  # evaluation job
    eopd-ray compare configs/tiny.yaml --variants opd,eopd --seeds 0,1  # variants x seeds, report
    eopd-ray submit train|eval CONFIG [key=value ...] --address URL   # a job on a Ray cluster
    eopd-ray jobs list|logs|status|stop [JOB_ID] --address URL        # jobs on that cluster

Bad input (unknown key, wrong type, out-of-range value, missing file) prints one line to stderr
and exits with status 2; a failure inside a role (sampler, teacher, learner, evaluator) prints one
line naming the role and the original exception and exits with status 1. No traceback, except
with ``eopd-ray --debug COMMAND ...``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from eopd_ray.compare.command import add_compare_parser
from eopd_ray.config import load_config
from eopd_ray.config_io import ConfigError, dump_config
from eopd_ray.generate import add_generate_parser


class UsageError(ValueError):
    """Bad command-line input; printed as one line."""


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    return seeds


def _cmd_toy(args: argparse.Namespace) -> int:
    # Imported here so `eopd-ray config` does not pay for numpy/matplotlib start-up.
    from eopd_ray.config import validate
    from eopd_ray.toy import ToyConfig, format_summary, run_toy

    fields = {
        "seeds": args.seeds,
        "steps": args.steps,
        "lr": args.lr,
        "samples_per_step": args.samples_per_step,
        "tau": args.tau,
        "fkl_lr": args.fkl_lr,
    }
    # A bad value is a ConfigError: one line naming each bad option, printed by main().
    config = validate({k: v for k, v in fields.items() if v is not None}, "toy", ToyConfig)
    results = run_toy(config, Path(args.out))
    print(format_summary(results))
    print(f"wrote {Path(args.out) / 'results.json'} and figures")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from eopd_ray.train import train

    config = load_config(args.config, args.overrides, base_dir=Path.cwd())
    summary = train(config, address=args.address, progress=not args.no_progress)
    last = summary["last"]
    # grpo has no teacher to measure a KL against: its reward instead
    grpo = summary["variant"] == "grpo"
    name, key = ("reward", "reward/mean") if grpo else ("reverse KL", "train/reverse_kl")
    print(
        f"done: {summary['iterations']} iterations, checkpoint "
        f"{_shown(summary['final_checkpoint'])}, "
        f"{name} {last[key]}, accuracy {last['rollout/accuracy']}"
    )
    return 0


def _shown(path: str) -> str:
    """``path`` relative to the working directory when it lies below it (what the user typed)."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def _cmd_eval(args: argparse.Namespace) -> int:
    from eopd_ray.eval.config import EvalConfig
    from eopd_ray.eval.job import run_eval

    config = load_config(args.config, args.overrides, model=EvalConfig, base_dir=Path.cwd())
    run_eval(config, address=args.address)
    print(Path(config.output_dir, "results.md").read_text(), end="")
    figures = "pass_at_k.png, entropy.png" + (", teacher_entropy.png" if config.teacher else "")
    print(f"wrote {_shown(config.output_dir)}/results.json, results.md, {figures}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides, base_dir=Path.cwd())
    print(dump_config(config), end="")
    return 0


def _cmd_tiny_models(args: argparse.Namespace) -> int:
    from eopd_ray.models.pretrain import PretrainSettings, prepare_tiny_models

    teacher_dir, student_dir = prepare_tiny_models(Path(args.out), PretrainSettings(seed=args.seed))
    print(f"teacher: {teacher_dir}\nstudent: {student_dir}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    import torch

    from eopd_ray.models.smollm2 import MARKER, SmolLM2Settings, prepare_smollm2

    if args.threads is not None:
        torch.set_num_threads(args.threads)  # 1 is faster when other jobs share the cores
    options = {"seed": args.seed, "heal_steps": args.heal_steps, "eval_prompts": args.eval_prompts}
    settings = dataclasses.replace(
        SmolLM2Settings(), **{k: v for k, v in options.items() if v is not None}
    )
    teacher_dir, student_dir = prepare_smollm2(args.out, settings, progress=not args.no_progress)
    report = json.loads((Path(args.out) / MARKER).read_text())["report"]
    kl = report["kl_per_token"]
    print(
        f"teacher: {teacher_dir} ({report['teacher']['parameters'] / 1e6:.1f}M parameters)\n"
        f"student: {student_dir} ({report['student']['parameters'] / 1e6:.1f}M parameters, "
        f"KL to the teacher {kl['before_healing']:.2f} -> {kl['after_healing']:.2f} nats/token "
        f"after healing)\nreport: {Path(args.out) / MARKER}"
    )
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    from eopd_ray import jobs

    env = jobs.parse_env(args.env)
    client = jobs.Jobs.connect(args.address, args.token)
    job_id = jobs.submit(
        client,
        args.kind,
        args.config,
        args.overrides,
        env=env,
        pip=args.pip,
        python=args.python,
        job_id=args.job_id,
        warn=lambda line: print(line, file=sys.stderr),
    )
    print(f"submitted job {job_id} to {client.address}", flush=True)
    if args.no_wait:
        return 0
    try:
        status = client.follow(job_id, lambda chunk: print(chunk, end="", flush=True))
    except KeyboardInterrupt:
        print(f"\neopd-ray: stopped following; the job goes on (eopd-ray jobs stop {job_id})")
        return 130
    print(f"job {job_id}: {status}")
    return jobs.exit_code(status)


def _cmd_jobs(args: argparse.Namespace) -> int:
    from eopd_ray import jobs

    if args.action != "list" and not args.job_id:
        raise UsageError(f"jobs {args.action}: a JOB_ID is required")
    client = jobs.Jobs.connect(args.address, args.token)
    if args.action == "list":
        print(jobs.format_jobs(client.call(client.client.list_jobs)))
        return 0
    if args.action == "status":
        status = client.status(args.job_id)
        print(status)
        return 0 if status != "FAILED" else 1
    if args.action == "stop":
        stopped = client.call(client.client.stop_job, args.job_id)
        print(f"job {args.job_id}: {'stop requested' if stopped else 'already finished'}")
        return 0
    if args.follow:
        status = client.follow(args.job_id, lambda chunk: print(chunk, end="", flush=True))
        return jobs.exit_code(status)
    print(client.call(client.client.get_job_logs, args.job_id), end="")
    return 0


def _add_cluster_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        help="the cluster's dashboard URL, e.g. http://head:8265 (default $RAY_ADDRESS)",
    )
    parser.add_argument(
        "--token",
        help="cluster token (default: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eopd-ray", description="Entropy-Aware On-Policy Distillation on Ray."
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of a failure")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = (_add_run_commands, add_generate_parser, _add_model_commands, _add_cluster_commands)
    for add in (*commands, add_compare_parser):
        add(sub)
    return parser


def _add_run_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """train, eval, toy, config."""
    run = sub.add_parser("train", help="run (or resume) a distillation job")
    run.add_argument("config", help="YAML preset, e.g. configs/tiny.yaml")
    run.add_argument("overrides", nargs="*", metavar="key=value")
    run.add_argument("--address", help="attach to a running Ray cluster (default: local Ray)")
    run.add_argument("--no-progress", action="store_true", help="no live progress bar")
    run.set_defaults(func=_cmd_train)

    ev = sub.add_parser("eval", help="evaluate checkpoints: Avg@k, Pass@k (resumable)")
    ev.add_argument("config", help="YAML preset, e.g. configs/eval-tiny.yaml")
    ev.add_argument("overrides", nargs="*", metavar="key=value")
    ev.add_argument("--address", help="attach to a running Ray cluster (default: local Ray)")
    ev.set_defaults(func=_cmd_eval)

    toy = sub.add_parser("toy", help="run the toy experiment of the paper (§3.2, Table 1)")
    toy.add_argument("--out", required=True, help="output folder for results.json and figures")
    toy.add_argument("--seeds", type=_seeds, help="comma-separated seeds (default 0,1,2)")
    toy.add_argument("--steps", type=int, help="update steps per run")
    toy.add_argument("--lr", type=float, help="reverse-KL step size eta")
    toy.add_argument("--samples-per-step", type=int, help="samples drawn per step")
    toy.add_argument("--tau", type=float, help="teacher-entropy threshold for the EOPD forward KL")
    toy.add_argument("--fkl-lr", type=float, help="forward-KL step size")
    toy.set_defaults(func=_cmd_toy)

    cfg = sub.add_parser("config", help="validate a config and print it with overrides applied")
    cfg.add_argument("config", help="YAML preset, e.g. configs/tiny.yaml")
    cfg.add_argument("overrides", nargs="*", metavar="key=value")
    cfg.set_defaults(func=_cmd_config)


def _add_model_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """tiny-models, models."""
    tiny = sub.add_parser(
        "tiny-models",
        help="pre-train the offline tiny teacher and prune it into the student (cached)",
    )
    tiny.add_argument("--out", default="runs/tiny-models", help="output folder")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_cmd_tiny_models)

    models = sub.add_parser(
        "models",
        help="convert a real pretrained teacher, prune and heal its student (cached)",
    )
    models.add_argument("name", choices=["smollm2"], help="smollm2: SmolLM2-135M-Instruct")
    models.add_argument("--out", default="runs/smollm2", help="output folder")
    models.add_argument("--seed", type=int)
    models.add_argument("--heal-steps", type=int, help="distillation steps healing the student")
    models.add_argument("--eval-prompts", type=int, help="held-out teacher answers for the KL")
    models.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    models.add_argument("--no-progress", action="store_true", help="no progress bars")
    models.set_defaults(func=_cmd_models)


def _add_cluster_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """submit, jobs."""
    sub_job = sub.add_parser("submit", help="submit a train or eval job to a Ray cluster")
    sub_job.add_argument("kind", choices=["train", "eval"])
    sub_job.add_argument("config", help="YAML preset inside this checkout")
    sub_job.add_argument("overrides", nargs="*", metavar="key=value")
    _add_cluster_args(sub_job)
    sub_job.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="job env var (repeat)"
    )
    sub_job.add_argument(
        "--pip", action="append", default=[], metavar="REQ", help="pip package for the job"
    )
    sub_job.add_argument("--python", default="python", help="interpreter on the cluster")
    sub_job.add_argument("--job-id", help="submission id (default: generated by Ray)")
    sub_job.add_argument("--no-wait", action="store_true", help="print the job id and return")
    sub_job.set_defaults(func=_cmd_submit)

    jobs_cmd = sub.add_parser("jobs", help="list jobs, show logs or status, stop a job")
    jobs_cmd.add_argument("action", choices=["list", "logs", "status", "stop"])
    jobs_cmd.add_argument("job_id", nargs="?", help="submission id (not for list)")
    jobs_cmd.add_argument("--follow", action="store_true", help="logs: follow until the job ends")
    _add_cluster_args(jobs_cmd)
    jobs_cmd.set_defaults(func=_cmd_jobs)


def _jobs_error() -> type[Exception]:
    from eopd_ray.jobs import JobsError  # light: imports Ray only when a command runs

    return JobsError


def main(argv: Sequence[str] | None = None) -> int:
    from eopd_ray.errors import describe_failure

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, UsageError, _jobs_error()) as exc:
        print(f"eopd-ray: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("eopd-ray: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a failure inside the run: one line, the traceback with --debug
        if args.debug:
            raise
        print(f"eopd-ray: error: {describe_failure(exc)}", file=sys.stderr)
        print("eopd-ray: (run again with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
