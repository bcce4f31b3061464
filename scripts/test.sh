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
exec "$VENV/bin/python" -m pytest "$@"
