#!/usr/bin/env bash
# Compile-only check of the CUDA sources, for machines without a GPU (CI):
#  - every csrc/cuda/*.cu with nvcc for $CUDA_ARCH (default sm_90), warnings as errors;
#  - the tensor glue (csrc/cuda/*.cpp, and csrc/module.cpp as a CUDA build sees it) with the
#    host compiler against torch's headers, syntax only. A CPU wheel of torch lacks the
#    generated c10/cuda/impl/cuda_cmake_macros.h; an empty stand-in is supplied then.
# Exits non-zero on the first error. Usage: .ci/compile_cuda.sh  (NVCC, CXX, PYTHON override)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
NVCC=${NVCC:-nvcc}
CXX=${CXX:-c++}
PYTHON=${PYTHON:-python}
CUDA_ARCH=${CUDA_ARCH:-sm_90}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

for source in "$ROOT"/csrc/cuda/*.cu; do
  echo "nvcc -arch=$CUDA_ARCH ${source#"$ROOT"/}"
  "$NVCC" -std=c++17 -O3 -arch="$CUDA_ARCH" -Werror all-warnings \
    -c "$source" -o "$TMP/$(basename "$source").o"
done

# nvcc's own include directory (nvcc may be a wrapper script outside the toolkit).
: > "$TMP/probe.cu"
CUDA_INCLUDE=$("$NVCC" --dryrun -c "$TMP/probe.cu" -o "$TMP/probe.o" 2>&1 \
  | sed -n 's/^#\$ INCLUDES="-I\([^" ]*\).*/\1/p' | head -n 1)
[[ -n "$CUDA_INCLUDE" ]] || { echo "cannot find nvcc's include directory" >&2; exit 1; }
INCLUDES=(-I"$CUDA_INCLUDE")
mapfile -t TORCH_INCLUDES < <("$PYTHON" -c \
  'from torch.utils.cpp_extension import include_paths; print("\n".join(include_paths()))')
for dir in "${TORCH_INCLUDES[@]}"; do
  INCLUDES+=(-I"$dir")
done
if [[ ! -f "${TORCH_INCLUDES[0]}/c10/cuda/impl/cuda_cmake_macros.h" ]]; then
  mkdir -p "$TMP/shim/c10/cuda/impl"
  echo "#pragma once" > "$TMP/shim/c10/cuda/impl/cuda_cmake_macros.h"
  INCLUDES+=(-I"$TMP/shim")
fi
INCLUDES+=(-I"$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')")

for source in "$ROOT"/csrc/cuda/*.cpp "$ROOT"/csrc/module.cpp; do
  echo "$CXX -fsyntax-only ${source#"$ROOT"/}"
  "$CXX" -std=c++20 -fsyntax-only -Wall -Werror -DHEAT_FAST_WITH_CUDA "${INCLUDES[@]}" "$source"
done
echo "CUDA sources compile."
