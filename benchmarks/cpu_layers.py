#!/usr/bin/env python
"""Per-layer CPU inference times: GoogLeNet(fused=True) beside OpenVINO's own per-layer
performance counters (and ONNX Runtime's profiler) on the same weights.

Where does the time of one eval forward go, layer by layer (conv1+maxpool1, conv2,
conv3+maxpool2, each Inception module, the transition pools, the head)?  Ours: every layer timed
alone on its real input (the fused model's own layer calls: BasicConv2d's oneDNN path with the
pool fused, the fused Inception op, the NHWC max pool), median of ``--reps`` calls after warm-up.
OpenVINO: the ONNX export of torchvision's googlenet with the same weights, compiled with
``PERF_COUNT``, per-node ``real_time`` summed by the layer prefix of the node name
(``/inception3a/...``), median over ``--reps`` inferences.  ONNX Runtime: its session profiler's
per-node durations, grouped the same way.  Each engine runs in its own process (their thread
pools spin and steal the cores of anything timed beside them); the layer table and the whole-model
times come out side by side.

Usage:
    python benchmarks/cpu_layers.py [--dtype float32|bfloat16] [--batch 1] [--threads 2]
                                    [--reps 30] [--engines ours openvino onnxruntime] [--json out.json]

``--clock cpu`` (use with ``--threads 1``): process CPU time instead of wall time (ours:
time.process_time; OpenVINO: its counters' cpu_time), for a busy machine: another process taking
the core stretches wall time, not CPU time (caches and memory bandwidth are still shared).

bfloat16: ours runs the model converted to bfloat16 (weights and input); OpenVINO runs the
float32 ONNX with INFERENCE_PRECISION_HINT=bf16 (how its users run bf16); ONNX Runtime has no
bf16 CPU kernels (skipped).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

LAYERS = ["conv1+maxpool1", "conv2", "conv3+maxpool2", "inception3a", "inception3b", "maxpool3",
          "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
          "inception5a", "inception5b", "head"]

# first component of an exported node's name -> layer
_PREFIX = {"conv1": "conv1+maxpool1", "maxpool1": "conv1+maxpool1", "conv2": "conv2", "conv3": "conv3+maxpool2",
           "maxpool2": "conv3+maxpool2", "maxpool3": "maxpool3", "maxpool4": "maxpool4", "avgpool": "head",
           "fc": "head", "Flatten": "head", "dropout": "head"}


def layer_of(node_name: str) -> str:
    """The LAYERS entry of an ONNX/OpenVINO node name ('/inception3a/branch2/branch2.0/conv/Conv'
    -> 'inception3a'); 'other' for nodes the exporter or the engine named otherwise (input
    reorders, constant folding, ...)."""
    parts = [p for p in node_name.replace(".", "/").split("/") if p]
    for p in parts:
        if p.startswith("inception"):
            return p
        if p in _PREFIX:
            return _PREFIX[p]
    return "other"


def _networks(batch, threads, seed=0):
    import torch
    torch.set_num_threads(threads)
    from googlenet_fast.bench import build_networks
    from googlenet_fast.data import fill_batch, preprocess, sample_photos
    photos = preprocess(sample_photos())  # real photos: BatchNorm statistics and the input
    nets = build_networks(seed=seed, calibration=photos)
    return nets, fill_batch(photos, batch).contiguous()


def _clock(args):
    return time.process_time if args.clock == "cpu" else time.perf_counter


def run_ours(args):
    import torch
    nets, x = _networks(args.batch, args.threads)
    dtype = getattr(torch, args.dtype)
    m = nets.fused.to(dtype)
    x = x.to(dtype).contiguous(memory_format=torch.channels_last)
    cpu = m._cpu_eval_ops(x)
    head = lambda t: m.fc(torch.flatten(m.avgpool(t), 1))
    steps = OrderedDict([
        ("conv1+maxpool1", lambda t: m._conv_pool(m.conv1, m.maxpool1, t, cpu)),
        ("conv2", m.conv2),
        ("conv3+maxpool2", lambda t: m._conv_pool(m.conv3, m.maxpool2, t, cpu)),
        ("inception3a", m.inception3a), ("inception3b", m.inception3b),
        ("maxpool3", lambda t: m._pool(m.maxpool3, t, cpu)),
        ("inception4a", m.inception4a), ("inception4b", m.inception4b), ("inception4c", m.inception4c),
        ("inception4d", m.inception4d), ("inception4e", m.inception4e),
        ("maxpool4", lambda t: m._pool(m.maxpool4, t, cpu)),
        ("inception5a", m.inception5a), ("inception5b", m.inception5b), ("head", head)])
    out = {}
    with torch.no_grad():
        inputs, t = [], x
        for name, f in steps.items():
            inputs.append(t)
            t = f(t)
        for (name, f), inp in zip(steps.items(), inputs):
            out[name] = _median_ms(f, inp, args)
        total = _median_ms(m, x, args)
    return {"layers": out, "total_ms": total}


def _median_ms(f, x, args) -> float:
    """Median over ``args.reps`` calls of ``f(x)`` after 3 warm-up calls, in ms (args.clock)."""
    clock = _clock(args)
    for _ in range(3):
        f(x)
    ts = []
    for _ in range(args.reps):
        t0 = clock()
        f(x)
        ts.append(clock() - t0)
    return statistics.median(ts) * 1e3


def _export(path, batch, threads):
    import torch
    nets, x = _networks(batch, threads)
    torch.onnx.export(nets.torchvision.float().eval(), (x,), path, dynamo=False, input_names=["x"],
                      output_names=["logits"], opset_version=17)
    return x


def run_openvino(args, onnx_path, x):
    import numpy as np
    import openvino as ov
    core = ov.Core()
    cfg = {"PERF_COUNT": "YES", "INFERENCE_NUM_THREADS": args.threads,
           "INFERENCE_PRECISION_HINT": "bf16" if args.dtype == "bfloat16" else "f32",
           "PERFORMANCE_HINT": "LATENCY"}
    cm = core.compile_model(core.read_model(onnx_path), "CPU", cfg)
    req = cm.create_infer_request()
    xin = x.numpy().astype(np.float32)
    for _ in range(5):
        req.infer({0: xin})
    per, totals, types = {}, [], {}
    clock = _clock(args)
    for _ in range(args.reps):
        t0 = clock()
        req.infer({0: xin})
        totals.append(clock() - t0)
        acc = {}
        for pi in req.get_profiling_info():
            us = (pi.cpu_time if args.clock == "cpu" else pi.real_time).total_seconds() * 1e6
            layer = layer_of(pi.node_name)
            acc[layer] = acc.get(layer, 0.0) + us
            if us > 0:
                types.setdefault(layer, set()).add(f"{pi.node_type}:{pi.exec_type}")
        for k, v in acc.items():
            per.setdefault(k, []).append(v)
    return {"layers": {k: statistics.median(v) / 1e3 for k, v in per.items()},
            "total_ms": statistics.median(totals) * 1e3,
            "exec_types": {k: sorted(v) for k, v in types.items()}}


def run_onnxruntime(args, onnx_path, x):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    xin = {"x": x.numpy()}
    for _ in range(5):
        sess.run(None, xin)
    totals = []
    clock = _clock(args)
    for _ in range(args.reps):
        t0 = clock()
        sess.run(None, xin)
        totals.append(clock() - t0)
    # per node: a second session with the profiler on (profiling slows it a little)
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(os.path.dirname(onnx_path), "ort")
    psess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    for _ in range(5 + args.reps):
        psess.run(None, xin)
    with open(psess.end_profiling()) as f:
        events = json.load(f)
    summed = {}  # per layer, the node durations (us) summed over all profiled runs
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            layer = layer_of(e["name"][: -len("_kernel_time")])
            summed[layer] = summed.get(layer, 0.0) + e["dur"]
    runs = 5 + args.reps
    layers = {k: v / runs / 1e3 for k, v in summed.items()}
    return {"layers": layers, "total_ms": statistics.median(totals) * 1e3}


def worker(args):
    if args.engine == "ours":
        res = run_ours(args)
    else:
        import torch
        torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "googlenet.onnx")
            x = _export(path, args.batch, args.threads)
            res = (run_openvino if args.engine == "openvino" else run_onnxruntime)(args, path, x)
    json.dump(res, sys.stdout)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall time, or process CPU time (with --threads 1, on a busy machine)")
    p.add_argument("--engines", nargs="+", choices=("ours", "openvino", "onnxruntime"),
                   default=["ours", "openvino", "onnxruntime"])
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--engine", help=argparse.SUPPRESS)  # worker mode
    args = p.parse_args(argv)
    if args.engine:
        return worker(args)
    engines = [e for e in args.engines if not (e == "onnxruntime" and args.dtype == "bfloat16")]
    results = {}
    load = os.getloadavg()
    for e in engines:
        cmd = [sys.executable, os.path.abspath(__file__), "--engine", e, "--dtype", args.dtype, "--batch",
               str(args.batch), "--threads", str(args.threads), "--reps", str(args.reps), "--clock", args.clock]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{e}: failed:\n{r.stderr[-2000:]}", file=sys.stderr)
            continue
        results[e] = json.loads(r.stdout.strip().splitlines()[-1])
    load_after = os.getloadavg()
    print(f"# per-layer CPU inference, {args.dtype}, batch {args.batch}, {args.threads} threads, "
          f"median of {args.reps}, {args.clock} clock; load {load[0]:.2f} -> {load_after[0]:.2f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    names = list(results)
    print("| layer | " + " | ".join(f"{n} ms" for n in names) +
          ("" if "ours" not in names else " | " + " | ".join(f"ours/{n}" for n in names if n != "ours")) + " |")
    print("|---" * (1 + len(names) + max(0, len(names) - 1)) + "|")
    rows = LAYERS + sorted({k for r in results.values() for k in r["layers"]} - set(LAYERS))
    for layer in rows:
        vals = [results[n]["layers"].get(layer) for n in names]
        cells = [f"{v:.3f}" if v is not None else "-" for v in vals]
        if "ours" in names:
            o = results["ours"]["layers"].get(layer)
            for n in names:
                if n != "ours":
                    v = results[n]["layers"].get(layer)
                    cells.append(f"{o / v:.2f}" if o and v else "-")
        print(f"| {layer} | " + " | ".join(cells) + " |")
    sums = [sum(results[n]["layers"].values()) for n in names]
    print("| sum of layers | " + " | ".join(f"{s:.2f}" for s in sums) + " |")
    print("| whole model | " + " | ".join(f"{results[n]['total_ms']:.2f}" for n in names) + " |")
    if "openvino" in results:
        print("\nOpenVINO primitives per layer:")
        for k, v in results["openvino"].get("exec_types", {}).items():
            print(f"  {k}: {', '.join(v)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "load": [load, load_after], "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
