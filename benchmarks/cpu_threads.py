#!/usr/bin/env python
"""GoogLeNet(fused=True)'s CPU eval forward after torch.set_num_threads changes the thread count
in a running process: the median forward time at each count of a sequence, in one process.

Why: oneDNN chooses a convolution's blocked weight layout by the threads it will run with, and
the extension's prepacked-weight cache (csrc/cpu/inception_cpu.cpp, PackedWeights) once kept one
copy per weight and input shape: a copy packed under 2 threads, used under 1, was reordered on
every call (benchmarks/results/cpu-threads-prepack-2026-12-05.md).  A count met a second time
in the sequence should time as it did the first time.

Usage:
    python benchmarks/cpu_threads.py [--threads 2 1 2] [--batch 1] [--dtype bfloat16] [--forwards 30]
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


def forward_times(model, x, threads, forwards: int, warmup: int = 5):
    """Median forward time (ms) of ``model(x)`` at each thread count of ``threads``, in order."""
    out = []
    with torch.no_grad():
        for t in threads:
            torch.set_num_threads(t)
            for _ in range(warmup):
                model(x)
            ts = []
            for _ in range(forwards):
                t0 = time.perf_counter()
                model(x)
                ts.append(time.perf_counter() - t0)
            out.append(statistics.median(ts) * 1e3)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1, 2], help="thread counts, in order")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16", help="model and input dtype")
    p.add_argument("--forwards", type=int, default=30, help="timed forwards per thread count")
    a = p.parse_args(argv)
    if a.batch < 1 or a.forwards < 1 or min(a.threads) < 1:
        p.error("--batch, --forwards and every --threads value must be >= 1")
    dtype = DTYPES[a.dtype]
    model = build_networks(seed=0, dtype=dtype).fused
    x = torch.rand(a.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(dtype).contiguous(
        memory_format=torch.channels_last)
    times = forward_times(model, x, a.threads, a.forwards)
    load = load_average()
    print(f"# {a.dtype}, batch {a.batch}, median of {a.forwards} forwards per count, torch {torch.__version__}, "
          f"load {' '.join(f'{v:.2f}' for v in load) if load else 'n/a'}")
    print(", ".join(f"{t} threads {ms:.2f} ms" for t, ms in zip(a.threads, times)))


if __name__ == "__main__":
    main()
