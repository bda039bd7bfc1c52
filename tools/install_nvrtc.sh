#!/usr/bin/env bash
# Installs NVRTC (the CUDA run-time compiler) from NVIDIA's `nvidia-cuda-nvrtc` PyPI wheel, so the
# kernel compile checks (`cargo test -p sd-core --features cuda --test cuda_kernels_compile`) run on a
# machine with no CUDA toolkit, no driver and no GPU.
#
# Usage: tools/install_nvrtc.sh [TARGET_DIR]        (default TARGET_DIR: ./.nvrtc)
#   then: export LD_LIBRARY_PATH="$(tools/install_nvrtc.sh [TARGET_DIR] | tail -n 1):$LD_LIBRARY_PATH"
#
# The last line printed is the directory holding libnvrtc.so.13, for LD_LIBRARY_PATH. The version is
# pinned to 13.0.x to match the GPU machines' CUDA 13.0 driver (a 13.x NVRTC newer than the driver
# would still produce loadable cubins, but PTX from it would be rejected). Override with
# NVRTC_VERSION=13.0.88. Re-running is cheap: an existing install is reused.
set -euo pipefail

target="${1:-.nvrtc}"
version="${NVRTC_VERSION:-13.0.88}"
python="${PYTHON:-python3}"

mkdir -p "$target"
target="$(cd "$target" && pwd)"

find_lib() {
    find "$target" -name 'libnvrtc.so.13*' -path '*nvidia*' 2>/dev/null | head -n 1
}

lib="$(find_lib)"
if [ -z "$lib" ]; then
    echo "installing nvidia-cuda-nvrtc==$version into $target" >&2
    # --target keeps it out of every interpreter's site-packages; --no-deps: the wheel has none
    # that matter for NVRTC itself.
    "$python" -m pip install --quiet --no-deps --target "$target" "nvidia-cuda-nvrtc==$version" >&2
    lib="$(find_lib)"
fi
if [ -z "$lib" ]; then
    echo "error: libnvrtc.so.13 not found under $target after install" >&2
    exit 1
fi
dirname "$lib"
