"""Roofline accounting for the benchmarks: the device's ceilings measured in the run (a large
copy, a large matmul), the whole network's FLOPs and minimal bytes, and per-row TFLOP/s, GB/s and
fractions of the ceilings.  Used by ``python -m googlenet_fast bench`` (the whole-network table
it prints after the timings) and by benchmarks/report.py (which adds the per-block rows).

Roofline bound of a row: max(FLOPs / matmul rate, minimal bytes / copy bandwidth), both rates
measured in the same run (not datasheet peaks, so a row can pass 100% of a ceiling); the
fraction achieved is bound / measured time.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from . import bench


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def elem_size(dtype: torch.dtype) -> int:
    return torch.tensor([], dtype=dtype).element_size()


_NETWORK_COST_CACHE: Dict[tuple, Tuple[int, int]] = {}


def network_cost(n: int, hw: int, dtype: torch.dtype, mode: str, num_classes: int = 1000,
                 variant: str = "torchvision") -> Tuple[int, int]:
    """(FLOPs, minimal bytes) of GoogLeNet (``variant`` "torchvision": torchvision's googlenet,
    the layout of every provider; "paper": the paper's network) on an (n, 3, hw, hw) input,
    counted on the meta device (nothing runs) with ``GoogLeNet(fused=False)``.

    FLOPs: torch.utils.flop_counter of the forward (eval, no aux heads) or of forward with the
    aux heads + backward (train; no input gradient of the first conv).  Bytes, on the fused
    design's model where each top-level module (stem conv, pool, Inception block, head) reads its
    input and writes its output once: elem x (W + sum(in + out) + sum(S)) in eval, with S the
    Inception blocks' r3/r5 scratch 2 P (r3 + r5), and elem x (2 W + 3 sum(in + out) + 2 sum(S))
    in train (as :func:`block_train_bytes`).  Dropout and flatten are not counted."""
    key = (n, hw, dtype, mode, num_classes, variant)
    if key in _NETWORK_COST_CACHE:
        return _NETWORK_COST_CACHE[key]
    from torch.utils.flop_counter import FlopCounterMode
    from .model import GoogLeNet, Inception
    train = mode == "train"
    if mode not in ("eval", "train"):
        raise ValueError(f"mode: expected 'eval' or 'train', got {mode!r}")
    with torch.device("meta"):
        model = GoogLeNet(num_classes=num_classes, aux_logits=train, init_weights=False,
                          transform_input=False, variant=variant, fused=False)
        x = torch.empty(n, 3, hw, hw)
    model.train(train)
    act = [0]
    scratch = [0]

    def hook(mod, inp, out):
        if isinstance(mod, (torch.nn.Dropout, torch.nn.Flatten)):
            return
        act[0] += sum(t.numel() for t in inp if isinstance(t, torch.Tensor)) + out.numel()
        if isinstance(mod, Inception):
            p = out.shape[0] * out.shape[2] * out.shape[3]
            scratch[0] += 2 * p * (mod.branch2[0].conv.out_channels + mod.branch3[0].conv.out_channels)

    handles = [m.register_forward_hook(hook) for _, m in model.named_children()]
    try:
        with FlopCounterMode(display=False) as fc:
            if train:
                out = model(x)
                (out.logits.sum() + out.aux_logits1.sum() + out.aux_logits2.sum()).backward()
            else:
                with torch.no_grad():
                    model(x)
    finally:
        for h in handles:
            h.remove()
    weights = sum(p.numel() for p in model.parameters())
    e = elem_size(dtype)
    nbytes = e * ((2 * weights + 3 * act[0] + 2 * scratch[0]) if train else (weights + act[0] + scratch[0]))
    _NETWORK_COST_CACHE[key] = (int(fc.get_total_flops()), int(nbytes))
    return _NETWORK_COST_CACHE[key]


def roofline(flops: float, nbytes: float, tflop_s: float, gb_s: float) -> Dict[str, object]:
    """The roofline bound of a kernel doing ``flops`` and moving ``nbytes`` on a device with a
    matmul rate of ``tflop_s`` and a copy bandwidth of ``gb_s``: compute_s = flops / rate,
    memory_s = bytes / bandwidth, bound_s = max of both, and which one binds."""
    compute_s = flops / (tflop_s * 1e12)
    memory_s = nbytes / (gb_s * 1e9)
    return {"compute_s": compute_s, "memory_s": memory_s, "bound_s": max(compute_s, memory_s),
            "bound": "compute" if compute_s >= memory_s else "memory"}


def add_cost_columns(row: Dict[str, object], flops: int, nbytes: int, ceilings: Dict[str, object],
                     dtype: torch.dtype) -> Dict[str, object]:
    """Add gflop, mbytes, tflop_s, gb_s, frac_peak_flops, frac_peak_bw, roofline_ms, bound and
    frac_roofline (bound / time) to a timed row (median_ms) in place; returns it."""
    row["gflop"] = flops / 1e9
    row["mbytes"] = nbytes / 1e6
    if row.get("status") != "ok":
        return row
    t = row["median_ms"] / 1e3
    peak = ceilings["matmul"][dtype_name(dtype)]["tflop_s"]
    bw = ceilings["copy"]["gb_s"]
    row["tflop_s"] = flops / t / 1e12
    row["gb_s"] = nbytes / t / 1e9
    row["frac_peak_flops"] = row["tflop_s"] / peak
    row["frac_peak_bw"] = row["gb_s"] / bw
    rl = roofline(flops, nbytes, peak, bw)
    row["roofline_ms"] = rl["bound_s"] * 1e3
    row["bound"] = rl["bound"]
    row["frac_roofline"] = rl["bound_s"] / t
    return row


def measure_ceilings(device: torch.device, dtypes: Sequence[torch.dtype], *, copy_bytes: int,
                     matmul_n: int, min_run_time: float) -> Dict[str, object]:
    """Copy bandwidth (GB/s: read + write of ``copy_bytes`` each, over the fastest time of
    dst.copy_(src)) and, for each dtype, the matmul rate (TFLOP/s: 2 n^3 / fastest time of an
    n x n x n torch.mm; TF32 off for float32).  The fastest run, not the median: a ceiling is
    what the device reached at its best in this run, and on a loaded machine the median
    understates it (the medians are recorded too)."""
    src = torch.empty(copy_bytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    times = bench.measure(lambda s: dst.copy_(s), src, min_run_time)
    st = bench.timing_stats(times)
    out = {"copy": {"bytes": 2 * src.numel() * 4, "median_ms": st["median_ms"], "min_ms": st["min_ms"],
                    "runs": st["runs"], "gb_s": 2 * src.numel() * 4 / (st["min_ms"] / 1e3) / 1e9,
                    "what": "dst.copy_(src), float32, bytes read + written"},
           "matmul": {}}
    del src, dst
    for dt in dict.fromkeys(dtypes):
        a = torch.randn(matmul_n, matmul_n, device=device).to(dt)
        b = torch.randn(matmul_n, matmul_n, device=device).to(dt)
        with bench.no_tf32():
            torch.mm(a, b)
            times = bench.measure(lambda x: torch.mm(x, b), a, min_run_time)
        st = bench.timing_stats(times)
        out["matmul"][dtype_name(dt)] = {
            "shape": [matmul_n, matmul_n, matmul_n], "median_ms": st["median_ms"], "min_ms": st["min_ms"],
            "runs": st["runs"], "tflop_s": 2 * matmul_n ** 3 / (st["min_ms"] / 1e3) / 1e12,
            "what": "torch.mm, TF32 off"}
        del a, b
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def network_roofline_rows(bench_rows: Sequence[Dict[str, object]], *, mode: str, image_size: int,
                          dtype: torch.dtype, device, ceilings: Optional[Dict[str, object]] = None,
                          variant: str = "torchvision") -> Tuple[List[Dict[str, object]], Dict[str, object]]:
    """Add TFLOP/s, GB/s, their fractions of the device's ceilings and the roofline fraction to
    the rows of ``bench.rows_with_speedup`` (whole network; ``mode`` "eval" or "train").  The
    ceilings are measured here unless given (a few seconds).  Returns (new rows, ceilings)."""
    device = torch.device(device)
    if ceilings is None:
        big = device.type == "cuda"
        ceilings = measure_ceilings(device, [dtype], copy_bytes=(1 << 30) if big else (1 << 28),
                                    matmul_n=8192 if big else 2048, min_run_time=0.3)
    out = []
    for r in bench_rows:
        r = dict(r)
        r.setdefault("status", "error" if "error" in r else "ok")
        flops, nbytes = network_cost(int(r["batch_size"]), image_size, dtype, mode, variant=variant)
        r.update(scope="network", config="googlenet", mode=mode)
        out.append(add_cost_columns(r, flops, nbytes, ceilings, dtype))
    return out, ceilings


def _pct(v) -> str:
    return "-" if v is None else (f"{100 * v:.1f}%" if v < 10 else f"{v:.1f}x")


def format_network_table(rows: Sequence[Dict[str, object]], ceilings: Dict[str, object]) -> str:
    """Plain-text table of :func:`network_roofline_rows` output (one line per timed row: mode,
    batch, provider, median ms, speedup over the baseline, TFLOP/s and GB/s achieved, their
    fractions of the measured ceilings, %roofline), then the ceilings' line."""
    head = ("mode", "batch", "provider", "median ms", "speedup", "TFLOP/s", "%ceiling FLOP/s", "GB/s",
            "%ceiling GB/s", "%roofline")
    body, notes = [], []
    for r in rows:
        if r.get("status", "ok") != "ok":
            body.append((r["mode"], str(r["batch_size"]), r["provider"]) + ("-",) * 7)
            notes.append(f"b={r['batch_size']} {r['provider']}: {r.get('status', 'error')}: "
                         f"{r.get('error') or r.get('reason') or ''}")
            continue
        sp = r.get("speedup")
        body.append((r["mode"], str(r["batch_size"]), r["provider"], f"{r['median_ms']:.2f}",
                     "-" if not sp else f"{sp:.2f}x", f"{r['tflop_s']:.3g}", _pct(r["frac_peak_flops"]),
                     f"{r['gb_s']:.3g}", _pct(r["frac_peak_bw"]), _pct(r["frac_roofline"])))
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    left = {0, 2}

    def line(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    mm = ", ".join(f"{k} {v['tflop_s']:.3g} TFLOP/s" for k, v in ceilings["matmul"].items())
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body] + notes) + (
        f"\nceilings measured in this run: copy {ceilings['copy']['gb_s']:.1f} GB/s, matmul {mm}; "
        "%roofline = max(FLOPs / matmul rate, bytes / copy rate) / time"
        "\n(the ceilings are this run's fastest large copy and torch.mm, not datasheet peaks: a row can "
        "pass 100% where the network's kernels beat torch.mm, e.g. oneDNN's convolutions on a CPU)")
