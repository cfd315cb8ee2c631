"""Command line: ``python -m googlenet_fast <command>`` or ``googlenet-fast <command>``.

Commands:
    bench   check the fused model against torchvision on real photos, then time it against its
            peers (fused=False, torchvision eager channels_last, optionally torch.compile)
    info    versions, devices, the extension's build and the usable backends (for bug reports)

Adding a command is one function that registers its parser and one entry in ``COMMANDS``::

    def add_train_parser(subparsers):
        p = subparsers.add_parser("train", help="...")
        p.add_argument(...)
        p.set_defaults(func=run_train)      # run_train(args) -> exit code (int)

    COMMANDS = [add_bench_parser, add_info_parser, add_train_parser]

torchvision, the model and the timing helpers are imported inside the commands.
"""
import argparse
import json
import os
import sys
from typing import List, Optional

PROG = "googlenet-fast"


class CommandError(Exception):
    """A user error: printed as ``googlenet-fast <command>: error: <message>``, exit code 2."""


# ----------------------------------------------------------------------------------------------
# bench


def _positive_float(s):
    v = float(s)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s}")
    return v


def _positive_int(s):
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s}")
    return v


def add_bench_parser(subparsers):
    p = subparsers.add_parser(
        "bench", help="check fused vs torchvision on photos, then time the providers",
        description="Build GoogLeNet with seeded weights, check the fused model's logits against "
                    "torchvision's googlenet with the same weights on real photos, then time the "
                    "providers (fused, fused=False, torchvision eager channels_last, optionally "
                    "torch.compile with inductor freezing) in one process: eval, no_grad, "
                    "channels_last inputs.")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when a CUDA device is visible, else cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="model and input dtype (default float32, TF32 off)")
    p.add_argument("--variant", choices=("torchvision", "paper"), default="torchvision",
                   help="network variant; 'paper' has no torchvision peer, its baseline is fused=False")
    p.add_argument("--batch-sizes", type=_positive_int, nargs="+", default=[1, 8], metavar="N",
                   help="batch sizes to time (default: 1 8); photos repeat to fill a batch")
    p.add_argument("--images", nargs="+", metavar="PATH",
                   help="image files or folders of your own (default: scikit-image's sample photos)")
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile of the baseline with inductor freezing "
                        "(compiles for ~40 s per batch size)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="CUDA only: also time fused and the baseline replayed from CUDA graphs")
    p.add_argument("--providers", nargs="+", choices=("fused", "unfused", "torchvision"), default=None,
                   help="eager providers to time (default: all; the baseline is always timed)")
    p.add_argument("--min-run-time", type=_positive_float, default=2.0, metavar="SECONDS",
                   help="timed seconds per provider and batch size, split over --rounds (default 2)")
    p.add_argument("--rounds", type=_positive_int, default=3,
                   help="interleaved timing rounds over the providers (default 3)")
    p.add_argument("--warmup", type=_positive_int, default=3, help="warm-up calls per provider (default 3)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed for the weights (default 0)")
    p.add_argument("--json", metavar="PATH", help="also write the check and the table as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run_bench)
    return p


def _resolve_device(name: Optional[str]):
    import torch
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CommandError("--device cuda: no CUDA device is visible (torch.cuda.is_available() is False)")
    return torch.device(name)


def _load_photos(args):
    from . import data
    try:
        images = data.load_images(args.images) if args.images else data.sample_photos()
    except data.ImageLoadError as e:
        raise CommandError(str(e)) from e
    return images


def run_bench(args) -> int:
    import torch
    from . import bench, data

    device = _resolve_device(args.device)
    dtype = bench.DTYPES[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cuda_graphs and device.type != "cuda":
        raise CommandError("--cuda-graphs needs --device cuda")
    images = _load_photos(args)
    photos = data.preprocess(images)
    source = "--images" if args.images else "scikit-image sample photos"
    print(f"images: {len(images)} from {source} ({', '.join(n for n, _ in images)}) -> "
          f"{tuple(photos.shape)}, Resize 256, CenterCrop 224, ImageNet normalization")
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else bench._cpu_name()
    print(f"device: {device} ({dev_name}), dtype {args.dtype}, variant {args.variant}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, seed {args.seed}")

    report = {"args": {k: v for k, v in vars(args).items() if k != "func"},
              "environment": {k: str(v) for k, v in bench.environment_info().items()}}
    failed = False
    with bench.no_tf32(), torch.no_grad():
        nets = bench.build_networks(seed=args.seed, variant=args.variant, device=device, dtype=dtype,
                                    calibration=photos)
        failed |= _check(nets, photos, device, dtype, args, report)
        providers = bench.network_providers(nets, compile=args.compile, cuda_graphs=args.cuda_graphs,
                                            only=args.providers)
        load_before = bench.load_average()
        results = []
        for b in args.batch_sizes:
            x = data.fill_batch(photos, b).to(device=device, dtype=dtype).contiguous(
                memory_format=torch.channels_last)
            results += bench.run_providers(providers, x, min_run_time=args.min_run_time, rounds=args.rounds,
                                           warmup=args.warmup, show_progress=not args.quiet,
                                           compile_context=bench.freezing_context)
    rows = bench.rows_with_speedup(results, nets.baseline_name)
    print()
    print(bench.format_table(rows, nets.baseline_name))
    notes = [p.note for p in providers if p.note]
    print(f"ms per batch: median, IQR and range of {args.rounds} interleaved rounds, "
          f"{args.min_run_time:g} s per provider and batch size; eval, no_grad, channels_last, {args.dtype}"
          + ("".join(f"; {n}" for n in notes)))
    noisy_rows = [f"b={r['batch_size']} {r['provider']}" for r in rows
                  if "error" not in r and r["iqr_ms"] > 0.1 * r["median_ms"]]
    if noisy_rows:
        print(f"noisy (IQR over 10% of the median): {', '.join(noisy_rows)}; rerun with a larger "
              "--min-run-time / --rounds, or on a quieter machine")
    load_after = bench.load_average()
    if load_before is not None and device.type == "cpu":
        cores = os.cpu_count() or 1
        # this process itself adds up to its thread count to the load while it times
        slack = max(1.0, 0.5 * cores)
        noisy = load_before[0] > slack or load_after[0] > torch.get_num_threads() + slack
        print(f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after timing, "
              f"{cores} cores" + (": other processes were running, the timings are noisy" if noisy else ""))
        report["load_average"] = {"before": load_before, "after": load_after, "cores": cores}
    failed |= any("error" in r for r in rows)
    report["rows"] = rows
    if args.json:
        d = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(d, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=str)
        print(f"wrote {args.json}")
    return 1 if failed else 0


def _check(nets, photos, device, dtype, args, report) -> bool:
    """Print fused vs the reference network on all photos; return True when it fails."""
    import torch
    from . import bench
    ref_name = nets.baseline_name
    x = photos.to(device).contiguous(memory_format=torch.channels_last)
    # The reference is the baseline network in float32 (TF32 off).
    ref_model = nets.baseline if dtype == torch.float32 else _float32_copy(nets.baseline)
    ref = ref_model(x)
    xd = x.to(dtype)
    checks = {}
    try:
        checks[bench.FUSED] = bench.compare_logits(nets.fused(xd), ref)
    except Exception as e:
        print(f"check: fused failed on the photos: {type(e).__name__}: {e}")
        report["check"] = {"error": f"{type(e).__name__}: {e}"}
        return True
    if dtype != torch.float32:  # the tolerance is relative to the baseline's own error in dtype
        checks[ref_name] = bench.compare_logits(nets.baseline(xd), ref)
    fused = checks[bench.FUSED]
    if dtype == torch.float32:
        limit = 1e-4
        verdict = fused["max_rel_err"] <= limit
        rule = f"max rel err <= {limit:g}"
    else:
        own = checks[ref_name]["max_rel_err"]
        limit = 2 * own
        verdict = fused["max_rel_err"] <= limit
        rule = f"max rel err <= 2x {ref_name}'s own {args.dtype} error ({own:.3g})"
    for name, c in checks.items():
        print(f"check: {name} ({args.dtype}) vs {ref_name} (float32) on {c['n']} photos: "
              f"max abs err {c['max_abs_err']:.3g}, max rel err {c['max_rel_err']:.3g} "
              f"(of max |logit| {c['max_ref']:.3g}), top-1 agreement {c['top1_agree']}/{c['n']}")
    if ref.shape[0] > 1 and torch.equal(ref.amin(0), ref.amax(0)):
        print("check: warning: the reference logits are the same for every image, so the check "
              "cannot see input-dependent errors")
    print(f"check: {'OK' if verdict else 'FAILED'} ({rule})")
    report["check"] = {"reference": f"{ref_name} float32", "rule": rule, "ok": verdict, **{
        k: v for k, v in checks.items()}}
    return not verdict


def _float32_copy(module):
    import copy
    import torch
    return copy.deepcopy(module).to(torch.float32)


# ----------------------------------------------------------------------------------------------
# info


def add_info_parser(subparsers):
    p = subparsers.add_parser("info", help="versions, devices, extension build and usable backends",
                              description="Print what a bug report needs: package, Python, torch, "
                                          "torchvision, triton and CUDA versions, devices, how the "
                                          "extension was built and which backends are usable here.")
    p.add_argument("--json", action="store_true", help="print JSON instead of aligned lines")
    p.set_defaults(func=run_info)
    return p


def run_info(args) -> int:
    from . import bench
    info = bench.environment_info()
    if args.json:
        print(json.dumps({k: v for k, v in info.items()}, indent=2, default=str))
        return 0
    width = max(len(k) for k in info)
    for k, v in info.items():
        print(f"{k + ':':{width + 1}s} {v}")
    return 0


# ----------------------------------------------------------------------------------------------

COMMANDS = [add_bench_parser, add_info_parser]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = argparse.ArgumentParser(prog=PROG, description="GoogLeNet with fused Inception kernels.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CommandError as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
