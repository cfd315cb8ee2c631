"""Timing and comparison helpers shared by ``googlenet-fast bench`` and benchmarks/.

Speed is always a ratio against peers measured in the same run (the machines are noisy), in
the same process except the inference engines (their own worker processes): providers are
warmed up first, then timed in interleaved rounds with torch.utils.benchmark.Timer's
blocked_autorange, all with the same thread count.

Providers of the whole network (variant="torchvision"):
    fused                  googlenet_fast.GoogLeNet(fused=True), channels_last
    fused=False            googlenet_fast.GoogLeNet(fused=False), channels_last
    torchvision eager      torchvision.models.googlenet, channels_last (the baseline, speedup 1.00)
    torch.compile          torch.compile(torchvision model) with inductor freezing (opt-in)
    ... + CUDA graph       the same replayed from a captured CUDA graph (opt-in, CUDA only)
    onnxruntime, openvino  the engines on the network's ONNX export, each timed in a worker
                           process of its own (opt-in, CPU; googlenet_fast.engines)
For variant="paper" torchvision has no such network: the baseline is fused=False.

Train mode (``bench --mode train``, :func:`train_providers`): each provider is one training
step, fn(x) = forward in train mode with the aux heads, loss CE(logits) + 0.3 * (CE(aux1) +
CE(aux2)) on fixed labels, backward, SGD(lr 0, momentum 0.9) step (see TRAIN_LR), on
channels_last fp32 inputs, for
fused, fused=False and torchvision eager; optionally torch.compile(torchvision model) (module
compile, inductor, no freezing; the backward is compiled by AOTAutograd, the optimizer step is
eager).
"""
import contextlib
import logging
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor

TORCHVISION = "torchvision eager"
FUSED = "fused"
UNFUSED = "fused=False"
COMPILE = "torch.compile"
REFERENCE = "reference"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _timer_cls():
    """torch.utils.benchmark.Timer, imported without the cpp_extension "No CUDA runtime" warning."""
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils.benchmark import Timer
    finally:
        log.setLevel(level)
    return Timer


def progress(total=None, desc="", enabled=True, unit="it"):
    """A tqdm progress line on stderr (a no-op object when disabled or tqdm is missing)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is None or not enabled:
        return _NoProgress()
    # disable=None: tqdm draws only on a terminal; logs get no carriage-return clutter.
    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, unit=unit, dynamic_ncols=True,
                disable=None)


class _NoProgress:
    def update(self, n=1):
        pass

    def set_description_str(self, s):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ----------------------------------------------------------------------------------------------
# Statistics and timing


def _quantile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of a sorted list (numpy's default method)."""
    if not sorted_xs:
        return float("nan")
    pos = (len(sorted_xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def timing_stats(times_s: Sequence[float]) -> Dict[str, float]:
    """Median, quartiles, IQR, min and max in milliseconds of per-call times in seconds."""
    xs = sorted(t * 1e3 for t in times_s)
    q1, med, q3 = _quantile(xs, 0.25), _quantile(xs, 0.5), _quantile(xs, 0.75)
    return {"median_ms": med, "q1_ms": q1, "q3_ms": q3, "iqr_ms": q3 - q1,
            "min_ms": xs[0] if xs else float("nan"), "max_ms": xs[-1] if xs else float("nan"),
            "runs": len(xs)}


def measure(fn: Callable[[Tensor], object], x: Tensor, min_run_time: float,
            num_threads: Optional[int] = None, label: str = "") -> List[float]:
    """Per-call times (seconds) of ``fn(x)`` from Timer.blocked_autorange (CUDA is synchronized
    by the Timer).  Runs with torch's current thread count unless ``num_threads`` is given
    (Timer's own default of one thread would make every CPU number single-threaded)."""
    Timer = _timer_cls()
    timer = Timer(stmt="fn(x)", globals={"fn": fn, "x": x},
                  num_threads=num_threads or torch.get_num_threads(), label=label)
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return list(m.times)


@dataclass
class Provider:
    """One way of running the network (or a block).  ``prepare(x)`` returns the callable that is
    timed for input ``x`` (e.g. a CUDA graph captured for that shape); the default is ``fn``.
    A callable with a ``measure_in_worker(min_run_time)`` method times itself elsewhere (an
    engine's worker process, googlenet_fast.engines) and returns the per-call seconds.
    ``unavailable``: not run here, and why (an "n/a" row, not a failure); ``failed``: could not be
    set up (an error row)."""
    name: str
    fn: Optional[Callable[[Tensor], Tensor]]
    prepare: Optional[Callable[[Tensor], Callable[[Tensor], Tensor]]] = None
    compiles: bool = False  # the first call compiles (long): warm-up shows it
    note: str = ""
    unavailable: Optional[str] = None
    failed: Optional[str] = None

    def for_input(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        return self.prepare(x) if self.prepare is not None else self.fn


@dataclass
class Result:
    batch_size: int
    provider: str
    times_s: List[float] = field(default_factory=list)
    error: Optional[str] = None
    not_run: Optional[str] = None  # why the provider does not run here (Provider.unavailable)

    def row(self, baseline_median_ms: Optional[float]) -> Dict[str, object]:
        """A table row: timing_stats, images_per_s and speedup; or "error"; or status "n/a" and
        its "reason" (only timed rows have "median_ms")."""
        d = {"batch_size": self.batch_size, "provider": self.provider}
        if self.error is not None:
            d["error"] = self.error
            return d
        if self.not_run is not None:
            d.update(status="n/a", reason=self.not_run)
            return d
        d.update(timing_stats(self.times_s))
        d["images_per_s"] = self.batch_size / (d["median_ms"] / 1e3)
        d["speedup"] = speedup(baseline_median_ms, d["median_ms"])
        return d


def run_providers(providers: Sequence[Provider], x: Tensor, *, min_run_time: float = 2.0,
                  rounds: int = 3, warmup: int = 3, show_progress: bool = True,
                  compile_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                  cpu_meter: Optional["OtherCpuMeter"] = None) -> List[Result]:
    """Warm up every provider on ``x`` then time them in ``rounds`` interleaved rounds of
    ``min_run_time / rounds`` seconds each.  A provider that raises is reported, not fatal.
    ``cpu_meter`` (optional) measures other processes' CPU use over the timing rounds only
    (not the warm-up, where torch.compile's own worker processes run).

    Call under torch.no_grad()/inference_mode() and with the models in eval mode.
    """
    b = x.shape[0]
    results = {p.name: Result(b, p.name, error=p.failed, not_run=p.unavailable) for p in providers}
    fns = {}
    for p in providers:
        if p.failed is not None or p.unavailable is not None:
            continue
        desc = (f"b={b} {p.name}: compiling (first call, ~40 s)" if p.compiles
                else f"b={b} {p.name}: warm-up")
        bar = progress(total=warmup, desc=desc, enabled=show_progress)
        if p.compiles and show_progress and not _isatty(sys.stderr):
            print(desc + " ...", file=sys.stderr, flush=True)
        try:
            with compile_context() if p.compiles else contextlib.nullcontext():
                fn = p.for_input(x)
                for i in range(warmup):
                    fn(x)
                    if i == 0 and p.compiles:
                        bar.set_description_str(f"b={b} {p.name}: warm-up")
                    bar.update()
            _sync(x)
            fns[p.name] = fn
        except Exception as e:  # report and go on with the other providers
            results[p.name].error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        finally:
            bar.close()
    per_round = min_run_time / max(1, rounds)
    bar = progress(total=rounds * len(fns), desc=f"b={b}: timing", enabled=show_progress)
    if cpu_meter is not None:
        cpu_meter.start()  # one window over the timing rounds (the warm-ups and compiles are done)
    for _ in range(max(1, rounds)):
        for p in providers:
            if p.name not in fns:
                continue
            try:
                fn = fns[p.name]
                own = getattr(fn, "measure_in_worker", None)
                results[p.name].times_s += (own(per_round) if own is not None
                                            else measure(fn, x, per_round, label=p.name))
            except Exception as e:
                results[p.name].error = f"{type(e).__name__}: {e}"
                del fns[p.name]
            bar.update()
    if cpu_meter is not None:
        cpu_meter.stop()
    bar.close()
    return [results[p.name] for p in providers]


def _isatty(f) -> bool:
    try:
        return f.isatty()
    except Exception:
        return False


def _sync(x: Tensor):
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)


def speedup(baseline_ms: Optional[float], ms: Optional[float]) -> Optional[float]:
    """The one definition of a speedup in this package: baseline time / provider time (> 1: the
    provider is faster), both measured in the same run; None when either is missing."""
    if not baseline_ms or not ms:
        return None
    return baseline_ms / ms


def geomean(values: Sequence[float]) -> Optional[float]:
    """Geometric mean of positive ratios (None for none): how the tables summarize speedups."""
    vals = [v for v in values if v]
    return math.exp(sum(map(math.log, vals)) / len(vals)) if vals else None


def device_timer(fn: Callable[[], object], device: str, warmup_ms: float = 10, rep_ms: float = 40) -> float:
    """Median milliseconds per call of ``fn``: triton.testing.do_bench (CUDA events, L2 flushed) on
    "cuda", the median of three wall-clock calls after one warm-up elsewhere (the GPU tables,
    benchmarks/gpu_blocks.py and device_smoke.py; the CPU tables use :func:`measure`)."""
    if device == "cuda":
        import triton.testing
        return triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")
    fn()
    ts = []
    for _ in range(3):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return sorted(ts)[1]


def rows_with_speedup(results: Sequence[Result], baseline: str) -> List[Dict[str, object]]:
    """Table rows (dicts) with speedup = baseline median / provider median, per batch size."""
    base = {r.batch_size: timing_stats(r.times_s)["median_ms"] for r in results
            if r.provider == baseline and r.error is None and r.times_s}
    return [r.row(base.get(r.batch_size)) for r in results]


def format_table(rows: Sequence[Dict[str, object]], baseline: str) -> str:
    """A plain-text table of bench rows."""
    head = ("batch", "provider", "median ms", "IQR ms", "min ms", "max ms", "images/s",
            f"vs {baseline}")
    lines = []
    for r in rows:
        if "error" in r or "median_ms" not in r:
            text = "failed: " + r["error"] if "error" in r else f"{r.get('status', 'n/a')}: {r.get('reason', '')}"
            lines.append((str(r["batch_size"]), r["provider"], text, "", "", "", "", ""))
            continue
        sp = r.get("speedup")
        lines.append((str(r["batch_size"]), r["provider"], f"{r['median_ms']:.2f}", f"{r['iqr_ms']:.2f}",
                      f"{r['min_ms']:.2f}", f"{r['max_ms']:.2f}", f"{r['images_per_s']:.1f}",
                      f"{sp:.2f}x" if sp else "-"))
    ok = [l for l in lines if l[3]]  # the timed rows (failed and n/a ones have no IQR)
    widths = [max([len(h)] + [len(l[i]) for l in (lines if i < 2 else ok)]) for i, h in enumerate(head)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i == 1 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [fmt(head), "  ".join("-" * w for w in widths)]
    for l in lines:
        out.append(f"{l[0].rjust(widths[0])}  {l[1].ljust(widths[1])}  {l[2]}" if not l[3]
                   else fmt(l))
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# Accuracy check


def compare_logits(out: Tensor, ref: Tensor) -> Dict[str, float]:
    """Max abs error, relative error (max abs error / max |ref|) and top-1 agreement of logits."""
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    max_abs = (out64 - ref64).abs().max().item()
    scale = ref64.abs().max().item()
    agree = int((out64.argmax(1) == ref64.argmax(1)).sum().item())
    return {"max_abs_err": max_abs, "max_ref": scale,
            "max_rel_err": max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf),
            "top1_agree": agree, "n": int(ref.shape[0])}


@contextlib.contextmanager
def no_tf32():
    """fp32 means fp32: TF32 off for cuBLAS and cuDNN inside the block."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@contextlib.contextmanager
def matmul_precision(precision: str):
    """torch.set_float32_matmul_precision(precision) inside the block ("highest", "high" or
    "medium"), restored after it."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


# ----------------------------------------------------------------------------------------------
# Providers


def compile_with_freezing(module: torch.nn.Module):
    """torch.compile(module) for inference with inductor freezing (weights folded as constants).
    Compilation happens at the first call, which must run inside :func:`freezing_context` and
    under no_grad; static shapes (one graph per batch size)."""
    return torch.compile(module, dynamic=False)


@contextlib.contextmanager
def freezing_context():
    """torch._inductor.config.patch(freezing=True): wrap the compiling (first) calls in it.
    Also mutes cpp_extension's "No CUDA runtime is found" warning that inductor's import of it
    logs on a machine without a GPU."""
    import torch._inductor.config as inductor_config
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with inductor_config.patch(freezing=True):
            yield
    finally:
        log.setLevel(level)


def load_average() -> Optional[tuple]:
    """The 1/5/15-minute load averages (None where the OS has none): other processes on the
    CPU make every timing noisy, and more so the OpenMP-parallel ones."""
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return None


def _cpu_seconds(helper_pids: Sequence[int] = ()) -> Optional[tuple]:
    """(CPU seconds busy on all cores together since boot, from /proc/stat; this process's own CPU
    seconds, all its threads, plus those of its running ``helper_pids`` (the engine workers)) or
    None where there is no /proc/stat.  Busy = user + nice + system + irq + softirq + steal
    (steal: time the hypervisor gave to other machines)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        if not fields or fields[0] != "cpu":
            return None
        v = [int(x) for x in fields[1:9]] + [0] * max(0, 9 - len(fields))
        busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
        own = os.times()
        tick = os.sysconf("SC_CLK_TCK")
        helpers = 0
        for pid in helper_pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    after_name = f.read().rsplit(")", 1)[1].split()
                helpers += int(after_name[11]) + int(after_name[12])  # utime, stime
            except (OSError, IndexError, ValueError):
                pass  # exited
        return busy / tick, own.user + own.system + helpers / tick
    except (OSError, ValueError, AttributeError):
        return None


class OtherCpuMeter:
    """CPU used by OTHER processes while this one times: (all cores' busy time from /proc/stat
    minus this process's own CPU time) / wall time, summed over the windows between ``start()``
    and ``stop()``.  Unlike the 1-minute load average it sees only the timing windows: the load of
    a build that finished just before (``pip install ... && googlenet-fast bench``) does not count.
    ``helper_pids``: the bench's own worker processes (the engines), counted as this process."""

    def __init__(self, helper_pids: Sequence[int] = ()):
        self.wall_s = 0.0
        self.other_cpu_s = 0.0
        self.helper_pids = list(helper_pids)
        self.available = _cpu_seconds() is not None
        self._t0 = None

    def start(self) -> None:
        if self.available:
            self._t0 = (time.perf_counter(), _cpu_seconds(self.helper_pids))

    def stop(self) -> None:
        if not self.available or self._t0 is None:
            return
        t0, c0 = self._t0
        c1 = _cpu_seconds(self.helper_pids)
        self._t0 = None
        if c0 is None or c1 is None:
            return
        self.wall_s += time.perf_counter() - t0
        self.other_cpu_s += max(0.0, (c1[0] - c0[0]) - (c1[1] - c0[1]))

    @property
    def other_cores(self) -> Optional[float]:
        """Average number of cores busy with other processes during the windows (None if unknown)."""
        return self.other_cpu_s / self.wall_s if self.available and self.wall_s > 0 else None


# Fewer timed runs than this per row: the IQR is not a measurement (a quartile of 1-4 values).
MIN_RUNS_FOR_SPREAD = 5


def cuda_graphed(fn: Callable[[Tensor], Tensor], example: Tensor, warmup: int = 3) -> Callable[[Tensor], Tensor]:
    """Capture ``fn`` on a static copy of ``example`` into a CUDA graph; the returned callable
    copies its input into the static buffer and replays (same shape/dtype/device only):
    googlenet_fast.cuda_graph.capture."""
    from .cuda_graph import capture
    return capture(fn, example, warmup=warmup)


def to_device(module: torch.nn.Module, device, dtype) -> torch.nn.Module:
    return module.to(device=device, dtype=dtype).to(memory_format=torch.channels_last).eval()


@dataclass
class Networks:
    fused: torch.nn.Module
    unfused: torch.nn.Module
    torchvision: Optional[torch.nn.Module]  # None for variant="paper"

    @property
    def baseline_name(self) -> str:
        return TORCHVISION if self.torchvision is not None else UNFUSED

    @property
    def baseline(self) -> torch.nn.Module:
        return self.torchvision if self.torchvision is not None else self.unfused


def build_networks(seed: int = 0, variant: str = "torchvision", device="cpu", dtype=torch.float32,
                   num_classes: int = 1000, calibration: Optional[Tensor] = None) -> Networks:
    """GoogLeNet(fused=True) with seeded weights (torch.manual_seed(seed), init_weights=True, no
    aux heads), and the same state_dict loaded strictly into GoogLeNet(fused=False) and (variant
    "torchvision") torchvision.models.googlenet; all in eval mode, channels_last, ``dtype``.

    ``calibration`` (float32 images, NCHW): BatchNorm running statistics are first set from
    these images (see :func:`calibrate_batchnorm`).  Without it, freshly initialized running
    stats (mean 0, var 1) let the activations of the 0.01-std truncated-normal weights vanish
    layer by layer, the logits collapse to the classifier's bias and do not depend on the input,
    and a fused-vs-torchvision check on them proves nothing.
    """
    from googlenet_fast.model import GoogLeNet
    torch.manual_seed(seed)
    fused = GoogLeNet(num_classes=num_classes, aux_logits=False, init_weights=True, variant=variant, fused=True)
    if calibration is not None:
        calibrate_batchnorm(fused, calibration)
    fused.eval()
    state = fused.state_dict()
    unfused = GoogLeNet(num_classes=num_classes, aux_logits=False, init_weights=False, variant=variant, fused=False)
    unfused.load_state_dict(state, strict=True)
    tv = None
    if variant == "torchvision":
        import torchvision
        tv = torchvision.models.googlenet(weights=None, num_classes=num_classes, aux_logits=False,
                                          init_weights=False)
        tv.load_state_dict(state, strict=True)
    return Networks(*(to_device(m, device, dtype) if m is not None else None for m in (fused, unfused, tv)))


PROVIDER_KEYS = {"fused": FUSED, "unfused": UNFUSED, "torchvision": TORCHVISION}


def calibrate_batchnorm(model: torch.nn.Module, images: Tensor) -> int:
    """Set every BatchNorm's running mean/var to the statistics of ``images`` (one train-mode
    forward under no_grad, cumulative average: momentum=None), then put the model in eval mode.
    Returns the number of BatchNorm layers (0 for the paper variant, which has none)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        model(images)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()
    return len(bns)


def network_providers(nets: Networks, *, compile: bool = False, cuda_graphs: bool = False,
                      only: Optional[Sequence[str]] = None) -> List[Provider]:
    """The whole-network providers (see the module docstring).  ``only``: keys of PROVIDER_KEYS
    ("fused", "unfused", "torchvision") to keep among the eager ones (None: all; empty: the
    baseline alone); the baseline always stays.  The engines (googlenet_fast.engines) come apart."""
    keep = {PROVIDER_KEYS[k] for k in (PROVIDER_KEYS if only is None else only)} | {nets.baseline_name}
    ps = [Provider(FUSED, nets.fused), Provider(UNFUSED, nets.unfused)]
    if nets.torchvision is not None:
        ps.append(Provider(TORCHVISION, nets.torchvision))
    ps = [p for p in ps if p.name in keep]
    if compile:
        ps.append(Provider(COMPILE, compile_with_freezing(nets.baseline), compiles=True,
                           note=f"torch.compile({nets.baseline_name}), inductor freezing"))
    if cuda_graphs:
        for name, m in ((FUSED, nets.fused), (nets.baseline_name, nets.baseline)):
            if name in keep:
                ps.append(Provider(f"{name} + CUDA graph", m, prepare=lambda x, m=m: cuda_graphed(m, x)))
    return ps


# ----------------------------------------------------------------------------------------------
# Train step providers (``bench --mode train``, benchmarks/test_bench_cpu.py)

# lr 0: SGD runs all its arithmetic (it does not special-case lr == 0) but the weights stay put,
# so every provider times the same computation on the same values throughout.  With lr 0.01 the
# model memorizes the one timed batch within ~15 steps (loss 11 -> 1e-5) and the providers'
# weights drift apart: dense-kernel work does not depend on the values except through denormals
# or NaN/inf after a divergence, which lr 0 rules out.
TRAIN_LR = 0.0
TRAIN_MOMENTUM = 0.9
AUX_WEIGHT = 0.3


def train_loss(out, y: Tensor) -> Tensor:
    """CE(logits) + 0.3 * (CE(aux1) + CE(aux2)) of GoogLeNetOutputs (the paper's aux weight)."""
    ce = torch.nn.functional.cross_entropy
    return ce(out.logits, y) + AUX_WEIGHT * (ce(out.aux_logits1, y) + ce(out.aux_logits2, y))


def train_labels(batch_size: int, num_classes: int = 1000, seed: int = 0, device="cpu") -> Tensor:
    """Fixed labels for a batch size (the same for every provider)."""
    g = torch.Generator().manual_seed(seed + batch_size)
    return torch.randint(0, num_classes, (batch_size,), generator=g).to(device)


def train_autocast(device, amp: bool):
    """``torch.autocast(device type, bfloat16)`` when ``amp`` (the train benchmark's ``--amp``:
    bfloat16 on the CPU and on CUDA), else a no-op context."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


class TrainStep:
    """``fn(x)``: one training step of ``model`` on ``x`` and :func:`train_labels` for x's batch
    size: zero_grad(set_to_none), forward (through ``forward``, default the model itself, e.g. a
    torch.compile wrapper) and :func:`train_loss` (under bfloat16 autocast with ``amp``),
    backward, SGD(lr, momentum) step.  Returns the detached loss."""

    def __init__(self, model: torch.nn.Module, forward: Optional[Callable] = None, num_classes: int = 1000,
                 lr: float = TRAIN_LR, momentum: float = TRAIN_MOMENTUM, amp: bool = False):
        self.model = model
        self.forward = forward if forward is not None else model
        self.amp = amp
        self.num_classes = num_classes
        self.opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
        self._labels: Dict[tuple, Tensor] = {}
        self.last_loss: Optional[Tensor] = None

    def labels(self, x: Tensor) -> Tensor:
        key = (x.shape[0], x.device)
        if key not in self._labels:
            self._labels[key] = train_labels(x.shape[0], self.num_classes, device=x.device)
        return self._labels[key]

    def __call__(self, x: Tensor) -> Tensor:
        self.opt.zero_grad(set_to_none=True)
        with train_autocast(x.device, self.amp):
            loss = train_loss(self.forward(x), self.labels(x))
        loss.backward()
        self.opt.step()
        self.last_loss = loss.detach()
        return self.last_loss


def build_train_networks(seed: int = 0, variant: str = "torchvision", device="cpu",
                         num_classes: int = 1000) -> Networks:
    """As :func:`build_networks` for training: float32, aux heads, train mode, channels_last
    parameters, the same seeded state in GoogLeNet(fused=True), GoogLeNet(fused=False) and (variant
    "torchvision") torchvision.models.googlenet.  No BatchNorm calibration (train mode normalizes
    with batch statistics)."""
    from googlenet_fast.model import GoogLeNet
    torch.manual_seed(seed)
    fused = GoogLeNet(num_classes=num_classes, aux_logits=True, init_weights=True, variant=variant, fused=True)
    state = fused.state_dict()
    unfused = GoogLeNet(num_classes=num_classes, aux_logits=True, init_weights=False, variant=variant, fused=False)
    unfused.load_state_dict(state, strict=True)
    tv = None
    if variant == "torchvision":
        import torchvision
        tv = torchvision.models.googlenet(weights=None, num_classes=num_classes, aux_logits=True,
                                          init_weights=False)
        tv.load_state_dict(state, strict=True)
    return Networks(*(m.to(device=device).to(memory_format=torch.channels_last).train() if m is not None
                      else None for m in (fused, unfused, tv)))


def train_providers(nets: Networks, *, compile: bool = False, only: Optional[Sequence[str]] = None,
                    num_classes: int = 1000, amp: bool = False) -> List[Provider]:
    """Train-step providers over :func:`build_train_networks`: each owns its model and an SGD
    optimizer (the steps change the weights; every provider starts from the same state).  With
    ``compile``: torch.compile of a copy of the baseline network (inductor, no freezing).  With
    ``amp``: every step's forward and loss under bfloat16 autocast."""
    import copy
    keep = {PROVIDER_KEYS[k] for k in (only or PROVIDER_KEYS)} | {nets.baseline_name}
    ps = [Provider(FUSED, TrainStep(nets.fused, num_classes=num_classes, amp=amp)),
          Provider(UNFUSED, TrainStep(nets.unfused, num_classes=num_classes, amp=amp))]
    if nets.torchvision is not None:
        ps.append(Provider(TORCHVISION, TrainStep(nets.torchvision, num_classes=num_classes, amp=amp)))
    ps = [p for p in ps if p.name in keep]
    if compile:
        model = copy.deepcopy(nets.baseline)
        ps.append(Provider(COMPILE, TrainStep(model, forward=torch.compile(model, dynamic=False),
                                              num_classes=num_classes, amp=amp),
                           compiles=True, note=f"torch.compile({nets.baseline_name}) train step, inductor"))
    return ps


def check_train_step(nets: Networks, images: Tensor, num_classes: int = 1000, seed: int = 0,
                     amp: bool = False) -> Dict[str, Dict]:
    """One train-mode forward + backward of fused and of the baseline on ``images`` (copies of the
    networks, the same dropout masks): {provider: compare_logits of the logits and of both aux
    heads (keys "logits", "aux_logits1", "aux_logits2"), plus "loss_rel_err"}, each against the
    baseline in float32.  With ``amp`` both run under bfloat16 autocast and the baseline's own
    bfloat16 errors (against its float32 run) are returned too, under the baseline's name.
    Gradients are not compared here: in float32 they differ at ReLU kinks
    (tests/test_train_parity.py)."""
    import copy
    y = train_labels(images.shape[0], num_classes, device=images.device)
    outs = {}
    runs = [(FUSED, nets.fused, amp), ("float32", nets.baseline, False)]
    if amp:
        runs.append((nets.baseline_name, nets.baseline, True))
    for name, model, autocast in runs:
        m = copy.deepcopy(model).train()
        torch.manual_seed(seed)
        with train_autocast(images.device, autocast):
            out = m(images)
            loss = train_loss(out, y)
        loss.backward()
        outs[name] = (out, loss.detach())
    ref, ref_loss = outs["float32"]
    res = {}
    for name in outs:
        if name == "float32":
            continue
        out, loss = outs[name]
        r = {k: compare_logits(getattr(out, k).float(), getattr(ref, k)) for k in ("logits", "aux_logits1", "aux_logits2")}
        r["loss_rel_err"] = abs(loss.item() - ref_loss.item()) / abs(ref_loss.item())
        res[name] = r
    return res


@contextlib.contextmanager
def quiet_compile_context():
    """No freezing (training): only mutes cpp_extension's "No CUDA runtime is found" warning that
    inductor's import of it logs on a machine without a GPU."""
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


# ----------------------------------------------------------------------------------------------
# One Inception block (benchmarks/): the fused op runs on GoogLeNet's Inception.folded_params().


# (name of the torchvision attribute, input channels, input spatial size at 224x224)
STAGE_BLOCKS = {"3a": ("inception3a", 192, 28), "4a": ("inception4a", 480, 14), "5a": ("inception5a", 832, 7)}


# ----------------------------------------------------------------------------------------------
# Environment (``googlenet-fast info`` and the benchmark JSON)


def _version(mod_name: str) -> str:
    try:
        mod = __import__(mod_name)
        return getattr(mod, "__version__", "installed")
    except Exception as e:  # not installed or broken
        return f"not available ({type(e).__name__})"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def backend_status() -> Dict[str, str]:
    """Which backends of the fused op are usable here, with the reason when one is not."""
    from googlenet_fast.backends import native
    import importlib.util
    st = {}
    st["cpu"] = "usable" if native.available() else f"not usable: extension not loaded ({native.LOAD_ERROR})"
    if native.cuda_available():
        st["cuda"] = "usable"
    elif not native.available():
        st["cuda"] = "not usable: extension not loaded"
    elif not native.BUILD_INFO.get("cuda_built"):
        st["cuda"] = f"not usable: built without CUDA kernels ({native.BUILD_INFO.get('cuda_skip_reason')})"
    else:
        st["cuda"] = "not usable: no CUDA device visible"
    triton_v = _version("triton")
    has_module = importlib.util.find_spec("googlenet_fast.backends.triton") is not None
    interp = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if triton_v.startswith("not available"):
        st["triton"] = "not usable: triton is not installed"
    elif not has_module:
        st["triton"] = "not usable: googlenet_fast.backends.triton is not in this build"
    elif torch.cuda.is_available():
        st["triton"] = "usable (CUDA device)" + ("; TRITON_INTERPRET=1 also set" if interp else "")
    elif interp:
        st["triton"] = "usable on CPU tensors under the interpreter (TRITON_INTERPRET=1; slow)"
    else:
        st["triton"] = "not usable: no CUDA device (set TRITON_INTERPRET=1 for the CPU interpreter)"
    st["reference"] = "usable"
    return st


def environment_info() -> Dict[str, object]:
    """Everything a bug report needs: versions, devices, the extension's build, usable backends."""
    import googlenet_fast
    from googlenet_fast.backends import native
    info: Dict[str, object] = {}
    info["googlenet_fast"] = f"{getattr(googlenet_fast, '__version__', '?')} ({os.path.dirname(googlenet_fast.__file__)})"
    info["python"] = f"{platform.python_version()} ({sys.executable})"
    info["platform"] = platform.platform()
    info["cpu"] = f"{_cpu_name()}, {os.cpu_count()} logical cores"
    info["torch"] = torch.__version__
    info["torch CUDA"] = torch.version.cuda or "none (CPU-only build)"
    info["torchvision"] = _version("torchvision")
    info["triton"] = _version("triton")
    info["torch threads"] = f"{torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op"
    info["oneDNN (mkldnn)"] = torch.backends.mkldnn.is_available()
    info["MKL"] = torch.backends.mkl.is_available()
    info["CUDA available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        info["CUDA devices"] = "; ".join(
            f"{i}: {torch.cuda.get_device_name(i)} (sm_{''.join(map(str, torch.cuda.get_device_capability(i)))})"
            for i in range(torch.cuda.device_count()))
    info["extension googlenet_fast._C"] = "loaded" if native.available() else f"not loaded: {native.LOAD_ERROR}"
    bi = native.BUILD_INFO
    info["extension built against torch"] = bi.get("torch_built_against", "unknown")
    if bi.get("torch_built_against") and bi.get("torch_built_against") != torch.__version__:
        info["extension built against torch"] += f" (MISMATCH: running {torch.__version__}; rebuild)"
    info["extension CUDA kernels"] = ("built" if bi.get("cuda_built")
                                      else f"not built ({bi.get('cuda_skip_reason')})")
    info["extension CUDA archs"] = bi.get("cuda_arch_list")
    info["extension CUDA_HOME"] = (f"{bi.get('cuda_home')} (from {bi.get('cuda_home_from')})"
                                   if bi.get("cuda_home") else bi.get("cuda_home_from", "none"))
    for name, st in backend_status().items():
        info[f"backend {name}"] = st
    info["GOOGLENET_FAST_BACKEND"] = os.environ.get("GOOGLENET_FAST_BACKEND", "(unset: auto)")
    info["TRITON_INTERPRET"] = os.environ.get("TRITON_INTERPRET", "(unset)")
    return info
