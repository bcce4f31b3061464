#!/bin/sh
# Removes what the torch wheel carries for building extensions and for its own C++ tests, none
# of which inference touches: headers, test programs and test libraries (about 180 MB of the CPU
# wheel). torch_shm_manager stays (tensor sharing between processes needs it).
# Usage: prune-torch.sh SITE_PACKAGES_DIR
set -eu
torch="${1:?usage: prune-torch.sh SITE_PACKAGES_DIR}/torch"
[ -d "$torch" ] || { echo "error: no torch in $1" >&2; exit 1; }
rm -rf "$torch/include" "$torch/test"
find "$torch/bin" -mindepth 1 -maxdepth 1 ! -name torch_shm_manager -exec rm -rf {} +
rm -f "$torch"/lib/lib*test*.so "$torch/lib/libbackend_with_compiler.so" "$torch/lib/libaoti_custom_ops.so"
