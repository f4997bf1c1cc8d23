"""The runs of a comparison: which (variant, seed) pairs, with which preset and overrides.

``plan_compare`` turns the command line of ``eopd-ray compare`` into :class:`JobSpec` s, checking
every run's config (and the evaluation's) before the first run starts, so a typo costs one line,
not a finished run. Each training job is ``eopd-ray train PRESET loss.variant=V seed=S
output_dir=OUT/runs/V-sS [user overrides]``; every (variant, seed) reads the same data (the seed
decides its order, so seed S is the same prompt stream for every variant).

A variant is ``name`` (the comparison's CONFIG with ``loss.variant=name``) or ``name=PRESET.yaml``
(another preset, whose own ``loss.variant`` must be ``name``: e.g. ``kd=configs/tiny-kd.yaml``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from eopd_ray.config import RunConfig, load_config
from eopd_ray.config_io import ConfigError
from eopd_ray.eval.config import NAME_PATTERN, EvalConfig

# Overrides the comparison sets itself (the layout of OUT and the runs' identity).
_RESERVED = ("loss.variant", "seed", "output_dir")
_RESERVED_EVAL = ("checkpoints", "output_dir")


@dataclass(frozen=True)
class JobSpec:
    """One ``eopd-ray KIND CONFIG key=value ...`` job.

    On one machine :class:`~eopd_ray.compare.runner.LocalLauncher` runs it as
    ``python -m eopd_ray.cli KIND CONFIG OVERRIDES``; on a cluster the same three fields are what
    ``eopd_ray.jobs.submit(client, kind, config, overrides)`` submits as a Ray job."""

    kind: Literal["train", "eval"]
    name: str  # V-sS for a training run, "eval" for the evaluation
    config: str
    overrides: tuple[str, ...]
    log: Path  # where the job's output goes

    def argv(self) -> list[str]:
        """The arguments after ``eopd-ray``."""
        extra = ["--no-progress"] if self.kind == "train" else []
        return [self.kind, self.config, *self.overrides, *extra]


@dataclass(frozen=True)
class RunSpec:
    """One training run of the comparison and what it is expected to leave in ``output_dir``."""

    variant: str
    seed: int
    output_dir: Path
    expected_iterations: int | None  # pipeline.iterations; None: as many as the data gives
    job: JobSpec

    @property
    def name(self) -> str:
        return run_name(self.variant, self.seed)


@dataclass(frozen=True)
class ComparePlan:
    """Every training run (variant-major, then seed) and the evaluation job (None: no eval)."""

    out: Path
    variants: tuple[str, ...]
    seeds: tuple[int, ...]
    runs: tuple[RunSpec, ...]
    eval_config: str | None
    eval_overrides: tuple[str, ...] = field(default=())

    def eval_job(self, checkpoints: dict[str, str]) -> JobSpec:
        """The evaluation of ``checkpoints`` (name -> model folder) into ``OUT/eval``."""
        if self.eval_config is None:
            raise ValueError("this comparison has no evaluation")
        listed = [{"name": name, "path": path} for name, path in checkpoints.items()]
        overrides = (
            f"checkpoints={json.dumps(listed)}",  # JSON is YAML: one flow-style override
            f"output_dir={self.out / 'eval'}",
            *self.eval_overrides,
        )
        return JobSpec("eval", "eval", self.eval_config, overrides, self.out / "logs" / "eval.log")


def run_name(variant: str, seed: int) -> str:
    return f"{variant}-s{seed}"


def parse_variants(text: str) -> dict[str, str | None]:
    """``"opd,kd=configs/tiny-kd.yaml"`` -> ``{"opd": None, "kd": "configs/tiny-kd.yaml"}``."""
    variants: dict[str, str | None] = {}
    for item in text.split(","):
        name, sep, preset = (part.strip() for part in item.partition("="))
        if not name or (sep and not preset):
            raise ConfigError(f"--variants: expected NAME or NAME=PRESET.yaml, got {item!r}")
        if name in variants:
            raise ConfigError(f"--variants: {name} is given twice")
        variants[name] = preset or None
    return variants


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> ``(0, 1, 2)``; each seed once."""
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected comma-separated integers") from None
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds {text!r}: each seed once, none negative")
    return seeds


def default_eval_config(config: str) -> str | None:
    """``configs/X.yaml`` -> ``configs/eval-X.yaml`` when that file exists (tiny, paper)."""
    path = Path(config)
    candidate = path.with_name(f"eval-{path.name}")
    return str(candidate) if candidate.is_file() else None


def _refuse_reserved(overrides: list[str], reserved: tuple[str, ...], what: str) -> None:
    for item in overrides:
        key = item.partition("=")[0]
        if key in reserved or any(key.startswith(r + ".") for r in reserved):
            raise ConfigError(f"{what} {item!r}: {key} is set by eopd-ray compare itself")


def _run_config(
    variant: str, preset: str | None, config: str, seed: int, out: Path, overrides: list[str]
) -> tuple[str, list[str], RunConfig]:
    """(preset, overrides, validated config) of one run; the preset's variant must match."""
    path = preset or config
    if preset is not None:
        own = load_config(preset, list(overrides), base_dir=Path.cwd()).loss.variant
        if own != variant:
            raise ConfigError(
                f"--variants {variant}={preset}: that preset's loss.variant is {own}, not {variant}"
            )
    args = [f"loss.variant={variant}", f"seed={seed}", f"output_dir={out}", *overrides]
    return path, args, load_config(path, args, base_dir=Path.cwd())


def plan_compare(
    config: str,
    variants: dict[str, str | None],
    seeds: tuple[int, ...],
    out: Path,
    overrides: list[str],
    eval_config: str | None,
    eval_overrides: list[str],
) -> ComparePlan:
    """Check every run's config and the evaluation config; returns the plan (nothing runs)."""
    _refuse_reserved(overrides, _RESERVED, "override")
    _refuse_reserved(eval_overrides, _RESERVED_EVAL, "--eval-override")
    out = out.resolve()
    runs = []
    for variant, preset in variants.items():
        if not re.match(NAME_PATTERN, variant):
            raise ConfigError(f"--variants: {variant!r} is not a usable name")
        for seed in seeds:
            name = run_name(variant, seed)
            run_dir = out / "runs" / name
            path, args, resolved = _run_config(variant, preset, config, seed, run_dir, overrides)
            job = JobSpec("train", name, path, tuple(args), out / "logs" / f"{name}.log")
            runs.append(RunSpec(variant, seed, run_dir, resolved.pipeline.iterations, job))
    if eval_config is not None:  # typos in the eval overrides fail here, not after training
        eval_args = [*eval_overrides, f"output_dir={out / 'eval'}"]
        load_config(eval_config, eval_args, model=EvalConfig, base_dir=Path.cwd())
    return ComparePlan(out, tuple(variants), seeds, tuple(runs), eval_config, tuple(eval_overrides))


def describe(plan: ComparePlan) -> str:
    """One line: how many runs of which variants and seeds, and where."""
    evaluation = f", then eval {plan.eval_config}" if plan.eval_config else ", no eval"
    return (
        f"compare: {len(plan.runs)} runs ({', '.join(plan.variants)} x seeds "
        f"{', '.join(map(str, plan.seeds))}){evaluation} -> {plan.out}"
    )


def plan_summary(plan: ComparePlan) -> dict[str, Any]:
    """The plan as JSON-ready data (kept in report.json)."""
    return {
        "variants": list(plan.variants),
        "seeds": list(plan.seeds),
        "runs": {
            r.name: {"config": r.job.config, "overrides": list(r.job.overrides)} for r in plan.runs
        },
        "eval_config": plan.eval_config,
        "eval_overrides": list(plan.eval_overrides),
    }
