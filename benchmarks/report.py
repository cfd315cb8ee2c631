#!/usr/bin/env python
"""Benchmark report (issue #6 item 3): speedups per Inception configuration, batch size and mode,
with achieved TFLOP/s and GB/s against ceilings measured in the same run; one JSON, one markdown
table and one PNG per run.

Rows (speedup = torchvision eager time / provider time, both timed in the same interleaved
rounds by googlenet_fast.bench.run_providers):
  * each of the nine Table-1 Inception configurations (torchvision layout: the "5x5" branch is
    3x3, BasicConv2d = conv + BatchNorm + ReLU), at each batch size, channels_last, in
      eval   forward under no_grad, BatchNorm folded into the fused op's weights;
      train  forward in train mode (batch statistics) + backward of sum(y) w.r.t. x and the
             weights (no optimizer at block level);
    providers: fused (googlenet_fast.model.Inception, backend auto), fused [triton] and
    fused [cuda] (GPU: the op forced to one backend), fused=False (the plain branches + cat),
    torchvision eager (the baseline), + CUDA graph (GPU, eval), torch.compile of the
    torchvision block (--compile; inductor freezing in eval), torch.compile max-autotune
    (--max-autotune);
  * the whole network, bench.py's providers (eval: bench.network_providers on calibrated
    BatchNorm statistics; train: bench.train_providers, one SGD step with the aux heads,
    float32 as bench.py's train mode).
Ceilings, timed in the same run: a large copy (GB/s = 2 x bytes / time) and a large square
matmul in each dtype the rows use (bfloat16 on GPU by default, float32 on CPU, TF32 off).
Per row: TFLOP/s = FLOPs / time and GB/s = minimal bytes / time (see :func:`block_cost` and
:func:`network_cost` for what is counted), their fractions of the ceilings, the roofline bound
max(FLOPs / matmul rate, bytes / copy rate) and the fraction of it achieved (bound / time).

A time budget (--budget-s) covers the timing: pass 1 runs every non-compiling provider, the
budget split between the sections (blocks eval, blocks train, network eval, network train; what
a section leaves flows to the next); pass 2 (--compile/--max-autotune) compiles while time is
left, re-timing torchvision eager beside each compiled provider.  A row or provider that does not
fit is reported as skipped with the reason, never dropped.

Usage:
    python benchmarks/report.py                      # CPU: fp32, batches 1 and 8, eval + train
    python benchmarks/report.py --device cuda --compile --out-prefix benchmarks/results/report-cuda-DATE
    python benchmarks/report.py --dry-run --out-prefix /tmp/r   # CPU, Triton interpreter, tiny
                                                     # sizes: every code path, measures nothing
    python benchmarks/report.py --render R.json --out-prefix P  # markdown + PNG again from a JSON
                                                     # (device_check.sh embeds the PNG there)
"""
import argparse
import base64
import contextlib
import copy
import datetime
import json
import os
import platform
import signal
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

if "--dry-run" in sys.argv:  # before triton is imported anywhere
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))

import gpu_blocks  # noqa: E402  (block_flops, block_bytes, make_tv_block, fused_args)
from googlenet_fast import bench  # noqa: E402
from googlenet_fast.roofline import (add_cost_columns, dtype_name, elem_size, measure_ceilings,  # noqa: E402
                                     network_cost)
from googlenet_fast.table1 import TABLE1  # noqa: E402

SCHEMA = "googlenet_fast.report/1"
BASELINE = bench.TORCHVISION
FUSED = bench.FUSED
UNFUSED = bench.UNFUSED
COMPILE = bench.COMPILE
COMPILE_MAX = "torch.compile max-autotune"
GRAPH_SUFFIX = " + CUDA graph"
TV_GRAPH = BASELINE + GRAPH_SUFFIX
FUSED_GRAPH = FUSED + GRAPH_SUFFIX
MODES = ("eval", "train")
NETWORK = "network"

PROVIDER_DESCRIPTIONS = {
    FUSED: "googlenet_fast fused path, backend auto (blocks: model.Inception(fused=True); network: "
           "GoogLeNet(fused=True))",
    "fused [triton]": "the fused op forced to the Triton backend (GPU)",
    "fused [cuda]": "the fused op forced to the CUDA C++ backend (GPU, extension built with CUDA)",
    UNFUSED: "googlenet_fast reference path (fused=False: the plain branches + torch.cat)",
    BASELINE: "torchvision eager (baseline, speedup 1.00)",
    FUSED_GRAPH: "fused, replayed from a CUDA graph (GPU, eval)",
    TV_GRAPH: "torchvision eager, replayed from a CUDA graph (GPU, eval)",
    COMPILE: "torch.compile of the torchvision module, default mode (eval: inductor freezing)",
    COMPILE_MAX: "torch.compile of the torchvision module, mode max-autotune",
}
BLOCK_PROVIDERS = [FUSED, "fused [triton]", "fused [cuda]", UNFUSED, BASELINE, FUSED_GRAPH, TV_GRAPH,
                   COMPILE, COMPILE_MAX]
NETWORK_PROVIDERS = [FUSED, UNFUSED, BASELINE, FUSED_GRAPH, TV_GRAPH, COMPILE, COMPILE_MAX]
COMPILING = (COMPILE, COMPILE_MAX)


# ----------------------------------------------------------------------------------------------
# Cost model of the blocks (the network's, the ceilings and the roofline columns: googlenet_fast/roofline.py;
# unit-tested against hand-computed values in tests/test_report.py)


def block_train_bytes(cfg, n: int, hw: int, elem: int, k5: int = 3) -> int:
    """Minimal bytes of one block's train step (forward + backward), on the fused design's
    model: the forward's :func:`gpu_blocks.block_bytes` (x, weights, output, the r3/r5 scratch
    written and read once), then the backward reads dy and the saved output (BatchNorm/ReLU),
    reads x again, writes dx and dW, and writes + reads the reduce branches' gradient:
    elem x (2 W + 3 P Cin + 3 P Cout + 4 P (r3 + r5)), P = n hw hw."""
    cin, c1, r3, c3, r5, c5, cp, _ = cfg
    p = n * hw * hw
    weights = cin * (c1 + r3 + r5 + cp) + 9 * r3 * c3 + k5 * k5 * r5 * c5
    cout = c1 + c3 + c5 + cp
    return elem * (2 * weights + 3 * p * cin + 3 * p * cout + 4 * p * (r3 + r5))


def block_cost(cfg, n: int, hw: int, dtype: torch.dtype, mode: str) -> Tuple[int, int]:
    """(FLOPs, minimal bytes) of one Inception block.  eval: 2 x the multiply-adds of the six
    convolutions (gpu_blocks.block_flops) and gpu_blocks.block_bytes; train: 3 x those FLOPs
    (forward, input gradient, weight gradient) and :func:`block_train_bytes`.  BatchNorm, ReLU,
    max pool and concatenation are not counted as FLOPs."""
    e = elem_size(dtype)
    if mode == "eval":
        return gpu_blocks.block_flops(cfg, n, hw), gpu_blocks.block_bytes(cfg, n, hw, e)
    if mode == "train":
        return 3 * gpu_blocks.block_flops(cfg, n, hw), block_train_bytes(cfg, n, hw, e)
    raise ValueError(f"mode: expected 'eval' or 'train', got {mode!r}")


# ----------------------------------------------------------------------------------------------
# Ceilings


# ----------------------------------------------------------------------------------------------
# Settings


class Settings:
    """What one run does; the defaults depend on the device and --dry-run."""

    def __init__(self, args):
        self.dry_run = args.dry_run
        if args.dry_run:
            self.device = torch.device("cpu")
        elif args.device == "cuda":
            if not torch.cuda.is_available():
                raise SystemExit("report.py: --device cuda but no CUDA device is visible "
                                 "(--dry-run checks the script on the CPU)")
            self.device = torch.device("cuda")
        else:
            self.device = torch.device("cpu")
        self.cuda = self.device.type == "cuda"
        default_dtype = "bfloat16" if self.cuda else "float32"
        self.dtype = bench.DTYPES[args.dtype or default_dtype]
        self.train_net_dtype = torch.float32  # bench.py's train providers are float32
        self.modes = list(dict.fromkeys(args.modes))
        self.scopes = ["block"] + ([] if args.no_network else [NETWORK])
        self.compile = args.compile or args.max_autotune
        self.max_autotune = args.max_autotune
        self.configs = [c for c in (args.configs or list(TABLE1)) if c]
        # On a shared CPU an OpenMP team of 2 threads waits for a descheduled member at every
        # parallel region (a 2x2 block took 160 ms with 2 threads, 0.3 ms with 1, under load 3
        # on 2 cores): --threads 1 is the stable choice there; dry runs use 1.
        self.threads = args.threads or (1 if args.dry_run else None)
        if args.dry_run:
            self.batches = args.batches or [1]
            self.net_batches = args.net_batches or [1]
            self.block_hw = {name: 2 for name in self.configs}
            self.net_hw = 64  # train mode at batch 1: BatchNorm needs > 1 value per channel
            self.budget_s = args.budget_s or 120.0
            self.timing = dict(min_run_time=0.002, rounds=1, warmup=1)
            self.net_timing = dict(min_run_time=0.002, rounds=1, warmup=1)
            self.ceiling = dict(copy_bytes=1 << 22, matmul_n=128, min_run_time=0.01)
            self.triton_configs = self.configs[:1]  # the interpreter is slow: one configuration
        else:
            self.batches = args.batches or ([1, 256] if self.cuda else [1, 8])
            self.net_batches = args.net_batches or self.batches
            self.block_hw = {name: TABLE1[name][-1] for name in self.configs}
            self.net_hw = 224
            self.budget_s = args.budget_s or (60.0 if self.cuda else 270.0)
            if self.cuda:
                self.timing = dict(min_run_time=0.06, rounds=3, warmup=3)
                self.net_timing = dict(min_run_time=0.15, rounds=3, warmup=3)
                self.ceiling = dict(copy_bytes=1 << 30, matmul_n=8192, min_run_time=0.2)
            else:
                self.timing = dict(min_run_time=0.3, rounds=3, warmup=2)
                self.net_timing = dict(min_run_time=0.6, rounds=3, warmup=2)
                self.ceiling = dict(copy_bytes=1 << 28, matmul_n=2048, min_run_time=0.6)
            self.triton_configs = self.configs
        self.compile_estimate_s = 25.0 if self.cuda else 40.0
        self.last_row_s: Dict[tuple, float] = {}  # seconds of the last row timed per (scope, mode)


def provider_availability(s: Settings) -> Dict[str, Optional[str]]:
    """{provider: None when it runs in this session, else the reason it is skipped} (before any
    budget or per-row reason)."""
    from googlenet_fast.backends import native
    reasons: Dict[str, Optional[str]] = {p: None for p in BLOCK_PROVIDERS}
    no_gpu = "no CUDA device" + (" (dry run on the CPU)" if s.dry_run else "")
    try:
        import triton  # noqa: F401
        has_triton = True
    except ImportError:
        has_triton = False
    if not has_triton:
        reasons["fused [triton]"] = "triton is not installed"
    elif not s.cuda and not s.dry_run:
        reasons["fused [triton]"] = "no CUDA device (Triton needs a GPU; --dry-run runs its interpreter)"
    if not s.cuda:
        reasons["fused [cuda]"] = no_gpu
    elif not native.cuda_available():
        reasons["fused [cuda]"] = ("googlenet_fast._C has no CUDA kernels "
                                   f"({native.BUILD_INFO.get('cuda_skip_reason') or native.LOAD_ERROR})")
    if not s.cuda:
        reasons[FUSED_GRAPH] = reasons[TV_GRAPH] = no_gpu
    if not s.compile:
        reasons[COMPILE] = "not requested (--compile)"
    elif s.dry_run:
        reasons[COMPILE] = "dry run: torch.compile takes minutes on the CPU"
    if not s.max_autotune:
        reasons[COMPILE_MAX] = "not requested (--max-autotune)"
    elif s.dry_run:
        reasons[COMPILE_MAX] = "dry run: torch.compile takes minutes on the CPU"
    return reasons


# ----------------------------------------------------------------------------------------------
# Providers of one block


@contextlib.contextmanager
def backend_env(name: Optional[str]):
    """$GOOGLENET_FAST_BACKEND = name inside (train mode has no backend argument: the model's
    train path resolves "auto" through it); nothing when name is None."""
    if name is None:
        yield
        return
    saved = os.environ.get("GOOGLENET_FAST_BACKEND")
    os.environ["GOOGLENET_FAST_BACKEND"] = name
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("GOOGLENET_FAST_BACKEND", None)
        else:
            os.environ["GOOGLENET_FAST_BACKEND"] = saved


class BlockTrainStep:
    """fn(x): drop the gradients, y = forward(x) in train mode, sum(y).backward() (x requires
    grad: the block's input gradient is computed as inside the network)."""

    def __init__(self, module: torch.nn.Module, forward=None, backend: Optional[str] = None):
        self.module = module.train()
        self.forward = forward if forward is not None else module
        self.params = list(module.parameters())
        self.backend = backend

    def __call__(self, x):
        for p in self.params:
            p.grad = None
        x.grad = None
        with backend_env(self.backend):
            y = self.forward(x)
            y.sum().backward()
        return y


def our_block(tv_block, fused: bool):
    from googlenet_fast.model import Inception
    cin = tv_block.branch1.conv.in_channels
    chans = (tv_block.branch1.conv.out_channels, tv_block.branch2[0].conv.out_channels,
             tv_block.branch2[1].conv.out_channels, tv_block.branch3[0].conv.out_channels,
             tv_block.branch3[1].conv.out_channels, tv_block.branch4[1].conv.out_channels)
    p = next(tv_block.parameters())
    m = Inception(cin, *chans, fused=fused)
    m.load_state_dict(tv_block.state_dict(), strict=True)
    return m.to(device=p.device, dtype=p.dtype, memory_format=torch.channels_last).train(tv_block.training)


def block_providers(name: str, cfg, mode: str, s: Settings, wanted: Sequence[str]) -> List[bench.Provider]:
    """The block providers named in ``wanted`` (all available) for one configuration and mode."""
    import googlenet_fast
    tv = gpu_blocks.make_tv_block(cfg, s.device, s.dtype, seed=sum(map(ord, name)))
    ps = []
    if mode == "eval":
        wargs = gpu_blocks.fused_args(tv, s.dtype)
        for p in wanted:
            if p == FUSED:
                ps.append(bench.Provider(FUSED, our_block(tv, True).eval()))
            elif p in ("fused [triton]", "fused [cuda]"):
                be = p[len("fused ["):-1]
                ps.append(bench.Provider(p, lambda x, be=be: googlenet_fast.inception(
                    x, *wargs, relu=True, backend=be, validate=False)))
            elif p == UNFUSED:
                ps.append(bench.Provider(UNFUSED, our_block(tv, False).eval()))
            elif p == BASELINE:
                ps.append(bench.Provider(BASELINE, tv))
            elif p == TV_GRAPH:
                ps.append(bench.Provider(p, tv, prepare=lambda x: bench.cuda_graphed(tv, x)))
            elif p == FUSED_GRAPH:
                m = our_block(tv, True).eval()
                ps.append(bench.Provider(p, m, prepare=lambda x, m=m: bench.cuda_graphed(m, x)))
            elif p == COMPILE:
                ps.append(bench.Provider(p, bench.compile_with_freezing(copy.deepcopy(tv)), compiles=True))
            elif p == COMPILE_MAX:
                ps.append(bench.Provider(p, torch.compile(copy.deepcopy(tv), mode="max-autotune", dynamic=False),
                                         compiles=True))
    else:
        for p in wanted:
            if p == FUSED:
                ps.append(bench.Provider(FUSED, BlockTrainStep(our_block(tv, True))))
            elif p in ("fused [triton]", "fused [cuda]"):
                ps.append(bench.Provider(p, BlockTrainStep(our_block(tv, True), backend=p[len("fused ["):-1])))
            elif p == UNFUSED:
                ps.append(bench.Provider(UNFUSED, BlockTrainStep(our_block(tv, False))))
            elif p == BASELINE:
                ps.append(bench.Provider(BASELINE, BlockTrainStep(copy.deepcopy(tv))))
            elif p in COMPILING:
                m = copy.deepcopy(tv).train()
                kw = {"mode": "max-autotune"} if p == COMPILE_MAX else {}
                ps.append(bench.Provider(p, BlockTrainStep(m, forward=torch.compile(m, dynamic=False, **kw)),
                                         compiles=True))
    return ps


def block_row_skips(name: str, mode: str, s: Settings, avail: Dict[str, Optional[str]]) -> Dict[str, str]:
    """{provider: reason} of the providers that do not run for this block row."""
    out = {p: r for p, r in avail.items() if r is not None}
    if mode == "train":
        for p in (FUSED_GRAPH, TV_GRAPH):
            out.setdefault(p, "not measured in train mode (a graph-captured backward is not set up "
                              "at block level)")
    if s.dry_run and "fused [triton]" not in out and name not in s.triton_configs:
        out["fused [triton]"] = f"dry run: the Triton interpreter runs only {', '.join(s.triton_configs)}"
    return out


def network_row_skips(mode: str, s: Settings, avail: Dict[str, Optional[str]]) -> Dict[str, str]:
    out = {p: r for p, r in avail.items() if r is not None and p in NETWORK_PROVIDERS}
    if mode == "train":
        for p in (FUSED_GRAPH, TV_GRAPH):
            out.setdefault(p, "bench.py's train providers have no CUDA-graph variant")
        out.setdefault(COMPILE_MAX, "bench.py's train providers compile in the default mode only")
    return out


# ----------------------------------------------------------------------------------------------
# Timing


def time_providers(ps: List[bench.Provider], x, timing, mode: str, dtype) -> Dict[str, Dict[str, object]]:
    """{provider: row} (status ok with timing stats and speedup vs torchvision eager, or error)."""
    grad = torch.enable_grad() if mode == "train" else torch.no_grad()
    tf32 = bench.no_tf32() if dtype == torch.float32 else contextlib.nullcontext()
    ctx = bench.freezing_context if mode == "eval" else bench.quiet_compile_context
    with grad, tf32:
        results = bench.run_providers(ps, x, show_progress=False, compile_context=ctx, **timing)
    rows = {}
    for r in bench.rows_with_speedup(results, BASELINE):
        r = dict(r)
        r["status"] = "error" if "error" in r else "ok"
        rows[r["provider"]] = r
    return rows


def block_input(cfg, n, hw, s: Settings, mode: str):
    x = torch.randn(n, cfg[0], hw, hw, device=s.device, dtype=s.dtype).contiguous(
        memory_format=torch.channels_last)
    if mode == "train":
        x.requires_grad_(True)
    return x


def check_eval_outputs(ps, x, rows):
    """max |provider - torchvision| / max |torchvision| of the eager fused providers (eval), once."""
    ref = None
    by_name = {p.name: p for p in ps}
    with torch.no_grad():
        if BASELINE in by_name:
            ref = by_name[BASELINE].fn(x).float()
        for name in (FUSED, "fused [triton]", "fused [cuda]", UNFUSED):
            if ref is None or name not in by_name or rows.get(name, {}).get("status") != "ok":
                continue
            y = by_name[name].fn(x).float()
            rows[name]["max_rel_err"] = ((y - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


class Budget:
    def __init__(self, total_s: float):
        self.total = total_s
        self.t0 = time.monotonic()

    def used(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.total - self.used()


def skipped_row(scope, config, mode, batch, hw, dtype, provider, reason):
    return {"scope": scope, "config": config, "mode": mode, "batch_size": batch, "hw": hw,
            "dtype": dtype_name(dtype), "provider": provider, "status": "skipped", "reason": reason}


def finish_row(r, scope, config, mode, batch, hw, dtype, flops, nbytes, ceilings, pass_no):
    r.update(scope=scope, config=config, mode=mode, batch_size=batch, hw=hw, dtype=dtype_name(dtype),
             timing_pass=pass_no)
    if r["status"] == "ok":
        r["baseline_ms"] = (r["median_ms"] * r["speedup"]) if r.get("speedup") else None
    return add_cost_columns(r, flops, nbytes, ceilings, dtype)


def run_blocks(mode, s, avail, ceilings, deadline_fn, rows, log, pass_no=1, only=None):
    """Time the block rows of one mode; pass 1: non-compiling providers (``only`` None); pass 2:
    ``only`` = compiling providers + the baseline."""
    for n in s.batches:
        for name in s.configs:
            cfg = TABLE1[name]
            hw = s.block_hw[name]
            skips = block_row_skips(name, mode, s, avail)
            flops, nbytes = block_cost(cfg, n, hw, s.dtype, mode)
            if pass_no == 1:
                wanted = [p for p in BLOCK_PROVIDERS if p not in skips and p not in COMPILING]
                for p in BLOCK_PROVIDERS:  # every provider not timed is reported, with its reason
                    if p in skips:
                        rows.append(skipped_row("block", name, mode, n, hw, s.dtype, p, skips[p]))
            else:
                wanted = [p for p in (only or ()) if p not in skips]
                if not wanted:
                    continue
                wanted = [BASELINE] + wanted
            left = deadline_fn()
            # pass 1: start a row only if about as long as the previous one is left (half of it)
            est = (s.compile_estimate_s * (len(wanted) - 1) if pass_no == 2
                   else 0.5 * s.last_row_s.get(("block", mode), 0.0))
            if left <= est:
                reason = (f"budget: {s.budget_s:g} s, none left for this section" if pass_no == 1 else
                          f"budget: compiling needs ~{est:.0f} s, {max(left, 0):.0f} s left")
                for p in wanted:
                    if pass_no == 2 and p == BASELINE:
                        continue
                    rows.append(skipped_row("block", name, mode, n, hw, s.dtype, p, reason))
                continue
            t0 = time.monotonic()
            if pass_no == 2:
                # every block shares torchvision's Inception.forward code object: without a reset,
                # dynamo's recompile limit (8) silently falls back to eager after 8 blocks
                torch._dynamo.reset()
            ps = block_providers(name, cfg, mode, s, wanted)
            x = block_input(cfg, n, hw, s, mode)
            got = time_providers(ps, x, s.timing, mode, s.dtype)
            if mode == "eval" and pass_no == 1:
                check_eval_outputs(ps, x, got)
            for p in wanted:
                if pass_no == 2 and p == BASELINE:
                    continue
                rows.append(finish_row(got[p], "block", name, mode, n, hw, s.dtype, flops, nbytes, ceilings,
                                       pass_no))
            if pass_no == 2:
                s.compile_estimate_s = max(5.0, (time.monotonic() - t0) / max(1, len(wanted) - 1))
            else:
                s.last_row_s[("block", mode)] = time.monotonic() - t0
            log(f"block {name} b={n} {mode}: " + ", ".join(
                f"{p} {got[p]['speedup']:.2f}x" if got[p].get("speedup") else f"{p} {got[p]['status']}"
                for p in wanted if p != BASELINE) + f" ({time.monotonic() - t0:.1f} s)")
            del ps, x
            if s.cuda:
                torch.cuda.empty_cache()


def run_network(mode, s, avail, ceilings, deadline_fn, rows, log, pass_no=1, only=None):
    dtype = s.dtype if mode == "eval" else s.train_net_dtype
    skips = network_row_skips(mode, s, avail)
    hw = s.net_hw
    nets = None
    for n in s.net_batches:
        flops, nbytes = network_cost(n, hw, dtype, mode)
        if pass_no == 1:
            wanted = [p for p in NETWORK_PROVIDERS if p not in skips and p not in COMPILING]
            for p in NETWORK_PROVIDERS:
                if p in skips:
                    rows.append(skipped_row(NETWORK, "googlenet", mode, n, hw, dtype, p, skips[p]))
        else:
            wanted = [p for p in (only or ()) if p not in skips]
            if not wanted:
                continue
            wanted = [BASELINE] + wanted
        left = deadline_fn()
        est = ((s.compile_estimate_s * 2) * (len(wanted) - 1) if pass_no == 2
               else 0.5 * s.last_row_s.get((NETWORK, mode), 0.0))
        if left <= est:
            reason = (f"budget: {s.budget_s:g} s, none left for this section" if pass_no == 1 else
                      f"budget: compiling the network needs ~{est:.0f} s, {max(left, 0):.0f} s left")
            for p in wanted:
                if not (pass_no == 2 and p == BASELINE):
                    rows.append(skipped_row(NETWORK, "googlenet", mode, n, hw, dtype, p, reason))
            continue
        t0 = time.monotonic()
        if pass_no == 2:
            torch._dynamo.reset()
        if nets is None:
            if mode == "eval":
                calib = torch.randn(4, 3, hw, hw, generator=torch.Generator().manual_seed(0))
                nets = bench.build_networks(device=s.device, dtype=dtype, calibration=calib)
            else:
                nets = bench.build_train_networks(device=s.device)
        ps = network_providers(nets, mode, s, wanted)
        x = torch.randn(n, 3, hw, hw, device=s.device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        got = time_providers(ps, x, s.net_timing, mode, dtype)
        if pass_no == 1:
            s.last_row_s[(NETWORK, mode)] = time.monotonic() - t0
        for p in wanted:
            if p not in got:
                rows.append(skipped_row(NETWORK, "googlenet", mode, n, hw, dtype, p,
                                        "bench.py did not provide it"))
                continue
            if pass_no == 2 and p == BASELINE:
                continue
            rows.append(finish_row(got[p], NETWORK, "googlenet", mode, n, hw, dtype, flops, nbytes, ceilings,
                                   pass_no))
        log(f"network b={n} {mode}: " + ", ".join(
            f"{p} {got[p]['speedup']:.2f}x" if got.get(p, {}).get("speedup") else f"{p} {got.get(p, {}).get('status')}"
            for p in wanted if p != BASELINE) + f" ({time.monotonic() - t0:.1f} s)")
        del ps, x
    del nets
    if s.cuda:
        torch.cuda.empty_cache()


def network_providers(nets, mode, s: Settings, wanted) -> List[bench.Provider]:
    """bench.py's providers (eval: bench.network_providers; train: bench.train_providers),
    keeping those in ``wanted``; max-autotune added here (bench.py compiles in default mode)."""
    if mode == "eval":
        ps = bench.network_providers(nets, compile=COMPILE in wanted,
                                     cuda_graphs=(FUSED_GRAPH in wanted or TV_GRAPH in wanted))
        if COMPILE_MAX in wanted:
            ps.append(bench.Provider(COMPILE_MAX, torch.compile(nets.baseline, mode="max-autotune", dynamic=False),
                                     compiles=True))
    else:
        ps = bench.train_providers(nets, compile=COMPILE in wanted)
    return [p for p in ps if p.name in wanted]


# ----------------------------------------------------------------------------------------------
# The run


def run(args) -> Dict[str, object]:
    s = Settings(args)
    if s.threads and not s.cuda:
        torch.set_num_threads(s.threads)
    started = datetime.datetime.now(datetime.timezone.utc)
    logf = (lambda msg: print(msg, file=sys.stderr, flush=True)) if not args.quiet else (lambda msg: None)
    load_before = bench.load_average()
    if s.cuda:
        torch.backends.cudnn.benchmark = True
    avail = provider_availability(s)
    dtypes = [s.dtype] + ([s.train_net_dtype] if "train" in s.modes else [])
    t0 = time.monotonic()
    ceilings = measure_ceilings(s.device, dtypes, **s.ceiling)
    ceilings["seconds"] = time.monotonic() - t0
    logf(f"ceilings: copy {ceilings['copy']['gb_s']:.1f} GB/s, matmul " + ", ".join(
        f"{k} {v['tflop_s']:.3g} TFLOP/s" for k, v in ceilings["matmul"].items()))
    budget = Budget(s.budget_s)
    rows: List[Dict[str, object]] = []
    sections = [(scope, mode) for scope in s.scopes for mode in s.modes]
    pass1_budget = s.budget_s * (0.55 if s.compile and not s.dry_run else 1.0)
    interrupted = None
    old_handler = signal.signal(signal.SIGTERM, _on_sigterm)  # `timeout` stops us: still write the files
    try:
        for i, (scope, mode) in enumerate(sections):
            share = (pass1_budget - budget.used()) / (len(sections) - i)
            section_end = budget.used() + share
            deadline = (lambda end=section_end: end - budget.used())
            fn = run_blocks if scope == "block" else run_network
            fn(mode, s, avail, ceilings, deadline, rows, logf)
        compiling = [p for p in COMPILING if avail.get(p) is None]
        if compiling:  # pass 2: network first, then the blocks, while the budget lasts
            for scope, mode in [(sc, m) for sc in (NETWORK, "block") if sc in s.scopes for m in s.modes]:
                fn = run_blocks if scope == "block" else run_network
                fn(mode, s, avail, ceilings, budget.left, rows, logf, pass_no=2, only=compiling)
    except (Interrupted, KeyboardInterrupt) as e:
        interrupted = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        logf(f"interrupted ({interrupted}): writing what was measured")
    finally:
        signal.signal(signal.SIGTERM, old_handler)
    complete_rows(rows, s, "not reached: the run was interrupted (" + interrupted + ")" if interrupted
                  else "not reached")
    load_after = bench.load_average()
    cores = os.cpu_count() or 1
    busy = None
    if load_before is not None:
        slack = max(1.0, 0.5 * cores)
        busy = bool(load_before[0] > slack or load_after[0] > torch.get_num_threads() + slack)
    env = bench.environment_info()
    report = {
        "schema": SCHEMA,
        "created_utc": started.isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.argv[0] or "report.py")] + (args.argv or [])),
        "dry_run": s.dry_run,
        "device": s.device.type,
        "device_name": torch.cuda.get_device_name() if s.cuda else "CPU",
        "machine": {"hostname": platform.node(), "cpu": env.get("cpu"), "cores": cores,
                    "torch_threads": torch.get_num_threads(), "platform": platform.platform()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "triton": env.get("triton"), "torchvision": env.get("torchvision"),
                     "cuda": torch.version.cuda},
        "dtype": dtype_name(s.dtype),
        "network_train_dtype": dtype_name(s.train_net_dtype),
        "modes": s.modes, "batches": s.batches, "network_batches": s.net_batches,
        "configs": s.configs, "block_hw": s.block_hw, "network_hw": s.net_hw,
        "timing": {"blocks": s.timing, "network": s.net_timing},
        "load_average": {"before": load_before, "after": load_after, "cores": cores, "busy": busy},
        "ceilings": ceilings,
        "budget_s": s.budget_s, "elapsed_s": budget.used(), "interrupted": interrupted,
        "providers": provider_summary(rows),
        "rows": rows,
        "environment": env,
    }
    return report


class Interrupted(BaseException):  # not caught by run_providers' `except Exception`
    pass


def _on_sigterm(signum, frame):
    raise Interrupted("SIGTERM, e.g. the time limit of `timeout`")


def complete_rows(rows, s: Settings, reason: str) -> None:
    """Add a skipped row for every (scope, config, mode, batch, provider) that has none (a run
    interrupted mid-way, a compiling provider never reached): nothing is silently missing."""
    have = {(r["scope"], r["config"], r["mode"], r["batch_size"], r["provider"]) for r in rows}
    for mode in s.modes:
        for n in s.batches:
            for name in s.configs:
                for p in BLOCK_PROVIDERS:
                    if ("block", name, mode, n, p) not in have:
                        rows.append(skipped_row("block", name, mode, n, s.block_hw[name], s.dtype, p, reason))
        dtype = s.dtype if mode == "eval" else s.train_net_dtype
        for n in (s.net_batches if NETWORK in s.scopes else ()):
            for p in NETWORK_PROVIDERS:
                if (NETWORK, "googlenet", mode, n, p) not in have:
                    rows.append(skipped_row(NETWORK, "googlenet", mode, n, s.net_hw, dtype, p, reason))


def provider_summary(rows) -> Dict[str, Dict[str, object]]:
    out = {}
    for p in BLOCK_PROVIDERS:
        rs = [r for r in rows if r["provider"] == p]
        reasons: Dict[str, int] = {}
        for r in rs:
            if r["status"] == "skipped":
                reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        out[p] = {"description": PROVIDER_DESCRIPTIONS[p],
                  "rows_ok": sum(r["status"] == "ok" for r in rs),
                  "rows_error": sum(r["status"] == "error" for r in rs),
                  "rows_skipped": sum(r["status"] == "skipped" for r in rs),
                  "skip_reasons": reasons}
    return out


# ----------------------------------------------------------------------------------------------
# Markdown


def _fmt(v, spec, dash="-"):
    return dash if v is None else format(v, spec)


def _speedup(v):
    return "-" if not v else (f"{v:.2f}x" if v >= 0.1 else f"{v:.2g}x")


def _pct(v):
    return "-" if v is None else (f"{100 * v:.1f}%" if v < 10 else f"{v:.1f}x")


def markdown(report) -> str:
    L = []
    la = report["load_average"]
    v = report["versions"]
    L.append(f"# googlenet_fast benchmark report: {report['device']}, {report['dtype']}"
             + (" (DRY RUN: tiny sizes, Triton interpreter; not a measurement)" if report["dry_run"] else ""))
    L.append("")
    L.append(f"- date: {report['created_utc']} (UTC)")
    m = report["machine"]
    L.append(f"- machine: {report['device_name']} ({m['cpu']}; {m['torch_threads']} torch threads), "
             f"host {m['hostname']}")
    L.append(f"- versions: torch {v['torch']}, triton {v['triton']}, torchvision {v['torchvision']}, "
             f"Python {v['python']}, CUDA {v['cuda']}")
    L.append(f"- dtype: {report['dtype']} (blocks, network eval); network train step: "
             f"{report['network_train_dtype']} (bench.py's train providers); channels_last")
    if la["before"] is not None:
        lb = ", ".join(f"{x:.2f}" for x in la["before"])
        lA = ", ".join(f"{x:.2f}" for x in la["after"])
        L.append(f"- load average (1/5/15 min): {lb} before, {lA} after, {la['cores']} cores"
                 + (": other processes were running, the timings are noisy" if la["busy"] else ": quiet"))
    c = report["ceilings"]
    mm = "; ".join(f"matmul {k} {x['shape'][0]}^3 {x['tflop_s']:.3g} TFLOP/s" for k, x in c["matmul"].items())
    L.append(f"- ceilings measured in this run: copy {c['copy']['gb_s']:.1f} GB/s "
             f"({c['copy']['bytes'] / 1e6:.0f} MB read + written); {mm}")
    L.append(f"- budget: {report['budget_s']:g} s for the timing, {report['elapsed_s']:.0f} s used; "
             f"timing per provider: blocks {report['timing']['blocks']}, network {report['timing']['network']}")
    L.append(f"- command: `{report['command']}`")
    if report.get("interrupted"):
        L.append(f"- INTERRUPTED ({report['interrupted']}): the rows not reached are listed as skipped")
    L.append("")
    L.append("Speedup = torchvision eager time / provider time (same interleaved rounds). eval: forward "
             "under no_grad, BatchNorm folded (fused); train: blocks = train-mode forward + backward of "
             "sum(y); network = bench.py's train step (aux heads, CE + 0.3 aux, backward, SGD step). "
             "TFLOP/s and GB/s use the cost model of benchmarks/report.py (block_cost, network_cost); "
             "%peak = of the ceilings measured in this run (not theoretical peaks: a row can pass 100%); %roofline = max(FLOPs/matmul rate, bytes/copy rate) / time.")
    L.append("")
    L.append("## Providers")
    L.append("")
    L.append("| provider | what | rows timed | failed | skipped | skip reasons |")
    L.append("|---|---|---:|---:|---:|---|")
    for p, d in report["providers"].items():
        reasons = "; ".join(f"{r} ({n})" for r, n in d["skip_reasons"].items()) or "-"
        L.append(f"| {p} | {d['description']} | {d['rows_ok']} | {d['rows_error']} | {d['rows_skipped']} | {reasons} |")
    L.append("")
    rows = report["rows"]
    ok = [r for r in rows if r["status"] == "ok"]
    # compact speedup tables
    for mode in report["modes"]:
        for n in sorted({r["batch_size"] for r in rows if r["mode"] == mode}):
            rs = [r for r in rows if r["mode"] == mode and r["batch_size"] == n]
            provs = [p for p in BLOCK_PROVIDERS if p != BASELINE and any(
                r["provider"] == p and r["status"] == "ok" for r in rs)]
            L.append(f"## Speedup vs torchvision eager: {mode}, batch {n}")
            L.append("")
            configs = report["configs"] + ["googlenet"]
            L.append("| config | torchvision ms | " + " | ".join(provs) + " |")
            L.append("|---|---:|" + "---:|" * len(provs))
            geo = {p: [] for p in provs}
            for cfg in configs:
                cr = {r["provider"]: r for r in rs if r["config"] == cfg}
                if not cr:
                    continue
                base = cr.get(BASELINE, {})
                cells = []
                for p in provs:
                    r = cr.get(p)
                    if r is None:
                        cells.append("-")
                    elif r["status"] == "ok":
                        cells.append(_speedup(r.get("speedup")))
                        if r.get("speedup") and cfg != "googlenet":
                            geo[p].append(r["speedup"])
                    else:
                        cells.append(r["status"])
                bms = _fmt(base.get("median_ms"), ".3f") if base.get("status") == "ok" else base.get("status", "-")
                L.append(f"| {cfg if cfg != 'googlenet' else 'network'} | {bms} | " + " | ".join(cells) + " |")
            L.append("| geomean (blocks) | | " + " | ".join(
                f"{bench.geomean(g):.2f}x" if g else "-" for g in geo.values()) + " |")
            L.append("")
    L.append("## All timed rows")
    L.append("")
    L.append("| mode | batch | config | provider | median ms | IQR ms | speedup | GFLOP | MB | TFLOP/s | %peak FLOP/s "
             "| GB/s | %peak GB/s | roofline ms (bound) | %roofline | max rel err |")
    L.append("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if r["status"] == "skipped":
            continue
        if r["status"] == "error":
            L.append(f"| {r['mode']} | {r['batch_size']} | {r['config']} | {r['provider']} | failed: "
                     f"{r.get('error', '')} |" + " |" * 11)
            continue
        L.append(f"| {r['mode']} | {r['batch_size']} | {r['config']} | {r['provider']} | {r['median_ms']:.3f} | "
                 f"{r['iqr_ms']:.3f} | {_speedup(r.get('speedup'))} | {r['gflop']:.3g} | {r['mbytes']:.3g} | "
                 f"{r['tflop_s']:.3g} | {_pct(r['frac_peak_flops'])} | {r['gb_s']:.3g} | {_pct(r['frac_peak_bw'])} | "
                 f"{r['roofline_ms']:.3g} ({r['bound']}) | {_pct(r['frac_roofline'])} | "
                 f"{_fmt(r.get('max_rel_err'), '.1e')} |")
    noisy = [f"{r['mode']} b={r['batch_size']} {r['config']} {r['provider']}" for r in rows
             if r["status"] == "ok" and r["iqr_ms"] > 0.1 * r["median_ms"]]
    if noisy:
        L.append("")
        L.append(f"Noisy rows (IQR over 10% of the median; read their speedups with care): {', '.join(noisy)}")
    skipped = [r for r in rows if r["status"] == "skipped"]
    L.append("")
    L.append(f"## Skipped ({len(skipped)} provider rows)")
    L.append("")
    by_reason: Dict[Tuple[str, str], List[str]] = {}
    for r in skipped:
        by_reason.setdefault((r["provider"], r["reason"]), []).append(
            f"{r['mode']} b={r['batch_size']} {r['config']}")
    L.append("| provider | reason | rows |")
    L.append("|---|---|---|")
    for (p, reason), where in by_reason.items():
        L.append(f"| {p} | {reason} | {len(where)}: {', '.join(where[:12])}{' ...' if len(where) > 12 else ''} |")
    L.append("")
    del ok
    return "\n".join(L)


def network_markdown(report) -> str:
    """Only the whole-network rows as a markdown table (what ``googlenet-fast bench`` can print)."""
    lines = ["| mode | batch | provider | median ms | speedup | TFLOP/s | %peak FLOP/s | GB/s | %peak GB/s "
             "| %roofline |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        if r["scope"] != NETWORK:
            continue
        if r["status"] != "ok":
            lines.append(f"| {r['mode']} | {r['batch_size']} | {r['provider']} | {r['status']}: "
                         f"{r.get('reason') or r.get('error', '')} | | | | | | |")
            continue
        lines.append(f"| {r['mode']} | {r['batch_size']} | {r['provider']} | {r['median_ms']:.3f} | "
                     f"{_speedup(r.get('speedup'))} | {r['tflop_s']:.3g} | {_pct(r['frac_peak_flops'])} | "
                     f"{r['gb_s']:.3g} | {_pct(r['frac_peak_bw'])} | {_pct(r['frac_roofline'])} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Plot


def plot(report, path: str) -> None:
    """Grouped bars of speedup per configuration (and the network), one panel per (mode, batch),
    one bar per provider, a line at 1.0; skipped/failed bars are absent (see the markdown)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in report["rows"] if r["status"] == "ok" and r.get("speedup") and r["provider"] != BASELINE]
    modes = report["modes"]
    batches = sorted({r["batch_size"] for r in report["rows"]})
    configs = list(report["configs"]) + ["googlenet"]
    provs = [p for p in BLOCK_PROVIDERS if any(r["provider"] == p for r in rows)]
    ncol = max(1, len(batches))
    fig, axes = plt.subplots(len(modes), ncol, figsize=(max(8.0, 5.5 * ncol), 3.6 * len(modes) + 0.8),
                             squeeze=False)
    width = 0.8 / max(1, len(provs))
    cmap = plt.get_cmap("tab10")
    for i, mode in enumerate(modes):
        for j, n in enumerate(batches):
            ax = axes[i][j]
            for k, p in enumerate(provs):
                xs, ys = [], []
                for ci, cfg in enumerate(configs):
                    r = next((r for r in rows if r["mode"] == mode and r["batch_size"] == n and r["config"] == cfg
                              and r["provider"] == p), None)
                    if r is not None:
                        xs.append(ci - 0.4 + width * (k + 0.5))
                        ys.append(r["speedup"])
                ax.bar(xs, ys, width, label=p, color=cmap(k % 10))
            ax.axhline(1.0, color="black", linewidth=0.8)
            ax.set_xticks(range(len(configs)))
            ax.set_xticklabels([c if c != "googlenet" else "net" for c in configs], fontsize=8)
            ax.set_title(f"{mode}, batch {n}", fontsize=10)
            ax.set_ylabel("speedup vs torchvision eager", fontsize=8)
            vals = [r["speedup"] for r in rows if r["mode"] == mode and r["batch_size"] == n]
            if vals and max(vals) / min(vals) > 20:
                ax.set_yscale("log")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for a in axes.flat:
        h, lab = a.get_legend_handles_labels()
        for hh, ll in zip(h, lab):
            if ll not in labels:
                handles.append(hh)
                labels.append(ll)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=8)
    la = report["load_average"]["before"]
    fig.suptitle(f"googlenet_fast vs torchvision eager (speedup, > 1: faster)\n{report['device_name']}, "
                 f"{report['dtype']}, {report['created_utc'][:10]}"
                 + (f", load avg {la[0]:.1f} on {report['load_average']['cores']} cores" if la else "")
                 + (" (DRY RUN)" if report["dry_run"] else ""), fontsize=10)
    fig.tight_layout(rect=(0, 0.07 if handles else 0, 1, 0.92))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------


def write_outputs(report, prefix: str, embed_png: bool = False) -> List[str]:
    d = os.path.dirname(os.path.abspath(prefix))
    os.makedirs(d, exist_ok=True)
    md = markdown(report)
    report["markdown"] = md
    with open(prefix + ".md", "w") as f:
        f.write(md + "\n")
    plot(report, prefix + ".png")
    if embed_png:
        with open(prefix + ".png", "rb") as f:
            report["png_base64"] = base64.b64encode(f.read()).decode("ascii")
    with open(prefix + ".json", "w") as f:
        json.dump(report, f, indent=1, default=str)
    return [prefix + ext for ext in (".json", ".md", ".png")]


def _batches(s: str) -> List[int]:
    try:
        v = [int(b) for b in s.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected batch sizes like 1,8, got {s!r}")
    if not v or any(b < 1 for b in v):
        raise argparse.ArgumentTypeError(f"expected batch sizes >= 1, got {s!r}")
    return v


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=sorted(bench.DTYPES), default=None,
                   help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--batches", type=_batches, default=None,
                   help="block and network batch sizes (default: cpu 1,8; cuda 1,256; dry run 1)")
    p.add_argument("--net-batches", type=_batches, default=None, help="network batch sizes (default: --batches)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--configs", type=lambda v: [c for c in v.split(",") if c], default=None,
                   help="subset of the Table-1 configurations, comma separated (default: all nine)")
    p.add_argument("--no-network", action="store_true", help="only the Inception blocks")
    p.add_argument("--compile", action="store_true", help="add torch.compile of the torchvision modules")
    p.add_argument("--max-autotune", action="store_true", help="also torch.compile mode max-autotune")
    p.add_argument("--out-prefix", default=None,
                   help="writes PREFIX.json/.md/.png (default benchmarks/results/report-<device>-<date>)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="seconds for the timing (default: cuda 60, cpu 270, dry run 120)")
    p.add_argument("--embed-png", action="store_true", help="also store the PNG (base64) in the JSON")
    p.add_argument("--render", metavar="JSON", default=None,
                   help="write the markdown and PNG (and JSON) of an earlier run's JSON to --out-prefix")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU + Triton interpreter at tiny sizes: exercises every path, measures nothing")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads on the CPU (default: torch's; dry run 1). On a CPU busy "
                        "with other jobs 1 is far more stable")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if args.configs:
        bad = [c for c in args.configs if c not in TABLE1]
        if bad:
            raise SystemExit(f"report.py: --configs: unknown {bad}, expected some of {list(TABLE1)}")
    if args.dry_run and os.environ.get("TRITON_INTERPRET") != "1":
        os.environ["TRITON_INTERPRET"] = "1"  # main(argv) called from Python (tests)
    if args.render:
        with open(args.render) as f:
            report = json.load(f)
        prefix = args.out_prefix or os.path.splitext(args.render)[0]
        paths = write_outputs(report, prefix, embed_png=False)
        print("wrote " + ", ".join(paths))
        return 0
    report = run(args)
    date = report["created_utc"][:10]
    prefix = args.out_prefix or os.path.join(HERE, "results", f"report-{report['device']}-{date}")
    paths = write_outputs(report, prefix, embed_png=args.embed_png)
    if not args.quiet:
        print(report["markdown"])
    print("wrote " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
