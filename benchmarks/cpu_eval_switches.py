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
    grad       eval calls without torch.no_grad (the parameters require grad, so the output
               carries autograd history; no backward is run), beside no_grad calls, fused and
               torchvision eager (float32).  The fused path folds BatchNorm inside the autograd
               graph on every such call (cpu-eval-grad-2026-12-05.md).
    contention fused and torchvision eager (no_grad) while --hogs busy-loop processes compete for
               the cores (an oversubscribed server): median and worst call of each, alternated.
               The fused path once stalled far longer than torchvision's there (batch-1 calls of
               up to 1.6 s against 24 ms, 2026-12-04; cpu-contention-2026-12-05.md).
    batches    each batch size of --batches alone, then all of them in turn, call after call (a
               server batching what arrives).  The prepacked-weight cache once held 256 keys,
               fewer than 8 batch sizes need, and evicted on every call
               (cpu-batch-cycling-2026-12-05.md).  Cycling should time as each size alone.

Usage:
    python benchmarks/cpu_eval_switches.py threads [--threads 2 1 2] [--batch 1] [--dtype bfloat16]
    python benchmarks/cpu_eval_switches.py autocast [--batch 1]
    python benchmarks/cpu_eval_switches.py batches [--batches 1 2 3 4 5 6 7 8] [--dtype bfloat16]
    python benchmarks/cpu_eval_switches.py grad [--batch 1]
    python benchmarks/cpu_eval_switches.py contention [--hogs 2] [--batch 1]
"""
import argparse
import os
import statistics
import subprocess
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


def grad_modes(nets, x, forwards: int, warmup: int = 3):
    """[(label, median ms)]: fused and torchvision eager, each under no_grad and with grad
    enabled (forward only), alternated call by call."""
    calls = [(f"{name} {mode}", model, mode) for name, model in (("fused", nets.fused), ("torchvision", nets.torchvision))
             for mode in ("no_grad", "grad enabled")]
    times = {label: [] for label, _, _ in calls}
    for i in range(warmup + forwards):
        for label, model, mode in calls:
            with torch.set_grad_enabled(mode != "no_grad"):
                t0 = time.perf_counter()
                model(x)
                t = time.perf_counter() - t0
            if i >= warmup:
                times[label].append(t)
    return [(label, statistics.median(ts) * 1e3) for label, ts in times.items()]


# A busy loop that ends when its parent does (SIGTERM or SIGKILL of this script leave no finally
# to kill it): it checks its parent's pid between rounds of spinning.  The parent's pid is passed
# in, not read at the hog's start: a parent killed while the hog's interpreter was still starting
# would otherwise be missed (the hog would take its new parent for the old and spin on).
_HOG = "import os, sys\nparent = int(sys.argv[1])\nwhile os.getppid() == parent:\n    for _ in range(100000): pass\n"


def hog_command() -> list:
    """The argv of one busy-loop process whose parent is this process."""
    return [sys.executable, "-c", _HOG, str(os.getpid())]


def under_contention(nets, x, forwards: int, hogs: int, warmup: int = 3):
    """[(label, ms)]: median and worst no_grad call of fused and torchvision eager, alternated,
    while ``hogs`` busy-loop processes run (killed before returning)."""
    procs = [subprocess.Popen(hog_command()) for _ in range(hogs)]
    try:
        time.sleep(0.5)
        times = {"fused": [], "torchvision": []}
        with torch.no_grad():
            for i in range(warmup + forwards):
                for name in times:
                    model = getattr(nets, name)
                    t0 = time.perf_counter()
                    model(x)
                    if i >= warmup:
                        times[name].append(time.perf_counter() - t0)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return [row for name, ts in times.items()
            for row in ((f"{name} median", statistics.median(ts) * 1e3), (f"{name} worst", max(ts) * 1e3))]


def batch_cycling(model, xs, forwards: int, warmup: int = 3):
    """[(label, median ms)]: each input of ``xs`` alone, then all of them in turn (one call each
    per round, ``forwards`` rounds)."""
    out = []
    with torch.no_grad():
        for x in xs:
            for _ in range(warmup):
                model(x)
            out.append((f"batch {x.shape[0]} alone", _median_ms(lambda: model(x), forwards)))
        times = [[] for _ in xs]
        for _ in range(forwards):
            for x, ts in zip(xs, times):
                t0 = time.perf_counter()
                model(x)
                ts.append(time.perf_counter() - t0)
    out += [(f"batch {x.shape[0]} cycling", statistics.median(ts) * 1e3) for x, ts in zip(xs, times)]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("switch", choices=["threads", "autocast", "batches", "grad", "contention"])
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1, 2],
                   help="threads: the thread counts, in order")
    p.add_argument("--batch", type=int, default=1, help="threads, autocast, grad, contention: the batch size")
    p.add_argument("--hogs", type=int, default=2, help="contention: busy-loop processes to start")
    p.add_argument("--batches", type=int, nargs="+", default=list(range(1, 9)),
                   help="batches: the batch sizes, cycled in this order")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16",
                   help="threads: model and input dtype (autocast: always a float32 model)")
    p.add_argument("--forwards", type=int, default=30, help="timed forwards per phase")
    a = p.parse_args(argv)
    if a.batch < 1 or a.forwards < 1 or min(a.threads) < 1 or min(a.batches) < 1:
        p.error("--batch, --forwards and every --threads and --batches value must be >= 1")
    if a.hogs < 0:
        p.error("--hogs must be >= 0")
    cores = os.cpu_count() or 1
    if max(a.threads) > 4 * cores:
        p.error(f"--threads: at most {4 * cores} (4x this machine's {cores} cores), got {max(a.threads)}")
    try:
        run(a)
    except KeyboardInterrupt:
        print("cpu_eval_switches: interrupted", file=sys.stderr)
        sys.exit(130)
    except (RuntimeError, MemoryError) as e:  # e.g. an allocation a --batch too large cannot get
        print(f"cpu_eval_switches: error: {e}", file=sys.stderr)
        sys.exit(1)


def run(a):
    """The measurement ``main`` parsed ``a`` for; prints its two or three lines."""
    dtype = torch.float32 if a.switch in ("autocast", "grad") else DTYPES[a.dtype]
    nets = build_networks(seed=0, dtype=dtype)
    model = nets.fused
    gen = torch.Generator().manual_seed(0)

    def image(n):
        return torch.rand(n, 3, 224, 224, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)

    if a.switch == "threads":
        rows = thread_switches(model, image(a.batch), a.threads, a.forwards)
    elif a.switch == "autocast":
        rows = autocast_switches(model, image(a.batch), a.forwards)
    elif a.switch == "grad":
        rows = grad_modes(nets, image(a.batch), a.forwards)
    elif a.switch == "contention":
        rows = under_contention(nets, image(a.batch), a.forwards, a.hogs)
    else:
        rows = batch_cycling(model, [image(n) for n in a.batches], a.forwards)
    load = load_average()
    batch = f"batches {' '.join(map(str, a.batches))}" if a.switch == "batches" else f"batch {a.batch}"
    if a.switch == "contention":
        batch += f", {a.hogs} busy-loop processes"
    print(f"# {a.switch}: {str(dtype).replace('torch.', '')} model, {batch}, median of {a.forwards} "
          f"forwards per phase, torch {torch.__version__}, {torch.get_num_threads()} threads at the end, "
          f"load {' '.join(f'{v:.2f}' for v in load) if load else 'n/a'}")
    print(", ".join(f"{label} {ms:.2f} ms" for label, ms in rows))
    from googlenet_fast.backends import native
    if native.available() and hasattr(native._C, "_prepacked_weight_tensors"):
        print(f"prepacked-weight cache: {native._C._prepacked_weight_count()} keys, "
              f"{native._C._prepacked_weight_tensors()} packed tensors")


if __name__ == "__main__":
    main()
