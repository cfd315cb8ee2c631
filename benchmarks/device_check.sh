#!/usr/bin/env bash
# One-shot GPU check for the lent H200 (no network; Python 3.12, torch, triton, pytest,
# pytest-timeout and pytest-xdist already installed there).  Installs nothing from the network.
#
# Stages, in order of value; each is time-boxed, and its results are kept when it is cut short:
#   env        nvidia-smi, versions                                               env.txt
#   build      pip -e (fallback setup.py build_ext --inplace), sm_90, MAX_JOBS=nproc  build.log
#   smoke      benchmarks/device_smoke.py (<= 90 s): network fused vs torchvision bf16/fp32 at
#              batch 1/256 (error vs float64, time), the pooled op vs pool + op, one CUDA-graph
#              replay's kernel count, per-kernel times at batch 256, host time per eager forward
#                                                                         smoke.json, smoke.log
#   tests      every gpu-marked test except those deferred to tests-late: per-test timeout, -v so
#              each test's name and outcome is in the log as it finishes, pytest-xdist workers
#                                                                     tests.log, tests.xml
#   tables     benchmarks/gpu_blocks.py: the whole network first, then the per-block table
#              (triton and cuda vs torchvision eager, bf16, channels_last, batch 1/32/256), every
#              Triton kernel prewarmed in parallel first; JSON rewritten after every row
#                                                               gpu_blocks.json, gpu_blocks.txt
#   tests-late the deferred gpu tests: the CUDA backend's batch-32 parity cases and its
#              float32 batch-256 ones (float64 references), and the torch.compile tests
#                                                             tests-late.log, tests-late.xml
#   report     benchmarks/report.py --device cuda (--compile with REPORT_COMPILE=1): blocks and the
#              network, eval and train, roofline fractions vs ceilings timed in the run
#                                                                    report.json, report.log
#   sanitizer  compute-sanitizer memcheck over the CUDA backend (benchmarks/cuda_sanitizer.sh)
#                                                                                sanitizer.log
# Every stage runs under `timeout -s INT -k 20`: pytest and the Python scripts get a
# KeyboardInterrupt, print their summaries and write their files; 20 s later a KILL follows.
# No stage starts past the overall deadline (DEADLINE, seconds from the start): each one's limit is
# cut to what is left.
#
# Results: everything lands in RESULTS_DIR (default /tmp/googlenet_fast-device/results); after every
# stage, and every 20 s in the background, it is packed into $OUT/results.tgz with summary.txt
# beside it (the device tool brings back at most 8 files from $OUT: these two always fit).
#
# Usage:
#   benchmarks/device_check.sh                   # every stage
#   STAGES=smoke,tables benchmarks/device_check.sh   # a rerun of some stages (env always runs; a
#                                                    # rerun on a fresh machine needs build too)
#   DRY_RUN=1 benchmarks/device_check.sh         # on a machine without a GPU: walks every stage's
#        logic (build_ext --inplace, --dry-run scripts, gpu tests collected and skipped)
# Budget (seconds, overridable): DEADLINE 470; BUILD_TIMEOUT 150, SMOKE_TIMEOUT 100,
# TESTS_TIMEOUT 150, TABLES_TIMEOUT 150, LATE_TIMEOUT 90, REPORT_TIMEOUT 120, SANITIZER_TIMEOUT 60.
# The deadline, not their sum, bounds the run.  How the 470 s were sized (counts, not yet timed on
# an H200): build ~40-60 s (one .cu file, ~21 s single-threaded here, plus the C++ files in parallel);
# smoke 85 s of its own budget (the Triton network kernels compile with heuristic tiles: ~30
# variants, a few seconds each at first use); tests: 81 gpu tests (251 of the CUDA backend's
# reduced to 129) over 8 xdist workers, compile-bound (~70 Triton variants at ~2 s each / 8
# workers) plus ~0.2 s per CUDA case: ~60-90 s; tables: prewarm ~20 s in 16 processes, 54 block
# rows x ~0.6 s and 6 network rows: ~60-90 s.  Whatever is left goes to tests-late, report and
# the sanitizer, in that order.
# Exit status: 0 when every stage that ran passed, else 1.
set -u -o pipefail

T_START=$(date +%s)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DRY="${DRY_RUN:-0}"
R="${RESULTS_DIR:-/tmp/googlenet_fast-device/results}"
mkdir -p "$R"
R="$(cd "$R" && pwd)"
OUTDIR="${OUT:-$R/out}"
mkdir -p "$OUTDIR"
PY="${PYTHON:-python3}"
STAGES="${STAGES:-build,smoke,tests,tables,tests-late,report,sanitizer}"
DEADLINE="${DEADLINE:-470}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1   # never reach for the network
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"   # importable even if only build_ext --inplace worked
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-/tmp/googlenet_fast-triton-cache}"
[ "$DRY" = 1 ] || unset TRITON_INTERPRET
NPROC=$(nproc)
PREWARM=$(( NPROC > 16 ? 16 : NPROC ))
WORKERS="${TEST_WORKERS:-$(( NPROC >= 16 ? 8 : (NPROC > 2 ? NPROC / 2 : 1) ))}"

ALL_STAGES="build smoke tests tables tests-late report sanitizer"
for st in ${STAGES//,/ }; do
  if [[ " $ALL_STAGES " != *" $st "* ]]; then
    echo "device_check.sh: STAGES: unknown stage '$st'; expected a comma-separated subset of: ${ALL_STAGES// /,}" >&2
    exit 2
  fi
done

declare -A STATUS
ORDER=()
elapsed() { echo $(( $(date +%s) - T_START )); }
wanted() { [[ ",$STAGES," == *",$1,"* ]]; }
pack() {  # results.tgz + summary.txt into $OUT (atomic: a kill mid-tar leaves the previous pack)
  tar czf "$OUTDIR/.results.tgz.tmp" -C "$R" --exclude=./out . 2>/dev/null \
    && mv -f "$OUTDIR/.results.tgz.tmp" "$OUTDIR/results.tgz"
  cp -f "$R/summary.txt" "$OUTDIR/summary.txt" 2>/dev/null || true
}
say() { echo "$*" | tee -a "$R/summary.txt"; }
# limit NAME DEFAULT: the stage's limit, cut to the time left before the deadline (0: skip)
limit() {
  local want=$1 left=$(( DEADLINE - $(elapsed) - 5 ))
  [ $left -lt 20 ] && { echo 0; return; }
  [ $want -gt $left ] && want=$left
  echo $want
}
record() {  # record NAME RC [LOG]: on failure the log's last lines go into the summary too
  STATUS[$1]=$2; ORDER+=("$1")
  local r
  case $2 in 0) r=ok ;; 124|130|137) r="CUT SHORT (rc=$2)" ;; skip) r="SKIPPED (deadline)" ;; *) r="FAILED (rc=$2)" ;; esac
  say "--- $1: $r [$(elapsed)s]"
  if [ "$2" != 0 ] && [ "$2" != skip ] && [ -n "${3:-}" ] && [ -f "$3" ]; then
    tail -n 6 "$3" | cut -c1-240 | sed 's/^/    | /' | tee -a "$R/summary.txt"
  fi
  pack
}
run_limited() {  # run_limited SECONDS LOG CMD...: SIGINT at the limit, KILL 20 s later
  local secs=$1 log=$2; shift 2
  timeout -s INT -k 20 "$secs" "$@" > "$log" 2>&1
}

: > "$R/summary.txt"
( while sleep 20; do pack; done ) >/dev/null 2>&1 &  # (its sleep holds no caller's pipe)
PACKER=$!
trap 'kill $PACKER 2>/dev/null; pack' EXIT
say "=== googlenet_fast device check $(date -u +%FT%TZ), stages: $STAGES, deadline ${DEADLINE}s, dry run: $DRY"

# ---- env (always) --------------------------------------------------------------------------
{
  date -u; uname -a; nproc; nvidia-smi || true
  nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,clocks.max.sm,power.draw,power.limit,temperature.gpu --format=csv || true
  "$PY" - <<'EOF'
import sys, platform, torch
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
      "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", torch.cuda.get_device_name(), torch.cuda.get_device_capability(), "SMs", p.multi_processor_count,
          "memory GiB", round(p.total_memory / 2**30, 1))
for m in ("triton", "torchvision", "pytest", "pytest_benchmark", "pytest_timeout", "xdist", "numpy"):
    try:
        mod = __import__(m)
        print(m, getattr(mod, "__version__", "?"))
    except Exception as e:
        print(m, "MISSING", e)
EOF
  command -v nvcc && nvcc --version | tail -2
  command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || echo "compute-sanitizer: not found"
  git -C "$ROOT" log --oneline -1 2>/dev/null || true
} > "$R/env.txt" 2>&1
grep -E "^(python|torch|device|triton) " "$R/env.txt" | tee -a "$R/summary.txt"
record env 0

# ---- build ---------------------------------------------------------------------------------
if wanted build; then
  lim=$(limit "${BUILD_TIMEOUT:-150}")
  say "=== [$(elapsed)s] build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS, limit ${lim}s)"
  if [ "$DRY" = 1 ]; then
    run_limited "$lim" "$R/build.log" "$PY" setup.py build_ext --inplace
  else
    run_limited "$lim" "$R/build.log" "$PY" -m pip install --no-build-isolation --no-deps --no-index -e .
  fi
  rc=$?
  if [ $rc -ne 0 ] && [ $rc -ne 124 ]; then
    echo "pip install failed (rc=$rc); trying setup.py build_ext --inplace" >> "$R/build.log"
    lim=$(limit 120)
    timeout -s INT -k 20 "$lim" "$PY" setup.py build_ext --inplace >> "$R/build.log" 2>&1
    rc=$?
  fi
  "$PY" - <<'EOF' >> "$R/build.log" 2>&1
from googlenet_fast.backends import native
print("googlenet_fast._C loaded:", native.available(), "| load error:", native.LOAD_ERROR)
print("build info:", native.BUILD_INFO, "| cuda backend usable:", native.cuda_available())
EOF
  grep -E "_C loaded|cuda backend usable" "$R/build.log" | cut -c1-300 | tee -a "$R/summary.txt"
  record build $rc "$R/build.log"
fi

# ---- smoke ---------------------------------------------------------------------------------
if wanted smoke; then
  lim=$(limit "${SMOKE_TIMEOUT:-100}")
  if [ "$lim" -eq 0 ]; then record smoke skip; else
    say "=== [$(elapsed)s] smoke (limit ${lim}s)"
    SMOKE_ARGS=(--budget-s $(( lim > 25 ? lim - 15 : 10 )) --json "$R/smoke.json")
    [ "$DRY" = 1 ] && SMOKE_ARGS+=(--dry-run)
    run_limited "$lim" "$R/smoke.log" "$PY" benchmarks/device_smoke.py "${SMOKE_ARGS[@]}"
    rc=$?
    grep -E "^\s+(network|pooled|graph|kernels|host)|FAILED|SKIPPED" "$R/smoke.log" | cut -c1-200 | tee -a "$R/summary.txt"
    record smoke $rc "$R/smoke.log"
  fi
fi

# ---- gpu tests -----------------------------------------------------------------------------
# Deferred to tests-late: the CUDA backend's batch-32 table cases, its float32 batch-256 ones
# (float64 references over 200k pixels), and every torch.compile test.
LATE_K='(test_table1_parity and (-32- or (-256- and float32))) or compile'
XDIST=()
if [ "$WORKERS" -gt 1 ] && "$PY" -c "import xdist" 2>/dev/null; then
  XDIST=(-n "$WORKERS")
  export GOOGLENET_FAST_NO_PRECOMPILE=1   # the workers compile in parallel themselves
fi
TIMEOUT_OPT=()
"$PY" -c "import pytest_timeout" 2>/dev/null && TIMEOUT_OPT=(--timeout "${PER_TEST_TIMEOUT:-90}")
pytest_stage() {  # pytest_stage NAME LIMIT -k EXPR
  local name=$1 lim=$2 kexpr=$3
  say "=== [$(elapsed)s] $name: pytest -m gpu -k '$kexpr' (limit ${lim}s, ${XDIST[*]:-no xdist}, ${TIMEOUT_OPT[*]:-no per-test timeout})"
  run_limited "$lim" "$R/$name.log" "$PY" -m pytest -m gpu -k "$kexpr" -v -rfE -p no:cacheprovider \
    --durations=15 "${XDIST[@]}" "${TIMEOUT_OPT[@]}" --junitxml="$R/$name.xml" tests/
  local rc=$?
  [ $rc -eq 5 ] && rc=0   # nothing selected
  # the outcome counts, and the names of failures (the -rfE summary may be missing if killed)
  grep -E "^(FAILED|ERROR) |[0-9]+ (passed|failed|skipped)" "$R/$name.log" | tail -n 40 | cut -c1-240 | tee -a "$R/summary.txt"
  echo "  passed: $(grep -c ' PASSED' "$R/$name.log"), failed: $(grep -c ' FAILED' "$R/$name.log"), errors: $(grep -c ' ERROR' "$R/$name.log"), skipped: $(grep -c ' SKIPPED' "$R/$name.log")" | tee -a "$R/summary.txt"
  record "$name" $rc "$R/$name.log"
}
if wanted tests; then
  lim=$(limit "${TESTS_TIMEOUT:-150}")
  if [ "$lim" -eq 0 ]; then record tests skip; else pytest_stage tests "$lim" "not ($LATE_K)"; fi
fi

# ---- tables --------------------------------------------------------------------------------
if wanted tables; then
  lim=$(limit "${TABLES_TIMEOUT:-150}")
  if [ "$lim" -eq 0 ]; then record tables skip; else
    say "=== [$(elapsed)s] tables: network + per-block (limit ${lim}s)"
    TABLE_ARGS=(--network-first --prewarm "$PREWARM" --warmup 10 --rep 40 --json "$R/gpu_blocks.json")
    [ "$DRY" = 1 ] && TABLE_ARGS=(--dry-run --network-first --json "$R/gpu_blocks.json")
    ( unset GOOGLENET_FAST_NO_PRECOMPILE; run_limited "$lim" "$R/gpu_blocks.txt" "$PY" benchmarks/gpu_blocks.py "${TABLE_ARGS[@]}" )
    rc=$?
    grep -E "^network|^summary|prewarm|failed" "$R/gpu_blocks.txt" | cut -c1-240 | tee -a "$R/summary.txt"
    record tables $rc "$R/gpu_blocks.txt"
  fi
fi

if wanted tests-late; then
  lim=$(limit "${LATE_TIMEOUT:-90}")
  if [ "$lim" -eq 0 ]; then record tests-late skip; else pytest_stage tests-late "$lim" "$LATE_K"; fi
fi

# ---- report --------------------------------------------------------------------------------
if wanted report; then
  lim=$(limit "${REPORT_TIMEOUT:-120}")
  if [ "$lim" -lt 45 ]; then record report skip; else
    say "=== [$(elapsed)s] report (limit ${lim}s)"
    # report.py's own budget leaves ~35 s for start-up, ceilings and writing; interrupted, it
    # still writes what it measured, the rest listed as skipped.
    REPORT_ARGS=(--device cuda --budget-s $(( lim - 35 )) --embed-png)
    [ "${REPORT_COMPILE:-0}" = 1 ] && REPORT_ARGS+=(--compile)
    [ "$DRY" = 1 ] && REPORT_ARGS=(--dry-run)
    run_limited "$lim" "$R/report.log" "$PY" benchmarks/report.py "${REPORT_ARGS[@]}" --out-prefix "$R/report"
    rc=$?
    [ -f "$R/report.json" ] || { say "report.py wrote no JSON (rc=$rc)"; [ $rc -eq 0 ] && rc=1; }
    grep -A 14 "## Speedup vs torchvision eager" "$R/report.md" 2>/dev/null | head -n 40 | tee -a "$R/summary.txt"
    record report $rc "$R/report.log"
  fi
fi

# ---- sanitizer -----------------------------------------------------------------------------
if wanted sanitizer; then
  lim=$(limit "${SANITIZER_TIMEOUT:-60}")
  if [ "$lim" -lt 30 ]; then record sanitizer skip; else
    say "=== [$(elapsed)s] compute-sanitizer memcheck (limit ${lim}s)"
    run_limited "$lim" "$R/sanitizer.log" bash benchmarks/cuda_sanitizer.sh memcheck
    rc=$?
    tail -n 3 "$R/sanitizer.log" | tee -a "$R/summary.txt"
    record sanitizer $rc "$R/sanitizer.log"
  fi
fi

say "=== done in $(elapsed)s"
fail=0
for k in "${ORDER[@]}"; do
  say "$(printf '%-11s %s' "$k" "${STATUS[$k]}")"
  case "${STATUS[$k]}" in 0|skip) ;; *) fail=1 ;; esac
done
exit $fail
