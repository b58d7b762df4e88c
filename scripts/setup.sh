#!/usr/bin/env bash
# Installs textdiffusion into the current Python environment.
#   bash scripts/setup.sh         runtime only
#   bash scripts/setup.sh --dev   plus the test and lint tools
# PyTorch: an existing install (for example your own CUDA build) is kept. Without one, a machine
# with no NVIDIA GPU gets the CPU build pinned below, so pip never pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "$PY" -m pip install --quiet torch
  else
    "$PY" -m pip install --quiet "torch==2.13.0" || "$PY" -m pip install --quiet torch
  fi
fi
extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"
"$PY" -m pip install --quiet -e ".${extra}"
