#!/usr/bin/env python
"""Each step of GoogLeNet(fused=True)'s recorded CPU op program (googlenet_fast/cpu_program.py)
timed in sequence, as a forward runs it, beside the same step repeated on its own input (hot
caches), and the whole replay: where the time between a layer timed alone and the whole model
goes (benchmarks/results/cpu-layers-2026-12-04.md).

Usage: python benchmarks/cpu_program_steps.py [--batch 1] [--threads 2] [--forwards 20]
       [--dtype float32|bfloat16]
(OMP_WAIT_POLICY=ACTIVE|PASSIVE in the environment to test OpenMP's thread wake-ups.)
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from googlenet_fast import cpu_program  # noqa: E402
from googlenet_fast.backends import native  # noqa: E402
from googlenet_fast.bench import build_networks  # noqa: E402
from googlenet_fast.data import fill_batch, preprocess, sample_photos  # noqa: E402


def run_steps(prog, x, hot_repeats=0):
    """Run the program's steps once in order; per step its time (ms), or with ``hot_repeats``
    the fastest of that many extra calls on the same arguments."""
    env = [x] + [None] * (prog.nslots - 1)
    times = []
    previous = native._C._set_weight_prepacking(False)
    try:
        for op, template, slots, lists, kwargs, outs, prepack, _frees in prog.steps:
            args = cpu_program.step_args(template, slots, lists, env)
            native._C._set_weight_prepacking(prepack)
            t0 = time.perf_counter()
            y = op(*args, **kwargs)
            t = time.perf_counter() - t0
            for _ in range(hot_repeats):
                t0 = time.perf_counter()
                op(*args, **kwargs)
                t = min(t, time.perf_counter() - t0)
            times.append(t * 1e3)
            for s, v in zip(outs, (y,) if len(outs) == 1 else y):
                env[s] = v
    finally:
        native._C._set_weight_prepacking(previous)
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--forwards", type=int, default=20)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    photos = preprocess(sample_photos())
    dtype = getattr(torch, args.dtype)
    model = build_networks(calibration=photos, dtype=dtype).fused
    x = fill_batch(photos, args.batch).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for _ in range(3):
            model(x)  # fold, record, replay
        prog = next(p for p in model.__dict__[cpu_program.PROGRAMS_ATTR].by_sig.values() if p is not None)
        seq = [run_steps(prog, x) for _ in range(args.forwards)]
        hot = [run_steps(prog, x, hot_repeats=5) for _ in range(3)]
        runs = []
        for _ in range(args.forwards):
            t0 = time.perf_counter()
            prog.run(x)
            runs.append((time.perf_counter() - t0) * 1e3)
    print(f"# {args.dtype}, batch {args.batch}, {args.threads} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}, "
          f"load {os.getloadavg()[0]:.2f}; ms, medians")
    total_s = total_h = 0.0
    for i, step in enumerate(prog.steps):
        s = statistics.median(r[i] for r in seq)
        h = statistics.median(r[i] for r in hot)
        total_s, total_h = total_s + s, total_h + h
        print(f"{i:2d} {str(step[0]):40s} in sequence {s:7.3f}  hot {h:7.3f}  +{s - h:6.3f}")
    print(f"sum in sequence {total_s:.2f}, hot {total_h:.2f}; whole replay {statistics.median(runs):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
