#!/usr/bin/env python
"""GoogLeNet(fused=True)'s CPU eval forward when a running process switches between calls: the
median forward time of each phase, in one process.

    threads    torch.set_num_threads at each count of --threads in turn.  oneDNN chooses a
               convolution's blocked weight layout by its thread count; the prepacked-weight cache
               once kept one copy per weight and shape, reordered on every call after a switch
               (benchmarks/results/cpu-threads-prepack-2026-12-05.md).  A count met again should
               time as it did the first time.
    autocast   a float32 model: float32 calls only, autocast-bfloat16 calls only, then the two
               alternating (timed separately).  The folded-weight cache once held one dtype, so
               each switch refolded every module (cpu-autocast-alternation-2026-12-05.md).
               Alternating calls should time as the single-dtype ones.

Usage:
    python benchmarks/cpu_eval_switches.py threads [--threads 2 1 2] [--batch 1] [--dtype bfloat16]
    python benchmarks/cpu_eval_switches.py autocast [--batch 1]
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from googlenet_fast.bench import build_networks, load_average  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _median_ms(fn, forwards: int) -> float:
    ts = []
    for _ in range(forwards):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def thread_switches(model, x, threads, forwards: int, warmup: int = 5):
    """[(label, median ms)] of ``model(x)`` at each thread count of ``threads``, in order."""
    out = []
    with torch.no_grad():
        for t in threads:
            torch.set_num_threads(t)
            for _ in range(warmup):
                model(x)
            out.append((f"{t} threads", _median_ms(lambda: model(x), forwards)))
    return out


def autocast_switches(model, x, forwards: int, warmup: int = 3):
    """[(label, median ms)]: float32 calls, autocast-bfloat16 calls, then the two alternating."""
    def call(amp):
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=amp):
            return model(x)

    for _ in range(warmup):
        call(False)
        call(True)
    out = [("float32 only", _median_ms(lambda: call(False), forwards)),
           ("bf16 autocast only", _median_ms(lambda: call(True), forwards))]
    fp32, bf16 = [], []
    for _ in range(forwards):
        for amp, ts in ((False, fp32), (True, bf16)):
            t0 = time.perf_counter()
            call(amp)
            ts.append(time.perf_counter() - t0)
    out += [("alternating: float32", statistics.median(fp32) * 1e3),
            ("alternating: bf16 autocast", statistics.median(bf16) * 1e3)]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("switch", choices=["threads", "autocast"])
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1, 2],
                   help="threads: the thread counts, in order")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16",
                   help="threads: model and input dtype (autocast: always a float32 model)")
    p.add_argument("--forwards", type=int, default=30, help="timed forwards per phase")
    a = p.parse_args(argv)
    if a.batch < 1 or a.forwards < 1 or min(a.threads) < 1:
        p.error("--batch, --forwards and every --threads value must be >= 1")
    dtype = DTYPES[a.dtype] if a.switch == "threads" else torch.float32
    model = build_networks(seed=0, dtype=dtype).fused
    x = torch.rand(a.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(dtype).contiguous(
        memory_format=torch.channels_last)
    if a.switch == "threads":
        rows = thread_switches(model, x, a.threads, a.forwards)
    else:
        rows = autocast_switches(model, x, a.forwards)
    load = load_average()
    print(f"# {a.switch}: {str(dtype).replace('torch.', '')} model, batch {a.batch}, median of {a.forwards} "
          f"forwards per phase, torch {torch.__version__}, {torch.get_num_threads()} threads at the end, "
          f"load {' '.join(f'{v:.2f}' for v in load) if load else 'n/a'}")
    print(", ".join(f"{label} {ms:.2f} ms" for label, ms in rows))


if __name__ == "__main__":
    main()
