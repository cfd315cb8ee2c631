#!/usr/bin/env python
"""Host time of one eager GoogLeNet(fused=True) forward on the CUDA path, without a GPU: every
piece of Python and dispatch our package runs per forward, with the kernel launches stubbed out.

How: the model and the input live on the ``meta`` device, which the network path is told to
treat as CUDA (``network._network_device``); what is timed is the CUDA branch of
``GoogLeNet.forward``: ``model._check_input(x)`` then ``network.forward_or_none(model, x)``
(the body of googlenet_fast.ops.fused_network_forward after its device test: the launch
program's checks and replay, or on a miss the path's checks, the network-path choice and
backends/triton/network.fused_forward_triton).  The ops' ``_run`` functions, which skip meta
tensors, are redirected into the CUDA launch code (``_launch`` with interpret=False: argument
checks, fold caches, launch plans, scratch allocation, grids, tile choice);
``torch.library.wrap_triton`` (the recording forward's launches) and ``program._launcher``
(a replay's launches) are replaced by a launcher that records the launch and returns.  What
this leaves out: Triton's own launcher (its argument binder, the specialization key, the driver
call), the CUDA caching allocator (meta allocations are cheaper), the device's own dispatch
keys, ``nn.Module.__call__``, and the head's two ATen calls (counted, not timed: their meta
kernels are Python); the device script's smoke stage measures the whole host time on the GPU
machine (benchmarks/device_smoke.py, item "host").

Reported: the steady state (the launch program replayed: what every eager forward after the
first costs), the first forward (which records the program), and the recording path alone
(programs dropped before each forward: what every forward cost before launch programs, plus
the recording).  Launch programs recorded inside the stub keep its launcher: build the model
inside, as :func:`measure` does.

Goal (issue #12 part 3): at most 0.3 ms per batch-1 forward beside the launches themselves.

Usage:
    python benchmarks/host_overhead.py [--variant torchvision] [--dtype bf16] [--batch 1]
                                       [--iters 200] [--profile 25] [--json out.json]
"""
import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class StubLauncher:
    """Stands in for ``wrap_triton(kernel)``: ``[grid](**kwargs)`` records the launch, runs nothing."""
    launches = []

    def __init__(self, fn):
        self.fn = fn

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            StubLauncher.launches.append(getattr(self.fn, "__name__", type(self.fn).__name__))
        return launch


@contextlib.contextmanager
def stubbed_cuda_path():
    """Route meta tensors through the CUDA launch code with the launches stubbed (see module doc)."""
    import torch.library as tl
    from googlenet_fast.backends import triton as tb
    from googlenet_fast.backends.triton import network as nw, program as pg
    fo, pl = tb.forward_op, tb.plan  # where _run / _launch and _merged_1x1 live
    saved = (tl.wrap_triton, fo._run, nw._run, nw._network_device, pg._launcher, pl._merged_1x1, nw.F,
             tb.AUTOTUNE_ENV in os.environ, os.environ.get(tb.AUTOTUNE_ENV))
    real_tb_run, real_nw_run, real_device = fo._run, nw._run, nw._network_device

    def tb_run(x, *args, pool=(0, 0)):  # _run(x, 12 weights, relu, out[, pool])
        if x.device.type != "meta":
            return real_tb_run(x, *args, pool=pool)
        if len(args) == 15:
            *args, pool = args
        *ws, relu, out = args
        fo._launch(x, *ws, relu, out, interpret=False, pool=pool)

    def nw_run(kind, x, weight, bias, ints, floats, out):
        if x.device.type != "meta":
            return real_nw_run(kind, x, weight, bias, ints, floats, out)
        nw._launch(kind, x, weight, bias, list(ints), list(floats), out, interpret=False)

    def network_device(x):  # meta stands in for cuda (fused_forward_supported's device test)
        return x.device.type == "meta" or real_device(x)

    real_merged = pl._merged_1x1

    def merged_1x1(w1, w3r, w5r):  # meta data pointers are all 0: assume the cache's adjacent rows
        if w1.device.type == "meta":
            return w1.as_strided((w1.shape[0] + w3r.shape[0] + w5r.shape[0], w1.shape[1]), (w1.stride(0), 1))
        return real_merged(w1, w3r, w5r)

    class HeadStub:  # the CUDA head is ATen's (C++ dispatch); on meta its Python meta kernels
        # would cost far more than on CUDA: counted as two launches, not timed
        @staticmethod
        def adaptive_avg_pool2d(y, size):
            StubLauncher.launches.append("aten::adaptive_avg_pool2d")
            return y.new_empty((y.shape[0], y.shape[1], 1, 1))

        @staticmethod
        def linear(y, w, b=None):
            StubLauncher.launches.append("aten::linear")
            return y.new_empty((y.shape[0], w.shape[0]))

    tl.wrap_triton = StubLauncher
    pg._launcher = lambda fn, grid: StubLauncher(fn)[grid]
    fo._run, nw._run, nw._network_device, pl._merged_1x1, nw.F = tb_run, nw_run, network_device, merged_1x1, HeadStub
    os.environ[tb.AUTOTUNE_ENV] = "0"  # the heuristic tile: Triton's autotuner is a launcher detail
    try:
        yield
    finally:
        tl.wrap_triton, fo._run, nw._run, nw._network_device, pg._launcher, pl._merged_1x1, nw.F = saved[:7]
        if saved[7]:
            os.environ[tb.AUTOTUNE_ENV] = saved[8]
        else:
            os.environ.pop(tb.AUTOTUNE_ENV, None)


def build(variant: str, dtype: torch.dtype):
    from googlenet_fast import GoogLeNet
    torch.manual_seed(0)
    with torch.device("meta"):
        model = GoogLeNet(aux_logits=False, init_weights=False, variant=variant)
    return model.eval().to(dtype)


def _times_ms(fn, iters):
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def measure(variant="torchvision", dtype=torch.bfloat16, batch=1, iters=200, profile=0, record_iters=20):
    """Per-forward host milliseconds of the CUDA branch of GoogLeNet.forward with the launches
    stubbed (see the module docstring): the steady state (median, min and mean over ``iters``
    forwards, the launch program replayed; the mean carries the preemptions of a loaded machine), the first forward (recording the program), the
    recording path alone (median over ``record_iters`` forwards with the programs dropped); the
    launches of a steady-state forward, the program's step counts, and whether a later
    forward rebuilt the program (it must not)."""
    from googlenet_fast.backends.triton import network as nw, program as pg
    model = build(variant, dtype)
    x = torch.empty(batch, 3, 224, 224, device="meta", dtype=dtype)
    with stubbed_cuda_path(), torch.no_grad():
        why = nw.fused_forward_supported(model, x)
        if why is not None:
            raise RuntimeError(f"the network path does not apply: {why}")

        def forward():  # GoogLeNet.forward's CUDA branch (ops.fused_network_forward past its device test)
            model._check_input(x)
            return nw.forward_or_none(model, x, forced=False)

        StubLauncher.launches.clear()
        t0 = time.perf_counter()
        y = forward()
        first_ms = (time.perf_counter() - t0) * 1e3
        recorded_launches = list(StubLauncher.launches)
        prog = nw.launch_program(model, x)
        if y is None or prog is None:
            raise RuntimeError("the first forward recorded no launch program")
        for _ in range(5):  # warm
            forward()
        StubLauncher.launches.clear()
        forward()
        launches = list(StubLauncher.launches)
        times = _times_ms(forward, iters)
        rebuilt = nw.launch_program(model, x) is not prog

        def recording_forward():
            pg.drop(model)
            forward()

        record_median = statistics.median(_times_ms(recording_forward, record_iters))
        forward()  # a program again
        prof_text = ""
        if profile:
            import cProfile
            import io
            import pstats
            pr = cProfile.Profile()
            pr.enable()
            for _ in range(50):
                forward()
            pr.disable()
            buf = io.StringIO()
            pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(profile)
            prof_text = buf.getvalue()
    return dict(variant=variant, dtype=str(dtype).replace("torch.", ""), batch=batch, iters=iters,
                median_ms=statistics.median(times), min_ms=min(times), mean_ms=statistics.mean(times),
                first_ms=first_ms, record_median_ms=record_median,
                launches=len(launches), launch_kernels=launches, recorded_launch_kernels=recorded_launches,
                program_launches=prog.launches, program_steps=len(prog.steps), rebuilt=rebuilt,
                profile=prof_text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", choices=("torchvision", "paper"), default="torchvision")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--profile", type=int, default=0, metavar="N", help="print the N costliest functions (cProfile)")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error(f"--batch: expected a positive batch size, got {args.batch}")
    if args.iters < 1:
        p.error(f"--iters: expected at least 1, got {args.iters}")
    if args.profile < 0:
        p.error(f"--profile: expected a number of functions >= 0, got {args.profile}")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        p.error(f"--json: the folder of {args.json!r} does not exist")
    r = measure(args.variant, DTYPES[args.dtype], args.batch, args.iters, args.profile)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    n_aten = sum(1 for k in r["launch_kernels"] if k.startswith("aten::"))
    print(f"host work per eager forward, launches stubbed ({r['variant']}, {r['dtype']}, batch {r['batch']}): "
          f"median {r['median_ms']:.3f} ms, min {r['min_ms']:.3f} ms, mean {r['mean_ms']:.3f} ms over {r['iters']} forwards (launch program "
          f"replayed); {r['launches']} launches stubbed ({r['launches'] - n_aten} Triton, {n_aten} ATen for the head); "
          f"machine {platform.processor() or platform.machine()}, torch {torch.__version__}, load {load}")
    print(f"first forward (records the program): {r['first_ms']:.3f} ms; recording path alone (programs "
          f"dropped, what every forward cost before launch programs): median {r['record_median_ms']:.3f} ms; "
          f"program: {r['program_steps']} steps, {r['program_launches']} Triton launches; "
          f"rebuilt by a later forward: {r['rebuilt']}")
    print(f"goal: <= 0.3 ms beside the launches -> {'MET' if r['median_ms'] <= 0.3 else 'NOT MET'}")
    if r["profile"]:
        print(r["profile"])
    if args.json:
        r = dict(r, load=load, torch=torch.__version__, date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        try:
            with open(args.json, "w") as f:
                json.dump(r, f, indent=1)
        except OSError as e:
            print(f"host_overhead.py: could not write --json {args.json!r}: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
