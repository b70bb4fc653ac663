#!/usr/bin/env bash
# Install the package with its test extra into .venv (once) and run the whole test suite.
#   scripts/test.sh [pytest args...]      e.g. scripts/test.sh -k prepare
# Tests that need ../shared/corpus skip when it is absent, except under CI=true (then they fail).
set -euo pipefail
cd "$(dirname "$0")/.."
# The browser test (tests/test_serve_browser.py) drives Debian's chromium through chromium-driver; under
# CI=true it fails when they are missing. Install them from the distribution (nothing downloads a browser).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
  else
    echo "warning: chromium/chromedriver missing and not root with apt-get: the browser test skips (fails under CI=true)" >&2
  fi
fi
VENV="${TEST_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# (re)install when the package or a test dependency is missing (an older .venv lacks newer extras)
if ! "$VENV/bin/python" -c "import poetry_gpt, pytest, starlette, selenium" 2>/dev/null; then
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e '.[test]'
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
export PATH="$PWD/$VENV/bin:$PATH"
exec "$VENV/bin/python" -m pytest -q tests "$@"
