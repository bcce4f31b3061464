#!/bin/sh
# Installs torch (and torchvision when asked) into the active Python environment, from one of:
#   index  a PyTorch wheel index, TORCH_INDEX_URL (default the CPU index: small CPU-only torch, for
#          serving; https://download.pytorch.org/whl/cu126 and the like give other CUDA builds)
#   pypi   PyPI's default Linux wheels, which bundle the CUDA runtime: for GPU training
#   local  a torch wheel in the wheel folder (/wheels, i.e. .wheels/ of the build context),
#          for machines that cannot reach the PyTorch index; its other dependencies come from PyPI
#          or the same folder. torchvision is installed only when its wheel lies there too.
# Usage: install-torch.sh SOURCE TORCH_VERSION [TORCHVISION_VERSION] (env TORCH_INDEX_URL, WHEEL_DIR)
set -eu
source=${1:?usage: install-torch.sh index|pypi|local TORCH_VERSION [TORCHVISION_VERSION]}
torch_version=${2:?torch version missing}
vision_version=${3:-}
index=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
wheels=${WHEEL_DIR:-/wheels}
pip="python -m pip install --no-cache-dir --disable-pip-version-check"

case "$source" in
  index)
    $pip --index-url "$index" "torch==$torch_version" ${vision_version:+"torchvision==$vision_version"} ;;
  pypi)
    $pip "torch==$torch_version" ${vision_version:+"torchvision==$vision_version"} ;;
  local)
    set -- "$wheels"/torch-*.whl
    if [ ! -f "$1" ] || [ $# -ne 1 ]; then
      echo "error: TORCH_SOURCE=local needs exactly one torch-*.whl in .wheels/ of the build context; found: $*" >&2
      exit 1
    fi
    torch_wheel=$1
    set --
    if [ -n "$vision_version" ]; then
      for wheel in "$wheels"/torchvision-*.whl; do [ -f "$wheel" ] && set -- "$wheel"; done
      [ $# -eq 0 ] && echo "note: no torchvision wheel in .wheels/; installing torch only" >&2
    fi
    $pip --find-links "$wheels" "$torch_wheel" "$@" ;;
  *)
    echo "error: unknown TORCH_SOURCE '$source' (index, pypi or local)" >&2
    exit 1 ;;
esac
python -c "import torch; print('torch:', torch.__version__, 'cuda:', torch.version.cuda)"
