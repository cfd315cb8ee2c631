"""Per-Inception-block GPU table: fused (triton; cuda when built) vs torchvision's eager block.

For each Table-1 module (torchvision's layout: the "5x5" branch is 3x3) at batch 1, 32 and 256,
bfloat16, channels_last, eval mode (BatchNorm folded into the fused op's weights, as the model
does; torchvision runs Conv+BN+ReLU per branch, cuDNN, then torch.cat):
  * median time per call by triton.testing.do_bench (eager launches, CPU overhead included), and
    the same with the call replayed from a CUDA graph (kernel time without launch overhead);
  * achieved TFLOP/s (2 x multiply-adds of the four branches / time) and GB/s (the fused design's
    compulsory bytes: x, weights, the output and the r3/r5 scratch written and read once, over
    the time; the same byte count for both, so GB/s ratios equal time ratios);
  * ratio = torchvision time / fused time (> 1: fused faster), and max |fused - torchvision| /
    max |torchvision| as a sanity check.
Then the whole network (googlenet_fast.GoogLeNet(fused=True) vs torchvision's googlenet, same
weights, eval, bf16, channels_last) at batch 1 and 256.

Usage:
    python benchmarks/gpu_blocks.py [--batches 1,32,256] [--json out.json] [--no-network]
    python benchmarks/gpu_blocks.py --dry-run     # CPU, Triton interpreter, tiny sizes: checks the
                                                 # script's logic without a GPU (not a benchmark)
--prewarm N compiles the Triton kernels for every (block, batch, tile configuration) the table
will autotune over in N processes first (Triton's on-disk cache then serves the timed process).
"""
import argparse
import json
import os
import platform
import sys
import time

if "--dry-run" in sys.argv:  # before triton is imported anywhere
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from googlenet_fast.bench import geomean, speedup  # noqa: E402  (one definition of a ratio)
from googlenet_fast.table1 import TABLE1  # noqa: E402  (the paper's Table 1, one copy)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def block_flops(cfg, n, hw, k5=3):
    cin, c1, r3, c3, r5, c5, cp, _ = cfg
    macs = n * hw * hw * (cin * (c1 + r3 + r5 + cp) + 9 * r3 * c3 + k5 * k5 * r5 * c5)
    return 2 * macs


def block_bytes(cfg, n, hw, elem, k5=3):
    cin, c1, r3, c3, r5, c5, cp, _ = cfg
    p = n * hw * hw
    weights = cin * (c1 + r3 + r5 + cp) + 9 * r3 * c3 + k5 * k5 * r5 * c5
    return elem * (p * cin + weights + p * (c1 + c3 + c5 + cp) + 2 * p * (r3 + r5))


def fold(block):
    """(weight, bias) of a torchvision BasicConv2d with its eval BatchNorm folded in."""
    bn = block.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    w = block.conv.weight * scale.reshape(-1, 1, 1, 1)
    b = bn.bias - bn.running_mean * scale
    return w, b


def fused_args(tv_block, dtype):
    """The fused op's 12 weight arguments in the model's cached layout: the three sibling 1x1
    weights adjacent rows of one buffer, KxK weights channels_last."""
    (w1, b1), (w3r, b3r), (w3, b3), (w5r, b5r), (w5, b5), (wp, bp) = (
        fold(b) for b in (tv_block.branch1, tv_block.branch2[0], tv_block.branch2[1],
                          tv_block.branch3[0], tv_block.branch3[1], tv_block.branch4[1]))
    with torch.no_grad():
        merged = torch.cat([w1, w3r, w5r], 0).to(dtype).contiguous()
        c1, r3 = w1.shape[0], w3r.shape[0]
        w1, w3r, w5r = merged[:c1], merged[c1:c1 + r3], merged[c1 + r3:]
        cl = dict(memory_format=torch.channels_last)
        return [w1, b1.to(dtype), w3r, b3r.to(dtype), w3.to(dtype).contiguous(**cl), b3.to(dtype),
                w5r, b5r.to(dtype), w5.to(dtype).contiguous(**cl), b5.to(dtype), wp.to(dtype).contiguous(),
                bp.to(dtype)]


def make_tv_block(cfg, device, dtype, seed):
    from torchvision.models.googlenet import Inception as TVInception
    torch.manual_seed(seed)
    cin, c1, r3, c3, r5, c5, cp, _ = cfg
    blk = TVInception(cin, c1, r3, c3, r5, c5, cp)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that folding matters
        for m in blk.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return blk.eval().to(device=device, dtype=dtype, memory_format=torch.channels_last)


class Timer:
    def __init__(self, device, warmup_ms, rep_ms, graphs):
        self.device, self.warmup, self.rep, self.graphs = device, warmup_ms, rep_ms, graphs

    def __call__(self, fn):
        """(eager median ms, CUDA-graph median ms or None)."""
        from googlenet_fast.bench import device_timer
        eager = device_timer(fn, self.device, self.warmup, self.rep)
        if self.device == "cpu":
            return eager, None
        import triton.testing
        graph = None
        if self.graphs:
            try:
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    fn()
                torch.cuda.current_stream().wait_stream(s)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    fn()
                graph = triton.testing.do_bench(g.replay, warmup=self.warmup, rep=self.rep,
                                                return_mode="median")
            except Exception as e:  # report, keep going
                print(f"  (CUDA graph capture failed: {type(e).__name__}: {e})", flush=True)
        return eager, graph


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def bench_blocks(args, device, dtype, timer, backends, sink=None, save=lambda: None):
    import googlenet_fast
    rows = [] if sink is None else sink
    elem = torch.tensor([], dtype=dtype).element_size()
    for name, cfg in TABLE1.items():
        if args.blocks and name not in args.blocks:
            continue
        tv = make_tv_block(cfg, device, dtype, seed=hash(name) % 1000)
        wargs = fused_args(tv, dtype)
        for n in args.batches:
            hw = args.hw or cfg[-1]
            x = torch.randn(n, cfg[0], hw, hw, device=device, dtype=dtype).contiguous(
                memory_format=torch.channels_last)
            flops, nbytes = block_flops(cfg, n, hw), block_bytes(cfg, n, hw, elem)
            with torch.no_grad():
                ref = tv(x)
                t_tv, g_tv = timer(lambda: tv(x))
                for be in backends:
                    y = googlenet_fast.inception(x, *wargs, relu=True, backend=be)
                    err = rel_err(y, ref)
                    t_f, g_f = timer(lambda: googlenet_fast.inception(x, *wargs, relu=True, backend=be))
                    row = dict(block=name, batch=n, hw=hw, dtype=str(dtype)[6:], backend=be,
                               fused_ms=t_f, torchvision_ms=t_tv, ratio=speedup(t_tv, t_f),
                               fused_graph_ms=g_f, torchvision_graph_ms=g_tv,
                               graph_ratio=speedup(g_tv, g_f),
                               fused_tflops=flops / t_f / 1e9, torchvision_tflops=flops / t_tv / 1e9,
                               fused_gbs=nbytes / t_f / 1e6, torchvision_gbs=nbytes / t_tv / 1e6,
                               max_rel_err=err, gflop=flops / 1e9, mbytes=nbytes / 1e6)
                    rows.append(row)
                    save()
                    print(fmt_row(row), flush=True)
            del x, ref
        del tv, wargs
    return rows


HEADER = (f"{'block':5s} {'batch':>5s} {'backend':7s} {'fused ms':>9s} {'tv ms':>9s} {'ratio':>6s} "
          f"{'fusedG ms':>9s} {'tvG ms':>9s} {'Gratio':>6s} {'fused TF/s':>10s} {'tv TF/s':>8s} "
          f"{'fused GB/s':>10s} {'tv GB/s':>8s} {'rel err':>8s}")


def _f(v, spec):
    return format(v, spec) if v is not None else format("-", spec.split(".")[0].rstrip("f") + "s")


def fmt_row(r):
    return (f"{r['block']:5s} {r['batch']:5d} {r['backend']:7s} {r['fused_ms']:9.4f} {r['torchvision_ms']:9.4f} "
            f"{r['ratio']:6.2f} {_f(r['fused_graph_ms'], '9.4f')} {_f(r['torchvision_graph_ms'], '9.4f')} "
            f"{_f(r['graph_ratio'], '6.2f')} {r['fused_tflops']:10.2f} {r['torchvision_tflops']:8.2f} "
            f"{r['fused_gbs']:10.1f} {r['torchvision_gbs']:8.1f} {r['max_rel_err']:8.2e}")


def bench_network(args, device, dtype, timer, backends=("auto",), sink=None, save=lambda: None):
    """The whole network, fused (once per backend, forced through $GOOGLENET_FAST_BACKEND, plus
    "auto") vs torchvision eager, same weights, dtype and layout."""
    import torchvision
    import googlenet_fast
    rows = [] if sink is None else sink
    torch.manual_seed(0)
    tv = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True)
    ours = googlenet_fast.GoogLeNet(variant="torchvision", fused=True, aux_logits=False, init_weights=True)
    ours.load_state_dict(tv.state_dict())
    cl = dict(memory_format=torch.channels_last)
    tv = tv.eval().to(device=device, dtype=dtype, **cl)
    ours = ours.eval().to(device=device, dtype=dtype, **cl)
    for n in args.net_batches:
        x = torch.randn(n, 3, args.net_hw, args.net_hw, device=device, dtype=dtype).contiguous(**cl)
        with torch.no_grad():
            ref = tv(x)
            t_tv, g_tv = timer(lambda: tv(x))
            for be in backends:
                saved = os.environ.get("GOOGLENET_FAST_BACKEND")
                if be == "auto":
                    os.environ.pop("GOOGLENET_FAST_BACKEND", None)
                else:
                    os.environ["GOOGLENET_FAST_BACKEND"] = be
                try:
                    err = rel_err(ours(x), ref)
                    t_f, g_f = timer(lambda: ours(x))
                finally:
                    if saved is None:
                        os.environ.pop("GOOGLENET_FAST_BACKEND", None)
                    else:
                        os.environ["GOOGLENET_FAST_BACKEND"] = saved
                row = dict(network="googlenet", backend=be, batch=n, hw=args.net_hw, dtype=str(dtype)[6:],
                           fused_ms=t_f, torchvision_ms=t_tv, ratio=speedup(t_tv, t_f), fused_graph_ms=g_f,
                           torchvision_graph_ms=g_tv, graph_ratio=speedup(g_tv, g_f),
                           max_rel_err=err)
                rows.append(row)
                save()
                print(f"network batch {n:4d} [{be}]: fused {t_f:.3f} ms, torchvision {t_tv:.3f} ms, "
                      f"ratio {row['ratio']:.2f}; CUDA graphs: fused {_f(g_f, '.3f')} ms, torchvision "
                      f"{_f(g_tv, '.3f')} ms, ratio {_f(row['graph_ratio'], '.2f')}; max rel err {err:.2e}",
                      flush=True)
    return rows


# ----------------------------------------------------------------------------------------------
# Parallel compile of every kernel variant the table will autotune over

# The network's pooled Inception modules (torchvision variant): the pre-pool map size and the
# (kernel, stride) of the ceil-mode max pool computed in their stage-1 loaders.
POOLED = {"3a": (56, (3, 2)), "4a": (28, (3, 2)), "5a": (14, (2, 2))}


def _prewarm_job(job):
    name, n, dtype_name, pooled = job
    try:
        import torch as _t
        from googlenet_fast.backends import triton as tb
        dtype = DTYPES[dtype_name]
        cin, c1, r3, c3, r5, c5, cp, hw = TABLE1[name]
        m = dict(device="meta", dtype=dtype)
        cl = dict(memory_format=_t.channels_last)
        xhw, pool = POOLED[name] if pooled else (hw, (0, 0))
        x = _t.empty(n, cin, xhw, xhw, **m).contiguous(**cl)
        merged = _t.empty(c1 + r3 + r5, cin, 1, 1, **m)
        ws = [merged[:c1], _t.empty(c1, **m), merged[c1:c1 + r3], _t.empty(r3, **m),
              _t.empty(c3, r3, 3, 3, **m).contiguous(**cl), _t.empty(c3, **m), merged[c1 + r3:],
              _t.empty(r5, **m), _t.empty(c5, r5, 3, 3, **m).contiguous(**cl), _t.empty(c5, **m),
              _t.empty(cp, cin, 1, 1, **m), _t.empty(cp, **m)]
        out = _t.empty(n, c1 + c3 + c5 + cp, hw, hw, **m).contiguous(**cl)
        plan = tb.plan_launch(x, *ws, True, out, interpret=False, pool=pool)
        tb.precompile(plan, which="all")
        return None
    except Exception as e:
        return f"{job}: {type(e).__name__}: {e}"


def prewarm(args, dtype_name, procs):
    import multiprocessing as mp
    jobs = [(name, n, dtype_name, False) for name in TABLE1 if not args.blocks or name in args.blocks
            for n in args.batches]
    if not args.no_network:  # the whole network's plain and pooled modules at its batch sizes
        jobs += [(name, n, dtype_name, name in POOLED) for name in TABLE1 for n in args.net_batches
                 if name in POOLED or n not in args.batches]
    t0 = time.time()
    with mp.get_context("spawn").Pool(procs) as pool:
        errors = [e for e in pool.map(_prewarm_job, jobs, chunksize=1) if e]
    print(f"prewarm: kernels for {len(jobs)} (block, batch) shapes compiled in {time.time() - t0:.1f} s "
          f"with {procs} processes ({len(errors)} failed)", flush=True)
    for e in errors[:5]:
        print("  prewarm failure:", e, flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="1,32,256")
    p.add_argument("--blocks", default="", help="comma-separated subset of 3a..5b")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--hw", type=int, default=0, help="override every block's spatial size")
    p.add_argument("--net-batches", default="1,256")
    p.add_argument("--net-hw", type=int, default=224)
    p.add_argument("--no-network", action="store_true")
    p.add_argument("--network-first", action="store_true", help="the whole-network rows before the block table")
    p.add_argument("--no-graphs", action="store_true", help="skip the CUDA-graph columns")
    p.add_argument("--backends", default="", help="default: triton, plus cuda when built")
    p.add_argument("--warmup", type=int, default=25, help="do_bench warmup (ms)")
    p.add_argument("--rep", type=int, default=100, help="do_bench repetitions (ms)")
    p.add_argument("--prewarm", type=int, default=0, help="compile in N processes first (0: off)")
    p.add_argument("--json", default="")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU + Triton interpreter at tiny sizes: exercises the script, measures nothing")
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.net_batches = [int(b) for b in args.net_batches.split(",") if b]
    args.blocks = [b for b in args.blocks.split(",") if b]
    dtype = DTYPES[args.dtype]

    if args.dry_run:
        device = "cpu"
        args.batches, args.hw = [1], args.hw or 2
        args.blocks = args.blocks or ["3a", "5b"]
        args.net_batches, args.net_hw = [1], 32
        args.no_graphs = True
    else:
        if not torch.cuda.is_available():
            sys.exit("gpu_blocks.py: no CUDA device (use --dry-run to check the script on CPU)")
        device = "cuda"
        torch.backends.cudnn.benchmark = True

    import googlenet_fast
    from googlenet_fast.backends import native
    backends = [b for b in args.backends.split(",") if b] or (
        ["triton"] + (["cuda"] if device == "cuda" and native.cuda_available() else []))
    info = dict(torch=torch.__version__, python=platform.python_version(),
                device=torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)",
                dtype=args.dtype, backends=backends, googlenet_fast=googlenet_fast.__version__)
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        pass
    print("gpu_blocks:", json.dumps(info), flush=True)
    if args.prewarm and device == "cuda" and "triton" in backends:
        prewarm(args, args.dtype, args.prewarm)

    timer = Timer(device, args.warmup, args.rep, graphs=not args.no_graphs)
    doc = dict(info=info, blocks=[], network=[], summary={})

    def save():  # after every row and in `finally`: a run cut short keeps what it measured
        if args.json:
            tmp = args.json + ".tmp"
            with open(tmp, "w") as f:
                json.dump(doc, f, indent=1)
            os.replace(tmp, args.json)

    def network():
        if args.no_network:
            return
        try:
            bench_network(args, device, dtype, timer,
                          tuple(backends) + (("auto",) if len(backends) > 1 else ()), sink=doc["network"], save=save)
        except Exception as e:  # report and keep the block table
            print(f"network benchmark failed: {type(e).__name__}: {e}", flush=True)
            doc["network"].append(dict(network="googlenet", error=f"{type(e).__name__}: {e}"))

    try:
        if args.network_first:
            network()
        print(HEADER, flush=True)
        t0 = time.time()
        bench_blocks(args, device, dtype, timer, backends, sink=doc["blocks"], save=save)
        print(f"(blocks: {time.time() - t0:.1f} s)", flush=True)
        if not args.network_first:
            network()
        rows = doc["blocks"]
        for be in backends:
            rs = [r for r in rows if r["backend"] == be]
            for n in args.batches:
                rr = [r["ratio"] for r in rs if r["batch"] == n]
                if rr:
                    doc["summary"][f"{be}_b{n}_geomean_ratio"] = geomean(rr)
                    doc["summary"][f"{be}_b{n}_min_ratio"] = min(rr)
        print("summary:", json.dumps(doc["summary"]), flush=True)
    except KeyboardInterrupt:
        print("gpu_blocks: interrupted; the JSON holds the rows measured so far", flush=True)
        doc["interrupted"] = True
        return 130
    finally:
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
