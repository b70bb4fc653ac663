#!/usr/bin/env bash
# Run the whole test suite (slow tests included) with the active Python.
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
python -m pytest -q tests "$@"
