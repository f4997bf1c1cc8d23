"""The GPU check's pure parts on CPU (the runs themselves need a GPU: scripts/gpu_check.sh)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from gpu_check import format_report, summarize, weight_bytes  # noqa: E402


def _row(mismatch: float, sync: float, tokens: float) -> dict[str, float]:
    return {
        "train/logprob_mismatch_max": mismatch,
        "time/sampler_busy_s": 1.0,
        "time/teacher_busy_s": 0.5,
        "time/learner_s": 2.0,
        "time/sync_s": sync,
        "time/wait_for_batch_s": 1.5,
        "time/iteration_s": 4.0,
        "time/trained_tokens_per_s": tokens,
    }


def test_summary_takes_the_worst_mismatch_and_steady_means() -> None:
    rows = [_row(0.5, 9.0, 10.0), _row(0.01, 0.2, 100.0), _row(0.02, 0.4, 300.0)]
    out = summarize(rows, warmup=1)
    assert out["mismatch_max"] == 0.5  # every row counts for the mismatch
    assert abs(out["weight sync"] - 0.3) < 1e-12
    assert out["tokens_per_s"] == 200.0 and out["learner"] == 2.0


def test_report_puts_the_sync_next_to_a_copy_of_the_same_bytes() -> None:
    runs = {"CUDA graphs on": summarize([_row(1e-3, 0.2, 500.0)], 0),
            "CUDA graphs off": summarize([_row(2e-3, 0.3, 400.0)], 0)}  # fmt: skip
    text = format_report(runs, weight_bytes=2**30, copy_s=0.002)
    assert "| log-prob mismatch, max |Δ| (bf16) | 1.00e-03 | 2.00e-03 |" in text
    assert "| trained tokens/s | 500 | 400 |" in text
    assert "weights: 1024 MiB; sync 0.200 s/iteration" in text and "(100x)" in text


def test_weight_bytes_counts_parameters_in_bf16(tmp_path: Path) -> None:
    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5)}, str(tmp_path / "model.safetensors"))
    assert weight_bytes(tmp_path) == (12 + 5) * 2


def test_the_script_and_preset_are_ready(tmp_path: Path) -> None:
    from eopd_ray.config import load_config

    config = load_config(REPO / "configs" / "gpu-check.yaml")
    assert config.learner.use_gpu and config.sampler.num_gpus > 0
    assert not config.sampler.enforce_eager  # CUDA graphs on in the preset
    assert subprocess.run(["bash", "-n", str(REPO / "scripts" / "gpu_check.sh")]).returncode == 0
