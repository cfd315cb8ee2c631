"""Fused Inception backward vs the reference module's autograd backward, on the CPU.

Times the backward only (torch.autograd.grad of a kept graph: all 13 gradients) of one Inception
module, fp32, channels_last.  The two are timed in alternating rounds in one process, and the
speedup is the median of the per-round ratios, so load drifting on a shared machine hits both:

    python benchmarks/bench_backward_cpu.py                       # inception 4a, batch 8
    python benchmarks/bench_backward_cpu.py --layer 3a --batch 32 --threads 2
"""
import argparse
import statistics

import torch
from torch.utils import benchmark

from googlenet_fast.backends.reference import inception_reference
from googlenet_fast.ops import inception

# Table 1 (DESIGN.md): name -> (in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj, map size)
TABLE1 = {
    "3a": (192, 64, 96, 128, 16, 32, 32, 28), "3b": (256, 128, 128, 192, 32, 96, 64, 28),
    "4a": (480, 192, 96, 208, 16, 48, 64, 14), "4b": (512, 160, 112, 224, 24, 64, 64, 14),
    "4c": (512, 128, 128, 256, 24, 64, 64, 14), "4d": (512, 112, 144, 288, 32, 64, 64, 14),
    "4e": (528, 256, 160, 320, 32, 128, 128, 14), "5a": (832, 256, 160, 320, 32, 128, 128, 7),
    "5b": (832, 384, 192, 384, 48, 128, 128, 7),
}

# (label, K5, biases, relu): torchvision trains pre-BN (no bias, no ReLU in the op; its "5x5" is
# 3x3); the paper variant has bias + ReLU and true 5x5 kernels.
VARIANTS = (("torchvision train (K5=3, no bias, relu=False)", 3, False, False),
            ("paper (K5=5, bias, relu=True)", 5, True, True))


def make_args(cfg, n, k5, bias, seed=0):
    cin, c1, r3, c3, r5, c5, cp, hw = cfg
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, hw, hw, generator=g).contiguous(memory_format=torch.channels_last)
    ws = []
    for o, i, k in ((c1, cin, 1), (r3, cin, 1), (c3, r3, 3), (r5, cin, 1), (c5, r5, k5), (cp, cin, 1)):
        ws.append((torch.randn(o, i, k, k, generator=g) * (2.0 / (i * k * k)) ** 0.5).requires_grad_())
        ws.append((torch.randn(o, generator=g) * 0.1).requires_grad_() if bias else None)
    return x.requires_grad_(), ws


def backward_timer(forward, inputs, threads):
    y = forward()
    grad = torch.randn_like(y)
    return benchmark.Timer("torch.autograd.grad(y, inputs, grad, retain_graph=True)",
                           globals=dict(torch=torch, y=y, inputs=inputs, grad=grad), num_threads=threads)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layer", default="4a", choices=sorted(TABLE1))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--number", type=int, default=3, help="backward calls per timed round")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = TABLE1[a.layer]
    print(f"inception {a.layer}, batch {a.batch}, {cfg[-1]}x{cfg[-1]}, fp32 channels_last, "
          f"{a.threads} threads, torch {torch.__version__}; median of {a.rounds} alternating rounds")
    for label, k5, bias, relu in VARIANTS:
        x, ws = make_args(cfg, a.batch, k5, bias)
        inputs = [t for t in [x] + ws if t is not None]
        timers = {"reference": backward_timer(lambda: inception_reference(x, *ws, relu=relu), inputs, a.threads),
                  "fused": backward_timer(lambda: inception(x, *ws, relu=relu, backend="cpu"), inputs, a.threads)}
        for t in timers.values():
            t.timeit(2)  # warm-up
        times = {k: [] for k in timers}
        for _ in range(a.rounds):
            for k, t in timers.items():
                times[k].append(t.timeit(a.number).median * 1e3)
        ref, fus = statistics.median(times["reference"]), statistics.median(times["fused"])
        ratio = statistics.median(r / f for r, f in zip(times["reference"], times["fused"]))
        print(f"  {label:46s} reference {ref:7.2f} ms  fused {fus:7.2f} ms  "
              f"(min {min(times['reference']):.2f} / {min(times['fused']):.2f})  speedup {ratio:.2f}x")


if __name__ == "__main__":
    main()
