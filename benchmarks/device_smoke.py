#!/usr/bin/env python
"""Smoke stage of benchmarks/device_check.sh: the most valuable GPU numbers first, in ~90 s.

Each item runs on its own (a failure is recorded with its traceback and the next item runs) and
the JSON is rewritten after every item and on SIGINT/SIGTERM, so a run cut short keeps what it
measured.  Items, in order:
  ceilings   a large device copy (GB/s, read + write) and a bf16 8192^3 torch.mm (TFLOP/s):
             the roofline every other number is read against (googlenet_fast.roofline);
  network    GoogLeNet(fused=True) vs torchvision's googlenet, same weights (BatchNorm statistics
             calibrated on random images, so the logits depend on the input), eval, channels_last,
             no_grad, bf16 and fp32, batch 1 and 256: median ms of each (triton.testing.do_bench)
             and the error of each against a float64 torchvision reference (all of batch 1, the
             first 8 images of batch 256): max |out - ref| / max |ref| and ||out - ref|| / ||ref||;
  pooled     googlenet_fast.ops' pooled Inception op (inception_pooled_triton: maxpool3 computed
             in 4a's stage-1 loaders) vs max_pool2d + the plain fused op (the A/B of issue #12),
             bf16, batch 1 and 256: error vs float64 and time of each;
  graph      googlenet_fast.capture_cuda_graph at batch 1 bf16: replay error vs eager, and the
             number of kernels one replay runs and one eager forward launches (torch.profiler);
  kernels    per-kernel CUDA times of the fused forward at batch 256 bf16 (torch.profiler, 3
             forwards), and of torchvision's for comparison;
  choices    the measured path choices cached by googlenet_fast.autotune_table (last)
  host       host time of one eager forward at batch 1 bf16 (wall clock from call to return, no
             synchronization inside; median of 30), fused and torchvision; the network path
             forced, its launch program replayed and (programs dropped) the recording path; and
             per call of the Triton Inception op: through the op, its Python body directly (with
             and without wrap_triton's higher-order op), and with Triton's launches stubbed (the
             difference: Triton's launcher per launch).

Usage:
    python benchmarks/device_smoke.py --json smoke.json [--budget-s 90] [--items network,graph]
    python benchmarks/device_smoke.py --dry-run --json /tmp/s.json   # CPU, tiny sizes: walks every
                                                                      # item's logic, measures nothing
"""
import argparse
import json
import math
import os
import signal
import sys
import time
import traceback

if "--dry-run" in sys.argv:  # before triton is imported anywhere
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from googlenet_fast.bench import device_timer, speedup  # noqa: E402  (one timer, one ratio)

ITEMS = ("ceilings", "network", "pooled", "graph", "kernels", "host", "choices")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


class Run:
    """Holds the results and rewrites the JSON after every item."""

    def __init__(self, path, args):
        self.path, self.args = path, args
        self.t0 = time.time()
        self.doc = {"schema": "googlenet_fast.device_smoke/1", "args": vars(args), "items": {},
                    "errors": {}, "skipped": {}}

    def left(self):
        return self.args.budget_s - (time.time() - self.t0)

    def save(self):
        self.doc["elapsed_s"] = round(time.time() - self.t0, 2)
        if not self.path:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.doc, f, indent=1, default=str)
        os.replace(tmp, self.path)

    def item(self, name, fn, need_s):
        if need_s > 0 and self.left() < need_s:  # (need 0: always runs, e.g. a snapshot)
            self.doc["skipped"][name] = f"{self.left():.0f} s of the budget left, needs ~{need_s} s"
            print(f"[smoke] {name}: SKIPPED ({self.doc['skipped'][name]})", flush=True)
            self.save()
            return
        t = time.time()
        print(f"[smoke] {name} ...", flush=True)
        try:
            self.doc["items"][name] = fn(self)
            print(f"[smoke] {name}: ok in {time.time() - t:.1f} s", flush=True)
        except KeyboardInterrupt:
            self.doc["errors"][name] = "interrupted (SIGINT/SIGTERM)"
            raise
        except Exception as e:  # record and keep going: the next item may still work
            self.doc["errors"][name] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"
            print(f"[smoke] {name}: FAILED {type(e).__name__}: {e}", flush=True)
            traceback.print_exc()
        finally:
            self.save()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, device, warmup_ms=10, rep_ms=60):
    """Median ms per call (googlenet_fast.bench.device_timer: do_bench on CUDA, wall clock on CPU)."""
    return device_timer(fn, device.type, warmup_ms, rep_ms)


def errors(out, ref):
    """max |out - ref| / max |ref| and ||out - ref|| / ||ref|| in float64; NaN anywhere -> inf."""
    d = out.double() - ref.double()
    if not torch.isfinite(out).all():
        return {"max_rel": math.inf, "norm_rel": math.inf, "nonfinite": int((~torch.isfinite(out)).sum())}
    return {"max_rel": (d.abs().max() / ref.double().abs().max().clamp_min(1e-30)).item(),
            "norm_rel": (d.norm() / ref.double().norm().clamp_min(1e-30)).item()}


# ------------------------------------------------------------------------------------------------
def do_ceilings(run):
    from googlenet_fast.roofline import measure_ceilings
    dev = run.args.device
    if dev.type != "cuda":
        return measure_ceilings(dev, [torch.float32], copy_bytes=1 << 20, matmul_n=64, min_run_time=0.01)
    return measure_ceilings(dev, [torch.bfloat16], copy_bytes=2 << 30, matmul_n=8192, min_run_time=0.5)


_NETS = {}


def nets(run, dtype):
    """(fused, torchvision) for dtype, plus a float64 torchvision reference (built once)."""
    if dtype not in _NETS:
        from googlenet_fast import bench
        calib = torch.randn(16, 3, run.args.hw, run.args.hw, generator=torch.Generator().manual_seed(1))
        n = bench.build_networks(seed=0, device=run.args.device, dtype=dtype, calibration=calib)
        if "ref" not in _NETS:
            ref = bench.build_networks(seed=0, device=run.args.device, dtype=torch.float64, calibration=calib)
            _NETS["ref"] = ref.torchvision
        _NETS[dtype] = (n.fused, n.torchvision)
    return _NETS[dtype] + (_NETS["ref"],)


def do_network(run):
    rows = []
    dev = run.args.device
    for dname in run.args.dtypes:
        dt = DTYPES[dname]
        fused, tv, ref_model = nets(run, dt)
        for n in run.args.batches:
            x = torch.randn(n, 3, run.args.hw, run.args.hw, device=dev).contiguous(memory_format=torch.channels_last)
            xd = x.to(dt)
            with torch.no_grad():
                ref = ref_model(x[:8].double())
                y_f, y_t = fused(xd), tv(xd)
                row = dict(dtype=dname, batch=n, hw=run.args.hw,
                           fused_err=errors(y_f[:8], ref), torchvision_err=errors(y_t[:8], ref),
                           fused_vs_torchvision_err=errors(y_f, y_t.double()),
                           top1_agree=float((y_f.argmax(1) == y_t.argmax(1)).float().mean()))
                row["fused_ms"] = time_ms(lambda: fused(xd), dev)
                row["torchvision_ms"] = time_ms(lambda: tv(xd), dev)
            row["speedup"] = speedup(row["torchvision_ms"], row["fused_ms"])
            rows.append(row)
            print(f"  network {dname} b{n}: fused {row['fused_ms']:.3f} ms, torchvision "
                  f"{row['torchvision_ms']:.3f} ms, x{row['speedup']:.2f}; err vs fp64 fused "
                  f"{row['fused_err']['norm_rel']:.2e} tv {row['torchvision_err']['norm_rel']:.2e}", flush=True)
            run.doc["items"]["network"] = rows  # partial rows survive an interruption
            run.save()
    return rows


def do_pooled(run):
    """4a's weights over maxpool3 (3x3/2, ceil) of a 28x28 map: pooled op vs pool + plain op."""
    import torch.nn.functional as F
    import googlenet_fast
    from googlenet_fast.backends import triton as tb
    fused, _, _ = nets(run, torch.bfloat16)
    dev = run.args.device
    dt = torch.bfloat16 if dev.type == "cuda" else torch.float16  # interpreter: no bf16 dots
    ws = [None if w is None else w.to(dt) for w in fused.inception4a.folded_params(torch.bfloat16)]
    hw = 28 if dev.type == "cuda" else 5
    rows = []
    for n in run.args.batches:
        x = torch.randn(n, 480, hw, hw, device=dev, dtype=dt).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            pooled_x = F.max_pool2d(x, 3, 2, ceil_mode=True)
            from googlenet_fast.backends.reference import inception_reference
            ref = inception_reference(pooled_x.double(), *[None if w is None else w.double() for w in ws], relu=True)
            a = tb.inception_pooled(x, *ws, relu=True, pool=(3, 2))
            b = googlenet_fast.inception(pooled_x, *ws, relu=True, backend="triton")
            row = dict(batch=n, dtype=str(dt)[6:], pooled_err=errors(a, ref), pool_then_op_err=errors(b, ref),
                       pooled_ms=time_ms(lambda: tb.inception_pooled(x, *ws, relu=True, pool=(3, 2)), dev),
                       pool_then_op_ms=time_ms(lambda: googlenet_fast.inception(
                           F.max_pool2d(x, 3, 2, ceil_mode=True), *ws, relu=True, backend="triton"), dev))
        row["pooled_speedup"] = speedup(row["pool_then_op_ms"], row["pooled_ms"])
        print(f"  pooled b{n}: pooled {row['pooled_ms']:.3f} ms, pool+op {row['pool_then_op_ms']:.3f} ms "
              f"(x{row['pooled_speedup']:.2f}); err {row['pooled_err']['norm_rel']:.2e}", flush=True)
        rows.append(row)
    return rows


def kernel_events(fn, device, steps=1):
    """(count, {name: [calls, total device us]}) of the device kernels run by ``steps`` calls."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            fn()
        sync(device)
    per = {}
    count = 0
    for e in prof.events():
        if device.type == "cuda" and e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        if device.type != "cuda" and not e.name.startswith(("googlenet_fast::", "aten::")):
            continue
        count += 1
        k = per.setdefault(e.name, [0, 0.0])
        k[0] += 1
        k[1] += float(e.device_time if hasattr(e, "device_time") else e.cuda_time)
    return count, per


def do_graph(run):
    import googlenet_fast
    dev = run.args.device
    if dev.type != "cuda":
        return {"note": "CUDA graphs need a GPU (dry run: skipped)"}
    fused, _, _ = nets(run, torch.bfloat16)
    x = torch.randn(1, 3, run.args.hw, run.args.hw, device=dev, dtype=torch.bfloat16).contiguous(
        memory_format=torch.channels_last)
    with torch.no_grad():
        eager = fused(x).clone()
    g = googlenet_fast.capture_cuda_graph(fused, x)
    out = g(x).clone()
    n_replay, per_replay = kernel_events(lambda: g.graph.replay(), dev)
    with torch.no_grad():
        n_eager, per_eager = kernel_events(lambda: fused(x), dev)
    res = dict(replay_kernels=n_replay, eager_kernels=n_eager, replay_vs_eager=errors(out, eager.double()),
               replay_ms=time_ms(lambda: g.graph.replay(), dev),
               replay_top=sorted(per_replay.items(), key=lambda kv: -kv[1][0])[:15],
               eager_top=sorted(per_eager.items(), key=lambda kv: -kv[1][0])[:15])
    print(f"  graph: {n_replay} kernels per replay, {n_eager} per eager forward, replay "
          f"{res['replay_ms']:.3f} ms, err vs eager {res['replay_vs_eager']['max_rel']:.1e}", flush=True)
    return res


def do_kernels(run):
    dev = run.args.device
    n = max(run.args.batches)
    fused, tv, _ = nets(run, torch.bfloat16 if dev.type == "cuda" else torch.float32)
    dt = next(fused.parameters()).dtype
    x = torch.randn(n, 3, run.args.hw, run.args.hw, device=dev, dtype=dt).contiguous(memory_format=torch.channels_last)
    res = {}
    with torch.no_grad():
        for name, m in (("fused", fused), ("torchvision", tv)):
            m(x)
            sync(dev)
            count, per = kernel_events(lambda: m(x), dev, steps=3)
            top = sorted(((k, c // 3, us / 3) for k, (c, us) in per.items()), key=lambda r: -r[2])
            res[name] = dict(batch=n, kernels_per_forward=count / 3, total_us=sum(r[2] for r in top),
                             top=[dict(kernel=k[:160], calls=c, us_per_forward=round(us, 2)) for k, c, us in top[:30]])
            print(f"  kernels {name} b{n}: {count / 3:.0f} per forward, {res[name]['total_us']:.0f} us of kernels", flush=True)
            for r in res[name]["top"][:12]:
                print(f"    {r['us_per_forward']:9.1f} us  x{r['calls']:<3d} {r['kernel'][:100]}", flush=True)
    return res


def do_host(run):
    dev = run.args.device
    fused, tv, _ = nets(run, torch.bfloat16 if dev.type == "cuda" else torch.float32)
    dt = next(fused.parameters()).dtype
    x = torch.randn(1, 3, run.args.hw, run.args.hw, device=dev, dtype=dt).contiguous(memory_format=torch.channels_last)
    res = {}
    with torch.no_grad():
        for name, m in (("fused", fused), ("torchvision", tv)):
            for _ in range(3):
                m(x)
            sync(dev)
            ts = []
            for _ in range(30 if dev.type == "cuda" else 3):
                t = time.perf_counter()
                m(x)
                ts.append((time.perf_counter() - t) * 1e3)
                sync(dev)
            res[name] = dict(host_ms_median=sorted(ts)[len(ts) // 2], host_ms_min=min(ts))
            print(f"  host {name} b1: {res[name]['host_ms_median']:.3f} ms per forward (min {min(ts):.3f})", flush=True)
    if dev.type == "cuda":
        try:
            res["network_path"] = network_path_host(fused, x)
        except Exception as e:
            res["network_path"] = f"failed: {type(e).__name__}: {e}"
            print(f"  host network path failed: {type(e).__name__}: {e}", flush=True)
        try:
            res["op_breakdown"] = op_host_breakdown(fused)
        except Exception as e:  # keep the forward times above
            res["op_breakdown"] = f"failed: {type(e).__name__}: {e}"
            print(f"  host op breakdown failed: {type(e).__name__}: {e}", flush=True)
    return res


def network_path_host(fused, x):
    """Host milliseconds per batch-1 forward of the network path forced (as
    $GOOGLENET_FAST_BACKEND=triton), launches included: the launch program replayed (every
    eager forward after the first), and the recording path (the programs dropped before each
    forward: what every forward cost before launch programs, plus the recording)."""
    from googlenet_fast.backends.triton import network as nw, program as pg
    out = {}
    with torch.no_grad():
        for name, before in (("replayed", lambda: None), ("recording_path", lambda: pg.drop(fused))):
            for _ in range(3):
                before()
                nw.forward_or_none(fused, x, forced=True)
            torch.cuda.synchronize()
            ts = []
            for _ in range(30):
                before()
                t = time.perf_counter()
                nw.forward_or_none(fused, x, forced=True)
                ts.append((time.perf_counter() - t) * 1e3)
                torch.cuda.synchronize()
            out[f"{name}_ms_median"], out[f"{name}_ms_min"] = sorted(ts)[len(ts) // 2], min(ts)
        prog = nw.launch_program(fused, x)
        out["program_launches"] = prog.launches if prog is not None else None
    print(f"  host network path b1: replayed {out['replayed_ms_median']:.3f} ms, recording path "
          f"{out['recording_path_ms_median']:.3f} ms per forward ({out['program_launches']} Triton launches)", flush=True)
    return out


def op_host_breakdown(fused):
    """Host microseconds per call of the Triton Inception op (inception5b's folded weights, batch 1,
    two launches), with Triton's launches as they are and with them stubbed out: the difference
    is Triton's own launcher (binder, specialization key, driver call) for two launches."""
    import torch.library as tl
    from googlenet_fast.backends import triton as tb
    ws = fused.inception5b.folded_params(torch.bfloat16)
    x = torch.randn(1, 832, 7, 7, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    from googlenet_fast.backends.triton import program
    impl = tb.EAGER_IMPLS[tb.OP_NAME]

    def per_call_us(fn, n=200):
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        dt = (time.perf_counter() - t) / n * 1e6
        torch.cuda.synchronize()
        return dt

    class Stub:
        def __init__(self, fn):
            pass

        def __getitem__(self, grid):
            return lambda *a, **k: None

    out = {}
    with torch.no_grad():
        out["op_dispatch_us"] = per_call_us(lambda: torch.ops.googlenet_fast.inception_triton(x, *ws, True))
        out["direct_us"] = per_call_us(lambda: impl(x, *ws, True))

        def direct_no_hop():
            with program.no_hop():
                impl(x, *ws, True)

        out["direct_no_hop_us"] = per_call_us(direct_no_hop)
        real = tl.wrap_triton
        tl.wrap_triton = Stub
        try:
            out["direct_launches_stubbed_us"] = per_call_us(lambda: impl(x, *ws, True))
        finally:
            tl.wrap_triton = real
    out["triton_launcher_us_per_launch"] = (out["direct_no_hop_us"] - out["direct_launches_stubbed_us"]) / 2
    print("  host per Inception op call (us): " + ", ".join(f"{k} {v:.1f}" for k, v in out.items()), flush=True)
    return out


def do_choices(run):
    """The one-time measured choices made so far (backend per Inception shape, network vs module
    path, pooled vs separate transition pools, conv1 kernel): googlenet_fast.autotune_table."""
    from googlenet_fast import autotune_table
    with autotune_table._lock:
        return dict(sorted(autotune_table._choices.items()))


FUNCS = dict(ceilings=(do_ceilings, 5), network=(do_network, 20), pooled=(do_pooled, 8), graph=(do_graph, 8),
             kernels=(do_kernels, 8), host=(do_host, 3), choices=(do_choices, 0))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default="", help="where to write the results (rewritten after every item)")
    p.add_argument("--budget-s", type=float, default=90.0, help="items that would start later are skipped")
    p.add_argument("--items", default=",".join(ITEMS), help=f"comma-separated subset of {','.join(ITEMS)}")
    p.add_argument("--batches", default="1,256")
    p.add_argument("--dtypes", default="bf16,fp32")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: walks every item, measures nothing")
    args = p.parse_args(argv)
    items = [i for i in args.items.split(",") if i]
    bad = [i for i in items if i not in ITEMS]
    if bad:
        p.error(f"--items: unknown {bad}; expected a subset of {list(ITEMS)}")
    try:
        args.batches = [int(b) for b in args.batches.split(",") if b]
    except ValueError:
        p.error(f"--batches: expected comma-separated integers, got {args.batches!r}")
    if not args.batches or min(args.batches) < 1:
        p.error(f"--batches: expected one or more positive batch sizes, got {args.batches}")
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    if any(d not in DTYPES for d in args.dtypes):
        p.error(f"--dtypes: expected a subset of {sorted(DTYPES)}, got {args.dtypes}")
    if args.dry_run:  # tiny sizes whatever --batches says (checked above all the same)
        args.device, args.hw, args.batches = torch.device("cpu"), 64, [1, 2]
    else:
        if not torch.cuda.is_available():
            p.error("no CUDA device visible (use --dry-run to check the script on a CPU)")
        args.device, args.hw = torch.device("cuda"), 224
        torch.backends.cudnn.benchmark = True
        os.environ.setdefault("GOOGLENET_FAST_TRITON_AUTOTUNE", "0")  # heuristic tiles: no autotuning here

    run = Run(args.json, args)
    if args.device.type == "cuda":
        run.doc["device"] = torch.cuda.get_device_name()
    run.doc["torch"] = torch.__version__

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    try:
        for name in items:
            fn, need = FUNCS[name]
            run.item(name, fn, need)
    except KeyboardInterrupt:
        print("[smoke] interrupted; results so far are in the JSON", flush=True)
        run.save()
        return 130
    run.save()
    return 1 if run.doc["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
