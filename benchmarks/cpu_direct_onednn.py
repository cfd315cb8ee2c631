#!/usr/bin/env python
"""GoogLeNet(fused=True)'s CPU eval forward with its convolutions and inner products executed as
oneDNN primitives the extension keeps (the default, csrc/cpu/onednn_direct.h) against the same
kernels through ATen's mkldnn ops (GOOGLENET_FAST_ONEDNN=0).  Each setting runs in a process of its
own (the two share nothing: no allocator or cache state carried over), alternating, --rounds
times; each process times the median of --forwards calls per batch size after warm-up.  Prints
ms per forward for each round and the median ratio ATen / direct (> 1: direct is faster).

Usage:
    python benchmarks/cpu_direct_onednn.py [--dtype float32|bfloat16] [--batch-sizes 1 8]
                                           [--rounds 3] [--forwards 30]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CHILD = r"""
import json, statistics, sys, time, torch
from googlenet_fast import GoogLeNet, ops
dtype, sizes, forwards = sys.argv[1], [int(b) for b in sys.argv[2].split(",")], int(sys.argv[3])
torch.manual_seed(0)
m = GoogLeNet(fused=True, aux_logits=False, init_weights=True).eval()
out = {"status": ops.direct_onednn_status()}
with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=dtype == "bfloat16"):
    for b in sizes:
        x = torch.randn(b, 3, 224, 224)
        for _ in range(5):
            m(x)
        ts = []
        for _ in range(forwards):
            t0 = time.perf_counter()
            m(x)
            ts.append(time.perf_counter() - t0)
        out[str(b)] = statistics.median(ts) * 1e3
print(json.dumps(out))
"""


def run_child(direct: bool, dtype: str, sizes, forwards: int) -> dict:
    env = dict(os.environ, GOOGLENET_FAST_ONEDNN="1" if direct else "0")
    p = subprocess.run([sys.executable, "-c", CHILD, dtype, ",".join(map(str, sizes)), str(forwards)],
                       env=env, capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(f"the {'direct' if direct else 'ATen'} process failed: {p.stderr.strip()[-800:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--forwards", type=int, default=30)
    a = ap.parse_args(argv)
    if any(b < 1 or b > 256 for b in a.batch_sizes):
        ap.error("--batch-sizes: expected sizes from 1 to 256")
    if a.rounds < 1 or a.forwards < 1:
        ap.error("--rounds and --forwards: expected at least 1")
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  load {os.getloadavg()[0]:.2f}  dtype {a.dtype}  "
          f"forwards {a.forwards}", flush=True)
    rows = {True: [], False: []}
    try:
        for r in range(a.rounds):
            for direct in (True, False):
                res = run_child(direct, a.dtype, a.batch_sizes, a.forwards)
                rows[direct].append(res)
                cells = "  ".join(f"b{b} {res[str(b)]:7.2f} ms" for b in a.batch_sizes)
                print(f"round {r + 1}  {'direct' if direct else 'ATen  '} ({res['status']}):  {cells}", flush=True)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"error: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    n = min(len(rows[True]), len(rows[False]))
    if n == 0:
        return 1
    for b in a.batch_sizes:
        on = statistics.median(r[str(b)] for r in rows[True][:n])
        off = statistics.median(r[str(b)] for r in rows[False][:n])
        print(f"batch {b}: direct {on:.2f} ms, ATen {off:.2f} ms, ATen / direct {off / on:.3f} "
              f"(median of {n} rounds)")
    return 0 if n == a.rounds else 1


if __name__ == "__main__":
    sys.exit(main())
