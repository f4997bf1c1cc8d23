#!/usr/bin/env bash
# The GPU check (issue #16), on ONE CUDA GPU, in under ~8 minutes, no hub access:
#   bash scripts/gpu_check.sh [OUT]         # default OUT: runs/gpu-check
# Builds a Qwen3-shaped pair (~110M / ~14M parameters), runs the tests marked `gpu`, then
# `eopd-ray train configs/gpu-check.yaml` with CUDA graphs on and off and `eopd-ray eval` of the
# result, and prints: the sampler vs learner log-prob mismatch at equal versions in bf16, the
# weight-sync time next to a device-to-device copy of the same bytes, tokens/s per stage.
# Needs a Python with the `gpu` extra (CUDA vLLM): PYTHON=/path/to/python to choose it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-runs/gpu-check}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible')"
[ -d "$OUT/models/teacher" ] || "$PY" -m eopd_ray.models.tiny --out "$OUT/models" --sizes check
"$PY" -m pytest -m gpu tests/gpu -q
"$PY" benchmarks/gpu_check.py --out "$OUT"
