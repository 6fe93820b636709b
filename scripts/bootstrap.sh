#!/usr/bin/env bash
# Create (or reuse) a virtual environment and install recsys-mt with the given extras.
#
#   scripts/bootstrap.sh [extras]      e.g. scripts/bootstrap.sh dev,docs
#
# torch: if the environment has no torch yet, TORCH_SPEC (default "torch==2.13.0") is installed
# first, from TORCH_INDEX_URL when set (e.g. the PyTorch CPU wheel index, to avoid a multi-GB
# CUDA build on machines without a GPU). An existing torch is kept as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
extras="${1:-}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
py="$VENV/bin/python"
if ! "$py" -c "import torch" >/dev/null 2>&1; then
  echo "[bootstrap] installing ${TORCH_SPEC:-torch==2.13.0}" >&2
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "$py" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}" --index-url "$TORCH_INDEX_URL"
  else
    "$py" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
  fi
fi
hash=$(cat pyproject.toml | cksum | cut -d' ' -f1)
stamp="$VENV/.recsys-mt-installed-${extras//,/_}-$hash"
if [ ! -f "$stamp" ]; then
  echo "[bootstrap] installing recsys-mt${extras:+[$extras]}" >&2
  "$py" -m pip install -q -e ".${extras:+[$extras]}"
  touch "$stamp"
fi
