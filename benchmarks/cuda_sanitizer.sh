#!/usr/bin/env bash
# compute-sanitizer over the CUDA backend's kernels (csrc/cuda/inception_cuda.cu) on small
# configurations: every dtype, the 16-byte and the element-wise loader/epilogue paths, pixel and
# channel tails, an output slice of a larger buffer and misaligned tensors.  Results are also
# checked against the reference (tests/cuda_parity.py).
#
# Usage: benchmarks/cuda_sanitizer.sh [TOOL...]     TOOL: memcheck (default), racecheck,
#        synccheck, initcheck.  Exit 0: clean (or skipped: no GPU / no compute-sanitizer, with a
#        line saying so); non-zero: the sanitizer or a parity check found an error.
# Only the backend's kernels are instrumented (--kernel-name kns=stage_kernel_); the caching
# allocator is off so that every tensor is its own allocation and an out-of-bounds access cannot
# land silently in a neighbouring tensor.  About a minute per tool on an H200 (estimate: not yet
# run on one).
set -euo pipefail
cd "$(dirname "$0")/.."

tools=("$@")
[ ${#tools[@]} -eq 0 ] && tools=(memcheck)

find_sanitizer() {
  command -v compute-sanitizer 2>/dev/null && return 0
  local d
  for d in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda /usr/local/cuda-*; do
    if [ -n "$d" ] && [ -x "$d/bin/compute-sanitizer" ]; then echo "$d/bin/compute-sanitizer"; return 0; fi
    if [ -n "$d" ] && [ -x "$d/compute-sanitizer/compute-sanitizer" ]; then
      echo "$d/compute-sanitizer/compute-sanitizer"; return 0
    fi
  done
  # pip wheels (nvidia-cuda-sanitizer-api ships the binary under nvidia/*/bin on some versions)
  python - <<'EOF' 2>/dev/null
import glob, os, sys
try:
    import nvidia
except ImportError:
    sys.exit(1)
for root in list(getattr(nvidia, "__path__", [])):
    for p in glob.glob(os.path.join(root, "**", "compute-sanitizer"), recursive=True):
        if os.path.isfile(p) and os.access(p, os.X_OK):
            print(p)
            sys.exit(0)
sys.exit(1)
EOF
}

if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "cuda_sanitizer: SKIP (no CUDA device visible)"
  exit 0
fi
if ! SAN=$(find_sanitizer); then
  echo "cuda_sanitizer: SKIP (compute-sanitizer not found on PATH, in \$CUDA_HOME or /usr/local/cuda*)"
  exit 0
fi
echo "cuda_sanitizer: using $SAN"

# Instrument only this backend's kernels (stage_kernel_tc / stage_kernel_fma), with whichever
# spelling this compute-sanitizer knows; without a filter everything (cuDNN too) is checked.
HELP=$("$SAN" --help 2>&1 || true)
FILTER=()
if grep -q -- "--kernel-name " <<<"$HELP"; then FILTER=(--kernel-name kns=stage_kernel_)
elif grep -q -- "--filter" <<<"$HELP"; then FILTER=(--filter kns=stage_kernel_)
fi

export PYTORCH_NO_CUDA_MEMORY_CACHING=1
status=0
for tool in "${tools[@]}"; do
  echo "cuda_sanitizer: --tool $tool"
  if ! "$SAN" --tool "$tool" --error-exitcode 97 ${FILTER[@]+"${FILTER[@]}"} python - <<'EOF'
import sys
import torch
import googlenet_fast  # noqa: F401  (loads the op)
sys.path.insert(0, "tests")
from cuda_parity import SMALL, check_parity


def run_out(x, *rest):
    *ws, relu, out = rest
    torch.ops.googlenet_fast.inception.out(x, *ws, relu, out=out)
    torch.cuda.synchronize()


cases = [("n-tails", {}), ("all-odd", {}), ("m-tails", {"out_layout": "slice"}),
         ("mult8", {"x_layout": "misaligned", "out_layout": "misaligned", "w_layout": "misaligned"})]
for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
    for name, kw in cases:
        check_parity(run_out, SMALL[name], dtype=dtype, device="cuda", **kw)
        print(f"  ok {str(dtype):15s} {name} {kw}", flush=True)
EOF
  then
    echo "cuda_sanitizer: $tool FAILED"
    status=1
  else
    echo "cuda_sanitizer: $tool clean"
  fi
done
exit $status
