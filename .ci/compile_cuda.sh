#!/usr/bin/env bash
# Compile-only check of the CUDA sources, for machines without a GPU (CI):
#  - every csrc/cuda/*.cu with nvcc for $CUDA_ARCH (default sm_90), warnings as errors, and
#    each kernel's registers, stack frame and spills from ptxas -v (a spill fails the check);
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
  echo "nvcc -arch=$CUDA_ARCH -Xptxas -v ${source#"$ROOT"/}"
  "$NVCC" -std=c++17 -O3 -arch="$CUDA_ARCH" -Werror all-warnings -Xptxas -v \
    -c "$source" -o "$TMP/$(basename "$source").o" 2> "$TMP/$(basename "$source").ptxas" \
    || { cat "$TMP/$(basename "$source").ptxas" >&2; exit 1; }
done
# Registers, stack frame and spills of every kernel (ptxas -v); any spill fails the check.
"$PYTHON" - "$TMP"/*.ptxas <<'PY'
import re, subprocess, sys
entry = re.compile(r"Compiling entry function '([^']+)'")
frame = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
regs = re.compile(r"Used (\d+) registers")
rows, spills = [], []
for path in sys.argv[1:]:
    name = None
    for line in open(path, encoding="utf-8"):
        if m := entry.search(line):
            name = m.group(1)
        elif m := frame.search(line):
            stack, stores, loads = map(int, m.groups())
        elif (m := regs.search(line)) and name:
            rows.append((name, int(m.group(1)), stack, stores, loads))
            name = None
names = subprocess.run(["c++filt"], input="\n".join(r[0] for r in rows), capture_output=True,
                       text=True).stdout.splitlines() or [r[0] for r in rows]
print(f"{'kernel':<72} {'regs':>4} {'stack':>5} {'spill st/ld':>11}")
for (_, reg, stack, stores, loads), name in zip(rows, names):
    short = name.replace("heat_fast::cuda::", "").replace("(anonymous namespace)::", "")
    print(f"{short[:72]:<72} {reg:>4} {stack:>5} {stores:>5}/{loads:<5}")
    if stores or loads:
        spills.append(short)
if spills:
    sys.exit("ptxas reports spills in: " + "; ".join(spills))
print(f"{len(rows)} CUDA kernels, no spills")
PY

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
