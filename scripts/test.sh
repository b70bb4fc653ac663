#!/usr/bin/env bash
# Install the package with its test extra into .venv (once) and run the whole test suite.
#   scripts/test.sh [pytest args...]      e.g. scripts/test.sh -k prepare
# Tests that need ../shared/corpus skip when it is absent, except under CI=true (then they fail).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TEST_VENV:-.venv}"
if [ ! -x "$VENV/bin/pytest" ] || ! "$VENV/bin/python" -c "import poetry_gpt" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e '.[test]'
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
export PATH="$PWD/$VENV/bin:$PATH"
exec "$VENV/bin/python" -m pytest -q tests "$@"
