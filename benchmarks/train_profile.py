"""Where a CPU training step spends its time, per op class: torchvision's googlenet vs
GoogLeNet(fused=True), and the Amdahl bound of removing everything but the convolutions.

One train step as ``bench --mode train`` times it (train-mode forward with both aux heads, loss
main + 0.3 x aux, backward, SGD momentum step; channels_last, the same seeded weights), profiled
with torch.profiler.  Every profiled op's *self* CPU time is put into one class by its name and by
the step phase it ran in (record_function regions "forward", "backward", "optimizer"):

    python benchmarks/train_profile.py                  # batch 8, float32, 2 threads
    python benchmarks/train_profile.py --amp            # torch.autocast('cpu', bfloat16)
    python benchmarks/train_profile.py --batch 32 --steps 3
    python benchmarks/train_profile.py --composition     # fused=True as before issue #15's fast path

oneDNN computes a convolution's dgrad and wgrad in one ``aten::convolution_backward`` call, so
the table has one "conv backward" row for both.  The bound: if a step did nothing but
torchvision's convolutions and GEMMs (forward, backward, weight reorders) at their measured
time, torchvision's step / that time is the most any path running the same convolutions at
oneDNN's rate can gain.  The profiler adds a few microseconds per op, so the profiled totals are
above the unprofiled step times printed next to them (median of ``--steps`` timed steps).
"""
import argparse
import collections
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from googlenet_fast import bench

# (class, phase or None for any) per op name; first match wins.  Self CPU time of each op.
CONV_FWD = "conv forward (oneDNN)"
CONV_BWD = "conv backward: dgrad + wgrad (oneDNN, one call)"
GEMM_BWD = "1x1 dgrad/wgrad as GEMMs (aten::mm)"
GEMM_FC = "fc layers (addmm/mm)"
REORDER = "oneDNN weight reorders"
CONV_CLASSES = (CONV_FWD, CONV_BWD, GEMM_BWD, GEMM_FC, REORDER)
OTHER = "other (dropout, avg pool, loss, ...)"


def classify(name: str, phase: str) -> str:
    if phase == "optimizer" or name.startswith("Optimizer."):
        return "optimizer (SGD)"
    if name in ("aten::mkldnn_convolution", "mkldnn::_convolution_pointwise", "mkldnn::_linear_pointwise"):
        return CONV_FWD
    if name.startswith("mkldnn::_reorder"):
        return REORDER
    if name in ("aten::convolution_backward", "aten::mkldnn_convolution_backward",
                "aten::mkldnn_convolution_backward_input", "aten::mkldnn_convolution_backward_weights"):
        return CONV_BWD
    if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"):
        # the head's fc layers: 5 addmm forward, their mm backward; the modules' 1x1 GEMMs
        return GEMM_FC if phase == "forward" else GEMM_BWD
    if name in ("aten::native_batch_norm", "aten::_native_batch_norm_legit", "aten::var_mean",
                "aten::_batch_norm_impl_index", "aten::batch_norm", "googlenet_fast::bn_relu_train",
                "aten::batch_norm_update_stats", "googlenet_fast::bn_relu_apply", "googlenet_fast::bn_relu_apply_into"):
        return "BatchNorm forward (incl. batch statistics)"
    if name in ("aten::native_batch_norm_backward", "googlenet_fast::bn_relu_backward",
                "googlenet_fast::max_pool2d_tap_bn_relu_backward"):
        # (the last: the stem's BatchNorm + ReLU backward with its max pool's backward, float32)
        return "BatchNorm backward (+ fused ReLU backward)"
    if name in ("aten::relu", "aten::relu_", "aten::clamp_min", "aten::clamp_min_", "aten::threshold_backward"):
        return "ReLU forward/backward"
    if "max_pool" in name:
        return "max pool forward/backward (+ argmax recompute)"
    if name in ("aten::cat", "aten::stack"):
        return "cat"
    if name in ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous", "aten::fill_",
                "aten::zero_", "aten::zeros", "aten::zeros_like", "aten::new_zeros"):
        return "copies, zero fills, layout conversions"
    if name in ("aten::add", "aten::add_") and phase == "backward":
        return "gradient accumulation (add)"
    if name.startswith("googlenet_fast::") or name.startswith("GeneratedBackwardFor_googlenet_fast"):
        # the fused ops' own loops (pooling, epilogues, BN apply) between their oneDNN calls;
        # in the backward phase the Python backward function's own time
        return ("fused op: own loops (pool, epilogues, BN apply)" if phase == "forward"
                else "Python / autograd overhead")
    if (name in ("forward", "backward", "loss") or name.startswith("autograd::")
            or name.endswith("Backward0") or name.endswith("Backward1") or name.endswith("Backward")
            or name in ("torch::autograd::AccumulateGrad", "detach", "aten::detach", "aten::empty",
                        "aten::empty_strided", "aten::empty_like", "aten::view", "aten::slice",
                        "aten::narrow", "aten::split", "aten::split_with_sizes", "aten::as_strided",
                        "aten::as_strided_", "aten::permute", "aten::reshape", "aten::t",
                        "aten::transpose", "aten::resize_", "aten::set_", "aten::_reshape_alias",
                        "aten::unsqueeze", "aten::squeeze", "aten::expand", "aten::select",
                        "aten::flatten", "aten::to", "aten::result_type", "aten::lift_fresh",
                        "aten::alias", "aten::_unsafe_view", "aten::unbind", "aten::item",
                        "aten::_local_scalar_dense", "aten::is_nonzero")):
        return "Python / autograd / dispatch overhead"
    return OTHER


def step_fn(model, x, y, opt, amp):
    def run():
        opt.zero_grad(set_to_none=True)
        with record_function("forward"):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                out = model(x)
                loss = bench.train_loss(out, y)
        with record_function("backward"):
            loss.backward()
        with record_function("optimizer"):
            opt.step()
    return run


def profile_step(run):
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    by_class = collections.defaultdict(float)
    for e in prof.events():
        top = e
        while top.cpu_parent is not None:
            top = top.cpu_parent
        phase = top.name if top.name in ("forward", "backward", "optimizer") else "other"
        by_class[classify(e.name, phase)] += e.self_cpu_time_total / 1e3
    return dict(by_class)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--amp", action="store_true", help="torch.autocast('cpu', bfloat16)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed (unprofiled) steps per network")
    p.add_argument("--composition", action="store_true",
                   help="fused=True with googlenet_fast.bn_train.CPU_FAST_PATH off: the inception_bn_train "
                        "op + F.batch_norm composition (what torch.compile traces; the eager path before "
                        "issue #15)")
    p.add_argument("--profiles", type=int, default=4, help="profiled steps per network (the least disturbed one is shown)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    # as bench --mode train: page faults re-taking freed memory (20-35% of a step, landing on
    # either network) would drown the op classes
    from googlenet_fast import cpu_alloc
    cpu_alloc.keep_freed_memory()
    if a.composition:
        from googlenet_fast import bn_train
        bn_train.CPU_FAST_PATH = False
    nets = bench.build_train_networks(seed=0)
    x = torch.randn(a.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)).contiguous(
        memory_format=torch.channels_last)
    runs = {}
    for name, model in (("torchvision", nets.torchvision), ("fused", nets.fused)):
        opt = torch.optim.SGD(model.parameters(), lr=bench.TRAIN_LR, momentum=bench.TRAIN_MOMENTUM)
        runs[name] = step_fn(model, x, bench.train_labels(a.batch), opt, a.amp)
        for _ in range(2):
            runs[name]()
    # interleaved: unprofiled step times, then profiles
    times = {k: [] for k in runs}
    for _ in range(a.steps):
        for k, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[k].append((time.perf_counter() - t0) * 1e3)
    profiles = {k: [] for k in runs}
    for _ in range(a.profiles):
        for k, run in runs.items():
            profiles[k].append(profile_step(run))
    # The least disturbed profile of each network (smallest total): on a shared machine the
    # others' processes only ever add time.
    best = {k: min(ps, key=lambda pr: sum(pr.values())) for k, ps in profiles.items()}
    classes = sorted({c for pr in best.values() for c in pr},
                     key=lambda c: (c not in CONV_CLASSES, -best["torchvision"].get(c, 0.0)))
    med = {k: {c: pr.get(c, 0.0) for c in classes} for k, pr in best.items()}
    tot = {k: sum(v.values()) for k, v in med.items()}
    print(f"batch {a.batch}, {'bf16 autocast' if a.amp else 'float32'}, {a.threads} threads, fused = "
          f"{'the composition (CPU_FAST_PATH off)' if a.composition else 'the eager CPU fast path'}, torch "
          f"{torch.__version__}; self CPU ms per op class, the "
          f"profiled step with the smallest total of {a.profiles} per network")
    print()
    print("| op class | torchvision ms | fused ms | fused - torchvision |")
    print("|---|---:|---:|---:|")
    for c in classes:
        tv, fu = med["torchvision"][c], med["fused"][c]
        print(f"| {c} | {tv:.1f} | {fu:.1f} | {fu - tv:+.1f} |")
    print(f"| **total (profiled)** | **{tot['torchvision']:.1f}** | **{tot['fused']:.1f}** | "
          f"{tot['fused'] - tot['torchvision']:+.1f} |")
    st = {k: statistics.median(v) for k, v in times.items()}
    mn = {k: min(v) for k, v in times.items()}
    print(f"| step, unprofiled (median of {a.steps}) | {st['torchvision']:.1f} | {st['fused']:.1f} | "
          f"ratio {st['torchvision'] / st['fused']:.2f}x |")
    print(f"| step, unprofiled (min of {a.steps}) | {mn['torchvision']:.1f} | {mn['fused']:.1f} | "
          f"ratio {mn['torchvision'] / mn['fused']:.2f}x |")
    conv_tv = sum(med["torchvision"][c] for c in CONV_CLASSES if c in med["torchvision"])
    conv_fu = sum(med["fused"][c] for c in CONV_CLASSES if c in med["fused"])
    print()
    print(f"convolutions + GEMMs: torchvision {conv_tv:.1f} ms of {tot['torchvision']:.1f} "
          f"({100 * conv_tv / tot['torchvision']:.0f}%); fused {conv_fu:.1f} ms of {tot['fused']:.1f}")
    print(f"Amdahl bound (torchvision's step with nothing but its convolutions and GEMMs): "
          f"{tot['torchvision'] / conv_tv:.2f}x; fused now (profiled) {tot['torchvision'] / tot['fused']:.2f}x")


if __name__ == "__main__":
    main()
