#!/usr/bin/env bash
# The one-call GPU check: build, CUDA test suite, SPEC §7 benchmarks and (time permitting)
# compute-sanitizer memcheck of the native CUDA ops, each step time-boxed so that the whole
# fits one 600-second call on a fresh GPU machine with no network (Python 3.12, torch 2.11 /
# CUDA 13, triton 3.6, nvcc). Logs, bench.json and bench.md go to $OUT (default
# ./gpu-check-out); summary.txt lists each step's exit code and seconds.
#
#   bash gpu/check.sh             # on the GPU machine
#   bash gpu/check.sh --dry-run   # on a CPU machine (CI): the suite on CPU tensors through
#                                 # the Triton interpreter, the benchmarks on tiny CPU shapes
set -uo pipefail
cd "$(dirname "$0")/.."
DRY_RUN=0
[[ "${1:-}" == "--dry-run" ]] && DRY_RUN=1
OUT=${OUT:-$PWD/gpu-check-out}
TOTAL=${HEAT_FAST_CHECK_SECONDS:-570}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
: > "$OUT/summary.txt"
START=$SECONDS
STATUS=0

# step NAME SECONDS COMMAND...: runs COMMAND with a time limit, its output in $OUT/NAME.log.
step() {
  local name=$1 limit=$2 begin=$SECONDS rc
  shift 2
  echo "== $name (at most ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc in $((SECONDS - begin)) s" | tee -a "$OUT/summary.txt"
  tail -n 15 "$OUT/$name.log"
  [[ $rc -eq 0 ]] || STATUS=1
  return $rc
}

left() { echo $((TOTAL - (SECONDS - START))); }

if [[ $DRY_RUN -eq 1 ]]; then
  export TRITON_INTERPRET=1 HEAT_FAST_CUDA_SUITE_DEVICE=cpu OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  step cuda-suite 300 "$PYTHON" -m pytest tests/test_cuda.py -q -p no:cacheprovider
  step bench 120 "$PYTHON" gpu/bench.py --dry-run --out "$OUT"
  exit $STATUS
fi

export TRITON_INTERPRET=0 HEAT_FAST_FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)} TRITON_DEFAULT_FP_FUSION=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PYTHON" -c 'import torch, triton, numpy; print("torch", torch.__version__, "cuda",
torch.version.cuda, "triton", triton.__version__, "numpy", numpy.__version__)'
} >> "$OUT/summary.txt" 2>&1
step build 240 "$PYTHON" -m pip install --no-build-isolation --no-deps --no-index -e . \
  || { echo "build failed: see build.log" | tee -a "$OUT/summary.txt"; exit 1; }
"$PYTHON" -m heat_fast info >> "$OUT/summary.txt" 2>&1
step cuda-suite 200 env HEAT_FAST_TEST_REQUIRE=cuda "$PYTHON" -m pytest tests/test_cuda.py -q \
  -rfE -p no:cacheprovider
BENCH=$(( $(left) - 80 ))
(( BENCH > 170 )) && BENCH=170
if (( BENCH > 30 )); then
  step bench $((BENCH + 20)) "$PYTHON" gpu/bench.py --out "$OUT" --budget "$BENCH"
fi
if (( $(left) > 45 )) && command -v compute-sanitizer > /dev/null; then
  step memcheck $(( $(left) - 10 )) compute-sanitizer --tool memcheck --error-exitcode 1 \
    "$PYTHON" gpu/sanitize.py
fi
echo "total: $((SECONDS - START)) s" | tee -a "$OUT/summary.txt"
exit $STATUS
