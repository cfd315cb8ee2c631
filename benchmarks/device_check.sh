#!/usr/bin/env bash
# GPU check for a machine with an H200 and no network access (Python 3.12, torch, triton, pytest
# and pytest-benchmark already installed).  Installs nothing from the network.  Stages, each
# time-boxed with `timeout`, all logged:
#   1. environment (nvidia-smi, versions)                                         env.txt
#   2. build the extension here (pip -e without deps or isolation; fallback:
#      setup.py build_ext --inplace), sm_90 only unless TORCH_CUDA_ARCH_LIST is set  build.log
#   3. the Triton backend's GPU tests (pytest -m gpu)             pytest-triton-gpu.log/.xml
#   4. the per-block table, triton (and cuda when built) vs torchvision eager, bf16 channels_last,
#      batch 1/32/256, and the whole network at batch 1 and 256                  gpu_blocks.txt/.json
#   5. the benchmark report (benchmarks/report.py: every Table-1 block and the network, eval and
#      train, speedups, TFLOP/s, GB/s, roofline fractions vs ceilings measured in the run, bf16,
#      batch 1/256; REPORT_COMPILE=1 adds torch.compile)                 report.json (markdown and
#      PNG inside: `python benchmarks/report.py --render report.json --out-prefix P` writes them);
#      its log is appended to gpu_blocks.txt
#   6. every other test marked gpu (the CUDA backend's, the model's)             pytest-other-gpu.log
#   7. compute-sanitizer memcheck on the CUDA kernels (benchmarks/cuda_sanitizer.sh; appended)
# Usage: benchmarks/device_check.sh [RESULTS_DIR]
#   DRY_RUN=1: check this script's logic on a machine without a GPU (build with
#   setup.py build_ext --inplace instead of pip -e, gpu_blocks.py --dry-run).
#   RESULTS_DIR defaults to $RESULTS_DIR, else $OUT, else benchmarks/results/<date>.
#   Stage limits (seconds): BUILD_TIMEOUT (120), TRITON_TEST_TIMEOUT (100), BENCH_TIMEOUT (90),
#   REPORT_TIMEOUT (80), TEST_TIMEOUT (60, the other GPU tests), SANITIZER_TIMEOUT (25): 475 s
#   with the rest, under 8 minutes.  Results hold 8 files (summary.txt, env.txt, build.log,
#   pytest-triton-gpu.log, pytest-other-gpu.log, gpu_blocks.txt, gpu_blocks.json, report.json;
#   the Triton tests' JUnit XML and the report's .md/.png stay in $SCRATCH on the machine, since
#   at most 8 files come back from $OUT).  Exit status: 0 when every stage passed, else 1.
set -u -o pipefail

T_START=$(date +%s)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RESULTS="${1:-${RESULTS_DIR:-${OUT:-$ROOT/benchmarks/results/$(date +%Y%m%d-%H%M%S)}}}"
mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"
PY="${PYTHON:-python3}"
BUILD_TIMEOUT="${BUILD_TIMEOUT:-120}"
TRITON_TEST_TIMEOUT="${TRITON_TEST_TIMEOUT:-100}"
TEST_TIMEOUT="${TEST_TIMEOUT:-60}"
BENCH_TIMEOUT="${BENCH_TIMEOUT:-90}"
REPORT_TIMEOUT="${REPORT_TIMEOUT:-80}"
SANITIZER_TIMEOUT="${SANITIZER_TIMEOUT:-25}"
SCRATCH="${SCRATCH:-/tmp/googlenet_fast-device}"   # files that need not come back
mkdir -p "$SCRATCH"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1   # never reach for the network
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"   # importable even if only build_ext --inplace worked
unset TRITON_INTERPRET
# One Triton cache for the prewarm processes and the timed process (outside the results
# directory: only a few files may come back from there).
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-/tmp/googlenet_fast-triton-cache}"
NPROC=$(nproc)
PREWARM=$(( NPROC > 16 ? 16 : NPROC ))

declare -A STATUS
elapsed() { echo $(( $(date +%s) - T_START )); }
stage() { echo; echo "=== [$(elapsed)s] $*" | tee -a "$RESULTS/summary.txt"; }
record() {  # record NAME RC
  STATUS[$1]=$2
  if [ "$2" -eq 0 ]; then r=ok; elif [ "$2" -eq 124 ]; then r="TIMEOUT"; else r="FAILED (rc=$2)"; fi
  echo "--- $1: $r [$(elapsed)s]" | tee -a "$RESULTS/summary.txt"
}

stage "environment -> $RESULTS/env.txt"
{
  date -u; uname -a; nvidia-smi || true
  "$PY" - <<'EOF'
import sys, platform, torch
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), torch.cuda.get_device_capability())
for m in ("triton", "torchvision", "pytest", "pytest_benchmark"):
    try:
        mod = __import__(m)
        print(m, getattr(mod, "__version__", "?"))
    except Exception as e:
        print(m, "MISSING", e)
EOF
  command -v nvcc && nvcc --version | tail -2
  git -C "$ROOT" log --oneline -1 2>/dev/null || true
} > "$RESULTS/env.txt" 2>&1
cat "$RESULTS/env.txt"

stage "build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS, limit ${BUILD_TIMEOUT}s) -> build.log"
if [ "${DRY_RUN:-0}" = 1 ]; then
  timeout "$BUILD_TIMEOUT" "$PY" setup.py build_ext --inplace > "$RESULTS/build.log" 2>&1
else
  timeout "$BUILD_TIMEOUT" "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . \
    > "$RESULTS/build.log" 2>&1
fi
rc=$?
if [ $rc -ne 0 ] && [ $rc -ne 124 ]; then
  echo "pip install failed (rc=$rc); trying setup.py build_ext --inplace" | tee -a "$RESULTS/build.log"
  left=$(( BUILD_TIMEOUT - $(elapsed) + 5 )); [ $left -lt 30 ] && left=30
  timeout "$left" "$PY" setup.py build_ext --inplace >> "$RESULTS/build.log" 2>&1
  rc=$?
fi
tail -n 15 "$RESULTS/build.log"
"$PY" - <<'EOF' 2>&1 | tee -a "$RESULTS/build.log"
from googlenet_fast.backends import native
print("googlenet_fast._C loaded:", native.available(), "| load error:", native.LOAD_ERROR)
print("build info:", native.BUILD_INFO, "| cuda backend usable:", native.cuda_available())
EOF
record build $rc

stage "GPU tests, Triton backend (limit ${TRITON_TEST_TIMEOUT}s) -> pytest-triton-gpu.log/.xml"
timeout "$TRITON_TEST_TIMEOUT" "$PY" -m pytest -m gpu -q -rfE -p no:cacheprovider --durations=10 \
  --junitxml="$SCRATCH/pytest-triton-gpu.xml" tests/test_triton_interp.py \
  > "$RESULTS/pytest-triton-gpu.log" 2>&1
rc=$?
tail -n 30 "$RESULTS/pytest-triton-gpu.log"
record triton-gpu-tests $rc

stage "block table + network (limit ${BENCH_TIMEOUT}s) -> gpu_blocks.txt / gpu_blocks.json"
BENCH_ARGS=(--prewarm "$PREWARM" --warmup 10 --rep 50)
[ "${DRY_RUN:-0}" = 1 ] && BENCH_ARGS=(--dry-run)
timeout "$BENCH_TIMEOUT" "$PY" benchmarks/gpu_blocks.py "${BENCH_ARGS[@]}" \
  --json "$RESULTS/gpu_blocks.json" > "$RESULTS/gpu_blocks.txt" 2>&1
rc=$?
cat "$RESULTS/gpu_blocks.txt"
record bench $rc

stage "benchmark report (limit ${REPORT_TIMEOUT}s) -> report.json (log appended to gpu_blocks.txt)"
# The report's own budget leaves ~35 s for start-up, ceilings and writing; on SIGTERM (timeout)
# it still writes what it measured, the rest listed as skipped.
REPORT_BUDGET=$(( REPORT_TIMEOUT > 60 ? REPORT_TIMEOUT - 35 : 25 ))
REPORT_PREFIX="$SCRATCH/report-cuda-$(date -u +%Y-%m-%d)"
REPORT_ARGS=(--device cuda --budget-s "$REPORT_BUDGET")
[ "${REPORT_COMPILE:-0}" = 1 ] && REPORT_ARGS+=(--compile)
[ "${DRY_RUN:-0}" = 1 ] && { REPORT_ARGS=(--dry-run); REPORT_PREFIX="$SCRATCH/report-dry"; }
rm -f "$REPORT_PREFIX".json
echo "=== benchmarks/report.py ${REPORT_ARGS[*]}" >> "$RESULTS/gpu_blocks.txt"
timeout "$REPORT_TIMEOUT" "$PY" benchmarks/report.py "${REPORT_ARGS[@]}" --embed-png \
  --out-prefix "$REPORT_PREFIX" >> "$RESULTS/gpu_blocks.txt" 2>&1
rc=$?
if [ -f "$REPORT_PREFIX.json" ]; then
  cp "$REPORT_PREFIX.json" "$RESULTS/report.json"
else
  echo "report.py wrote no JSON (rc=$rc)" | tee -a "$RESULTS/gpu_blocks.txt"
  [ $rc -eq 0 ] && rc=1
fi
grep -A 16 "## Speedup vs torchvision eager" "$REPORT_PREFIX.md" 2>/dev/null | head -n 60
record report $rc

stage "GPU tests, everything else marked gpu (limit ${TEST_TIMEOUT}s) -> pytest-other-gpu.log"
timeout "$TEST_TIMEOUT" "$PY" -m pytest -m gpu -q -rfE -p no:cacheprovider --durations=10 \
  --ignore=tests/test_triton_interp.py tests/ > "$RESULTS/pytest-other-gpu.log" 2>&1
rc=$?
[ $rc -eq 5 ] && rc=0  # nothing else marked gpu
tail -n 30 "$RESULTS/pytest-other-gpu.log"
record other-gpu-tests $rc

# compute-sanitizer memcheck on small configurations of the CUDA backend (issue 4), when the
# machine has the tool; its log is appended to pytest-other-gpu.log (only 8 files come back).
stage "compute-sanitizer memcheck, CUDA backend (limit ${SANITIZER_TIMEOUT}s) -> pytest-other-gpu.log"
timeout "$SANITIZER_TIMEOUT" bash benchmarks/cuda_sanitizer.sh memcheck >> "$RESULTS/pytest-other-gpu.log" 2>&1
rc=$?
tail -n 5 "$RESULTS/pytest-other-gpu.log"
record sanitizer $rc

stage "done in $(elapsed)s"
fail=0
for k in build triton-gpu-tests bench report other-gpu-tests sanitizer; do
  echo "$k: ${STATUS[$k]:-not run}" | tee -a "$RESULTS/summary.txt"
  [ "${STATUS[$k]:-1}" -eq 0 ] || fail=1
done
exit $fail
