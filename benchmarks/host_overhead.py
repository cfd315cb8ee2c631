#!/usr/bin/env python
"""Host time of one eager GoogLeNet(fused=True) forward on the CUDA path, without a GPU: every
piece of Python and dispatch our package runs per forward, with the kernel launches stubbed out.

How: the model and the input live on the ``meta`` device; GoogLeNet's CUDA entry point
(googlenet_fast.ops.fused_network_forward -> backends/triton/network.fused_forward_triton) is
called as for a CUDA tensor; the ops' ``_run`` functions, which skip meta tensors, are redirected
into the CUDA launch code (``_launch`` with interpret=False: argument checks, fold caches, launch
plans, scratch allocation, grids, tile choice) and ``torch.library.wrap_triton`` is replaced by a
launcher that records the launch and returns.  What this leaves out: Triton's own launcher (its
argument binder, the specialization key, the driver call), the CUDA caching allocator (meta
allocations are cheaper) and the device's own dispatch keys; the device script's smoke stage
measures the whole host time on the GPU machine (benchmarks/device_smoke.py, item "host").

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
    from googlenet_fast.backends.triton import network as nw
    fo, pl = tb.forward_op, tb.plan  # where _run / _launch and _merged_1x1 live
    saved = (tl.wrap_triton, fo._run, nw._run, nw.fused_forward_supported, tb.AUTOTUNE_ENV in os.environ,
             os.environ.get(tb.AUTOTUNE_ENV), pl._merged_1x1)
    real_tb_run, real_nw_run = fo._run, nw._run

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

    real_supported = nw.fused_forward_supported

    def supported(model, x):  # the real checks, with meta standing in for cuda
        why = real_supported(model, x)
        return None if why is not None and "is on meta" in why else why

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

    saved_f = getattr(nw, "F", None)  # (older versions ran a Triton head: stubbed with the launches)
    if saved_f is not None:
        nw.F = HeadStub
    tl.wrap_triton = StubLauncher
    fo._run, nw._run, nw.fused_forward_supported, pl._merged_1x1 = tb_run, nw_run, supported, merged_1x1
    os.environ[tb.AUTOTUNE_ENV] = "0"  # the heuristic tile: Triton's autotuner is a launcher detail
    try:
        yield
    finally:
        tl.wrap_triton, fo._run, nw._run, nw.fused_forward_supported = saved[:4]
        pl._merged_1x1 = saved[6]
        if saved_f is not None:
            nw.F = saved_f
        if saved[4]:
            os.environ[tb.AUTOTUNE_ENV] = saved[5]
        else:
            os.environ.pop(tb.AUTOTUNE_ENV, None)


def build(variant: str, dtype: torch.dtype):
    from googlenet_fast import GoogLeNet
    torch.manual_seed(0)
    with torch.device("meta"):
        model = GoogLeNet(aux_logits=False, init_weights=False, variant=variant)
    return model.eval().to(dtype)


def measure(variant="torchvision", dtype=torch.bfloat16, batch=1, iters=200, profile=0):
    """Per-forward host milliseconds (median, min over ``iters``) and the stubbed launch count."""
    from googlenet_fast.backends.triton import network as nw
    model = build(variant, dtype)
    x = torch.empty(batch, 3, 224, 224, device="meta", dtype=dtype)
    with stubbed_cuda_path(), torch.no_grad():
        why = nw.fused_forward_supported(model, x)
        if why is not None:
            raise RuntimeError(f"the network path does not apply: {why}")
        for _ in range(5):  # warm: fold caches filled, modules imported
            nw.fused_forward_triton(model, x)
        StubLauncher.launches.clear()
        nw.fused_forward_triton(model, x)
        launches = list(StubLauncher.launches)
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            nw.fused_forward_triton(model, x)
            times.append((time.perf_counter() - t0) * 1e3)
        prof_text = ""
        if profile:
            import cProfile
            import io
            import pstats
            pr = cProfile.Profile()
            pr.enable()
            for _ in range(50):
                nw.fused_forward_triton(model, x)
            pr.disable()
            buf = io.StringIO()
            pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(profile)
            prof_text = buf.getvalue()
    return dict(variant=variant, dtype=str(dtype).replace("torch.", ""), batch=batch, iters=iters,
                median_ms=statistics.median(times), min_ms=min(times), launches=len(launches),
                launch_kernels=launches, profile=prof_text)


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
          f"median {r['median_ms']:.3f} ms, min {r['min_ms']:.3f} ms over {r['iters']} forwards; "
          f"{r['launches']} launches stubbed ({r['launches'] - n_aten} Triton, {n_aten} ATen for the head); machine {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, load {load}")
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
