#!/usr/bin/env bash
# Installs the pinned test environment into .venv (idempotent) and runs the test suite.
#   ./scripts/test.sh            # everything
#   ./scripts/test.sh -k serve   # pytest arguments pass through
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${BINSIGHT_VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# torch/torchvision pinned exactly: these install from local files on the project's machines.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
  torch==2.14.1 torchvision==0.29.1 -e '.[train,aws,test,onnx]' 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
"$VENV/bin/python" -m pip check >/dev/null || { "$VENV/bin/python" -m pip check; exit 1; }
# The browser tests (tests/test_browser.py) drive Debian's chromium, never a browser that
# `playwright install` would download. Installed here when missing and run as root (CI's fresh
# machines: about 35 s); without it those tests are skipped, and fail when CI=true.
CHROMIUM=${BINSIGHT_CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "test.sh: installing Debian's chromium for the browser tests" >&2
  apt_log=$(mktemp)
  if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } >"$apt_log" 2>&1; then
    tail -n 20 "$apt_log" >&2
    echo "test.sh: chromium could not be installed; the browser tests fail in CI and are skipped elsewhere" >&2
  fi
  rm -f "$apt_log"
fi
# Formatting and lint (ruff, configured in pyproject.toml) are part of the tests: a failure here fails
# the run, after pytest has run, so one run shows both.
lint=0
"$VENV/bin/ruff" format --check --quiet . || { echo "test.sh: ruff format would change the files above (run: $VENV/bin/ruff format .)" >&2; lint=1; }
"$VENV/bin/ruff" check --quiet . || { echo "test.sh: ruff check found the problems above" >&2; lint=1; }
status=0
"$VENV/bin/python" -m pytest "$@" || status=$?
[ "$status" -ne 0 ] && exit "$status"
exit "$lint"
