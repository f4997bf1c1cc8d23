"""Entry points of the toy experiment: every run, then ``results.json`` and the figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eopd_ray.toy.config import OBJECTIVES, SCENARIOS, ToyConfig
from eopd_ray.toy.figures import plot_figures
from eopd_ray.toy.simulate import Traces, simulate
from eopd_ray.toy.summary import settings_record, summarise

__all__ = ["RESULTS_NAME", "compute_results", "run_toy"]

RESULTS_NAME = "results.json"


def compute_results(config: ToyConfig) -> tuple[dict[str, Any], Traces]:
    """Run every scenario, objective and seed; return (results dict, traces for the figures)."""
    traces: Traces = {}
    results: dict[str, Any] = {}
    for scenario in SCENARIOS:
        temperature = config.temperature(scenario)
        results[scenario] = {}
        for objective in OBJECTIVES:
            runs = [simulate(config, seed, temperature, objective) for seed in config.seeds]
            traces[scenario, objective] = runs
            results[scenario][objective] = summarise(runs, config)
    results["settings"] = settings_record(config)
    return results, traces


def run_toy(config: ToyConfig, out_dir: Path) -> dict[str, Any]:
    """Run the toy, write ``results.json`` and both figures to ``out_dir``; return the results."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results, traces = compute_results(config)
    (out_dir / RESULTS_NAME).write_text(
        json.dumps(results, indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    plot_figures(traces, config, out_dir)
    return results
