"""The ``eopd-ray`` command line.

    eopd-ray train configs/tiny.yaml [key=value ...] [--address URL]   # distillation run
    eopd-ray toy --out runs/toy                 # the paper's toy experiment (§3.2, Table 1)
    eopd-ray config configs/tiny.yaml loss.tau=1.0   # validate a preset and print it resolved
    eopd-ray tiny-models --out runs/tiny-models  # build + pre-train the tiny pair (cached)

Bad input (unknown key, wrong type, out-of-range value, missing file) prints one line to stderr
and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from eopd_ray.config import ConfigError, dump_config, load_config


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
    from eopd_ray.toy import ToyConfig, format_summary, run_toy

    fields = {
        "seeds": args.seeds,
        "steps": args.steps,
        "lr": args.lr,
        "samples_per_step": args.samples_per_step,
        "tau": args.tau,
        "fkl_lr": args.fkl_lr,
    }
    try:
        config = ToyConfig(**{k: v for k, v in fields.items() if v is not None})
    except (TypeError, ValueError) as exc:
        raise UsageError(f"toy: {exc}") from None
    results = run_toy(config, Path(args.out))
    print(format_summary(results))
    print(f"wrote {Path(args.out) / 'results.json'} and figures")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from eopd_ray.train import train

    config = load_config(args.config, args.overrides)
    try:
        summary = train(config, address=args.address, progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as exc:  # bad data / models: one line, no traceback
        raise UsageError(str(exc).splitlines()[0]) from None
    last = summary["last"]
    print(
        f"done: {summary['iterations']} iterations, checkpoint {summary['final_checkpoint']}, "
        f"reverse KL {last['train/reverse_kl']}, accuracy {last['rollout/accuracy']}"
    )
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    print(dump_config(config), end="")
    return 0


def _cmd_tiny_models(args: argparse.Namespace) -> int:
    from eopd_ray.models.pretrain import PretrainSettings, prepare_tiny_models

    teacher_dir, student_dir = prepare_tiny_models(Path(args.out), PretrainSettings(seed=args.seed))
    print(f"teacher: {teacher_dir}\nstudent: {student_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eopd-ray", description="Entropy-Aware On-Policy Distillation on Ray."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("train", help="run (or resume) a distillation job")
    run.add_argument("config", help="YAML preset, e.g. configs/tiny.yaml")
    run.add_argument("overrides", nargs="*", metavar="key=value")
    run.add_argument("--address", help="attach to a running Ray cluster (default: local Ray)")
    run.add_argument("--no-progress", action="store_true", help="no live progress bar")
    run.set_defaults(func=_cmd_train)

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

    tiny = sub.add_parser(
        "tiny-models", help="build and pre-train the offline tiny teacher and student (cached)"
    )
    tiny.add_argument("--out", default="runs/tiny-models", help="output folder")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_cmd_tiny_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, UsageError) as exc:
        print(f"eopd-ray: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("eopd-ray: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
