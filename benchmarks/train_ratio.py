"""Train steps, torchvision vs fused, interleaved: wall time and process CPU time per step (run with
OMP_WAIT_POLICY=PASSIVE so that waiting OpenMP threads sleep instead of spinning).  A supplement to
``bench --mode train`` on a shared machine: CPU time does not count the time other processes held the
cores, so its ratio moves less with their load.  Usage:

    OMP_WAIT_POLICY=PASSIVE ROUNDS=4 python benchmarks/train_ratio.py [--amp] 8 32
"""
import os, sys, time, statistics, torch
from googlenet_fast import bench, cpu_alloc
torch.set_num_threads(2)
# as bench --mode train: no page faults re-taking freed memory (they landed on either network)
print("cpu allocator: glibc keeps freed memory" if cpu_alloc.keep_freed_memory() else "cpu allocator: default")
amp = "--amp" in sys.argv
sizes = [int(a) for a in sys.argv[1:] if a.isdigit()] or [8, 32]
rounds = int(os.environ.get("ROUNDS", "5"))
nets = bench.build_train_networks(seed=0)
steps = {"torchvision": bench.TrainStep(nets.torchvision, amp=amp), "fused": bench.TrainStep(nets.fused, amp=amp)}
for b in sizes:
    x = torch.randn(b, 3, 224, 224, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=torch.channels_last)
    for s in steps.values():
        s(x); s(x)
    wall = {k: [] for k in steps}; cpu = {k: [] for k in steps}
    for _ in range(rounds):
        for k, s in steps.items():
            w0, c0 = time.perf_counter(), time.process_time()
            s(x)
            wall[k].append((time.perf_counter() - w0) * 1e3); cpu[k].append((time.process_time() - c0) * 1e3)
    f = lambda d, k: statistics.median(d[k])
    print(f"b={b} {'bf16 autocast' if amp else 'float32'}: wall median tv {f(wall,'torchvision'):.0f} fused {f(wall,'fused'):.0f} ms "
          f"({f(wall,'torchvision')/f(wall,'fused'):.2f}x; min {min(wall['torchvision']):.0f} / {min(wall['fused']):.0f} = "
          f"{min(wall['torchvision'])/min(wall['fused']):.2f}x); CPU time median tv {f(cpu,'torchvision'):.0f} fused "
          f"{f(cpu,'fused'):.0f} ms ({f(cpu,'torchvision')/f(cpu,'fused'):.2f}x; min {min(cpu['torchvision'])/min(cpu['fused']):.2f}x)", flush=True)
