#!/usr/bin/env bash
# Creates .venv if needed and installs the project into it.
# The CPU build of torch is installed first, so pip never pulls the multi-GB CUDA build.
# Usage: bash scripts/setup.sh            (runtime dependencies)
#        bash scripts/setup.sh dev        (plus pytest, hypothesis, ruff)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
extra=""
[ "${1:-}" = "dev" ] && extra="[dev]"
# PYTHONWARNINGS: setuptools warns on every editable install of a package with mapped folders
PYTHONWARNINGS=ignore .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extra}"
