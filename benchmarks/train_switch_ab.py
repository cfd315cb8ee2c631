#!/usr/bin/env python
"""A/B of one switch of the fused CPU train path: the train step (``bench.TrainStep``: forward
with both aux heads, loss, backward, SGD momentum step; 224x224 or --image-size, channels_last, 2 threads) of
torchvision's model, GoogLeNet(fused=True) with the switch on and with it off, interleaved round
by round in one process (the same machine load for all three), median and min per step.

    python benchmarks/train_switch_ab.py                       # bn_train.APPLY_INTO, batch 8, float32
    python benchmarks/train_switch_ab.py --amp --batch 8 32 --rounds 9
    python benchmarks/train_switch_ab.py --switch ONE_PIXEL_GEMM --image-size 32 --batch 64

The switch is a boolean attribute of googlenet_fast.bn_train, set before each step of its arm.
Both arms train copies of the same seeded model; the first step's losses of the two fused arms
are compared and printed (a loss only; APPLY_INTO gives the same bits everywhere, ONE_PIXEL_GEMM's
GEMMs round differently from oneDNN's convolutions in float32 even where the loss agrees).
"""
import argparse
import copy
import statistics
import time

import torch

from googlenet_fast import bench, bn_train, cpu_alloc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--switch", default="APPLY_INTO", help="boolean attribute of googlenet_fast.bn_train")
    p.add_argument("--batch", type=int, nargs="+", default=[8])
    p.add_argument("--amp", action="store_true", help="torch.autocast('cpu', bfloat16)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--image-size", type=int, default=224)
    a = p.parse_args()
    if not isinstance(getattr(bn_train, a.switch, None), bool):
        p.error(f"--switch: expected a boolean attribute of googlenet_fast.bn_train, got {a.switch!r}")
    if any(b < 1 for b in a.batch) or a.rounds < 1 or a.threads < 1 or a.image_size < 15:
        p.error("--batch, --rounds, --threads: expected positive integers; --image-size: at least 15")
    torch.set_num_threads(a.threads)
    cpu_alloc.keep_freed_memory()  # as bench --mode train
    nets = bench.build_train_networks(seed=0)
    arms = {"torchvision": (bench.TrainStep(nets.torchvision, amp=a.amp), None),
            "fused, on": (bench.TrainStep(copy.deepcopy(nets.fused), amp=a.amp), True),
            "fused, off": (bench.TrainStep(copy.deepcopy(nets.fused), amp=a.amp), False)}

    def step(name, x):
        fn, value = arms[name]
        if value is not None:
            setattr(bn_train, a.switch, value)
        torch.manual_seed(0)  # the dropout masks: the same in both fused arms
        t0 = time.perf_counter()
        loss = fn(x)
        return (time.perf_counter() - t0) * 1e3, loss

    print(f"switch bn_train.{a.switch}; {a.image_size}x{a.image_size}, {'bf16 autocast' if a.amp else 'float32'}, "
          f"{a.threads} threads, "
          f"torch {torch.__version__}; ms per train step, median (min) of {a.rounds} rounds")
    for b in a.batch:
        x = torch.randn(b, 3, a.image_size, a.image_size, generator=torch.Generator().manual_seed(0)).contiguous(
            memory_format=torch.channels_last)
        try:
            first = {k: step(k, x)[1] for k in arms}
        except ValueError as e:  # e.g. BatchNorm's one value per channel (batch 1 on a 1x1 map)
            p.error(f"--batch {b} --image-size {a.image_size}: {e}")
        on, off = first["fused, on"].item(), first["fused, off"].item()
        same = "equal bits" if on == off else f"relative difference {abs(on - off) / abs(off):.1e}"
        print(f"batch {b}: first step's loss on {on!r}, off {off!r} ({same}; the loss only, not the "
              f"gradients: tests/test_bn_train.py compares those)")
        times = {k: [] for k in arms}
        for _ in range(a.rounds):
            for k in arms:
                times[k].append(step(k, x)[0])
        med = {k: statistics.median(v) for k, v in times.items()}
        row = ", ".join(f"{k} {med[k]:.1f} ({min(times[k]):.1f})" for k in arms)
        print(f"batch {b}: {row}; on/off {med['fused, off'] / med['fused, on']:.3f}x faster, "
              f"torchvision/fused on {med['torchvision'] / med['fused, on']:.3f}x "
              f"(off {med['torchvision'] / med['fused, off']:.3f}x)", flush=True)


if __name__ == "__main__":
    main()
