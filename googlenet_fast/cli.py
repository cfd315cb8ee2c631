"""Command line: ``python -m googlenet_fast <command>`` or ``googlenet-fast <command>``.

Commands:
    bench   check the fused model against torchvision on real photos, then time it against its
            peers (fused=False, torchvision eager channels_last, optionally torch.compile, and
            the ONNX Runtime / OpenVINO engines on its ONNX export)
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
import contextlib
import json
import os
import sys
from typing import List, Optional

from . import out_paths
from .errors import CommandError

PROG = "googlenet-fast"
ENGINE_CHOICES = ("onnxruntime", "openvino")  # googlenet_fast.engines.ENGINES (imported lazily)


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
                    "torch.compile with inductor freezing; opt-in: ONNX Runtime and OpenVINO on the "
                    "ONNX export, each in a worker process) in interleaved rounds: eval, no_grad, "
                    "channels_last inputs. --mode train times a training step instead.")
    p.add_argument("--mode", choices=("eval", "train"), default="eval",
                   help="eval (default): inference; train: one training step per call (train-mode "
                        "forward with the aux heads, loss main + 0.3 aux, backward, SGD momentum 0.9 "
                        "step with lr 0, so every step sees the same weights), float32 only")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when a CUDA device is visible, else cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="model and input dtype (default float32, TF32 off)")
    p.add_argument("--matmul-precision", choices=("highest", "high", "medium"), default="highest",
                   help="--mode eval, --dtype float32: torch.set_float32_matmul_precision for every torch "
                        "provider while checking and timing (default highest: IEEE float32). high / medium "
                        "let the fused CPU path run its float32 convolutions as bf16x3 where oneDNN has AMX "
                        "(googlenet_fast.cpu_precision) and CUDA use TF32; ONNX Runtime and OpenVINO stay f32")
    p.add_argument("--amp", action="store_true",
                   help="--mode train only: every step's forward and loss under "
                        "torch.autocast(bfloat16) (float32 weights, bfloat16 convolutions)")
    p.add_argument("--variant", choices=("torchvision", "paper"), default="torchvision",
                   help="network variant; 'paper' has no torchvision peer, its baseline is fused=False")
    p.add_argument("--batch-sizes", type=_positive_int, nargs="+", default=[1, 8], metavar="N",
                   help="batch sizes to time (default: 1 8; a size given twice is timed once); photos "
                        "repeat to fill a batch")
    p.add_argument("--images", nargs="+", metavar="PATH",
                   help="image files or folders of your own (default: scikit-image's sample photos)")
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile of the baseline with inductor freezing "
                        "(compiles for ~40 s per batch size); with --mode train, torch.compile of the "
                        "baseline's train step (inductor, no freezing; compiles for minutes)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="CUDA only: also time fused and the baseline replayed from CUDA graphs")
    p.add_argument("--providers", nargs="+", choices=("fused", "unfused", "torchvision") + ENGINE_CHOICES,
                   default=None,
                   help="providers to time (default: fused, unfused, torchvision; the baseline is always "
                        "timed). onnxruntime, openvino: the CPU inference engines on the ONNX export of the "
                        "same network, each in a process of its own, with the same thread count (eval, CPU, "
                        "float32 or bfloat16 only; needs: pip install onnxruntime openvino onnx onnxscript)")
    p.add_argument("--min-run-time", type=_positive_float, default=2.0, metavar="SECONDS",
                   help="timed seconds per provider and batch size, split over --rounds (default 2)")
    p.add_argument("--rounds", type=_positive_int, default=3,
                   help="interleaved timing rounds over the providers (default 3)")
    p.add_argument("--warmup", type=_positive_int, default=3, help="warm-up calls per provider (default 3)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed for the weights (default 0)")
    p.add_argument("--no-roofline", action="store_true",
                   help="skip the whole-network roofline table (it times a large copy and a large "
                        "matmul first: ~3 s on a CPU)")
    p.add_argument("--json", metavar="PATH",
                   help="also write the check and the table as JSON (missing parent folders are created; "
                        "checked before timing starts)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    # Tests only: resize the preprocessed photos to N x N (tiny, fast runs).
    p.add_argument("--image-size", type=_positive_int, default=None, help=argparse.SUPPRESS)
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
    train = args.mode == "train"
    if train and args.dtype != "float32":
        raise CommandError(f"--mode train: expected --dtype float32 (the train step runs float32), "
                           f"got {args.dtype}")
    if args.amp and not train:
        raise CommandError("--amp: only with --mode train (for bfloat16 inference use --dtype bfloat16)")
    if args.matmul_precision != "highest" and (train or args.dtype != "float32"):
        raise CommandError(f"--matmul-precision {args.matmul_precision}: only with --mode eval and --dtype float32")
    if train and args.cuda_graphs:
        raise CommandError("--cuda-graphs: only with --mode eval")
    if args.json:
        out_paths.check_writable(args.json, "--json")  # before the timing, not after it
    args.batch_sizes = list(dict.fromkeys(args.batch_sizes))  # a size given twice is timed once
    engine_names = [p for p in (args.providers or ()) if p in ENGINE_CHOICES]
    torch_keys = None if args.providers is None else [p for p in args.providers if p not in ENGINE_CHOICES]
    if engine_names:
        _check_engine_args(engine_names, args, device)
    images = _load_photos(args)
    photos = data.preprocess(images)
    if args.image_size is not None:
        photos = torch.nn.functional.interpolate(photos, size=(args.image_size,) * 2, mode="bilinear",
                                                 antialias=True, align_corners=False)
    source = "--images" if args.images else "scikit-image sample photos"
    print(f"images: {len(images)} from {source} ({', '.join(n for n, _ in images)}) -> "
          f"{tuple(photos.shape)}, Resize 256, CenterCrop 224"
          + (f", resized to {args.image_size}" if args.image_size is not None else "")
          + ", ImageNet normalization")
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else bench._cpu_name()
    print(f"device: {device} ({dev_name}), dtype {args.dtype}, variant {args.variant}, mode {args.mode}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, seed {args.seed}")
    if args.matmul_precision != "highest":
        from .cpu_precision import bf16x3_status
        with bench.matmul_precision(args.matmul_precision):
            x3 = bf16x3_status() if device.type == "cpu" else "CPU only"
        print(f"float32 matmul precision {args.matmul_precision!r} for the torch providers; fused bf16x3: {x3}")
    if train and device.type == "cpu":
        from . import cpu_alloc
        # Both networks' steps then reuse the pages the previous step freed: without it, page faults
        # took 20-35% of a 224x224 step, landing on either network (cpu_alloc's docstring).
        kept = cpu_alloc.keep_freed_memory()
        print("cpu allocator: " + ("glibc keeps freed memory in the process (googlenet_fast.cpu_alloc)" if kept
                                   else "the platform's malloc as is (not glibc)"))

    report = {"args": {k: v for k, v in vars(args).items() if k != "func"},
              "environment": {k: str(v) for k, v in bench.environment_info().items()}}
    if train and device.type == "cpu":
        report["environment"]["cpu_allocator"] = "glibc, freed memory kept" if kept else "default"
    failed = False
    with contextlib.ExitStack() as stack:
        stack.enter_context(bench.no_tf32())
        if args.matmul_precision != "highest":  # (the default leaves torch's setting as it is)
            stack.enter_context(bench.matmul_precision(args.matmul_precision))
        stack.enter_context(torch.enable_grad() if train else torch.no_grad())
        engine_set = None
        if engine_names:
            from . import engines
            # the workers start (and import) while the networks are built and exported
            engine_set = stack.enter_context(engines.EngineSet(engine_names, dtype, torch.get_num_threads()))
        if train:
            nets = bench.build_train_networks(seed=args.seed, variant=args.variant, device=device)
            failed |= _check_train(nets, photos, device, args, report)
            providers = bench.train_providers(nets, compile=args.compile, only=torch_keys, amp=args.amp)
        else:
            nets = bench.build_networks(seed=args.seed, variant=args.variant, device=device, dtype=dtype,
                                        calibration=photos)
            engine_outputs = {}
            if engine_set is not None:
                # the float32 network the torch providers run, exported with torch.onnx's default exporter
                model = nets.fused if dtype == torch.float32 else _float32_copy(nets.fused)
                engine_set.load(model, photos)
                engine_outputs = engine_set.outputs(photos)
            failed |= _check(nets, photos, device, dtype, args, report, engine_outputs,
                             engine_set.errors if engine_set is not None else {})
            providers = bench.network_providers(nets, compile=args.compile, cuda_graphs=args.cuda_graphs,
                                                only=torch_keys)
            if engine_set is not None:
                providers += engine_set.providers()
        load_before = bench.load_average()
        meter = bench.OtherCpuMeter(engine_set.pids() if engine_set is not None else ())
        results = []
        for b in args.batch_sizes:
            x = data.fill_batch(photos, b).to(device=device, dtype=dtype).contiguous(
                memory_format=torch.channels_last)
            results += bench.run_providers(providers, x, min_run_time=args.min_run_time, rounds=args.rounds,
                                           warmup=args.warmup, show_progress=not args.quiet,
                                           compile_context=(bench.quiet_compile_context if train
                                                            else bench.freezing_context),
                                           cpu_meter=meter)
    rows = bench.rows_with_speedup(results, nets.baseline_name)
    print()
    print(bench.format_table(rows, nets.baseline_name))
    notes = [p.note for p in providers if p.note]
    what = (f"train step (train-mode forward with aux heads, loss main + {bench.AUX_WEIGHT:g} aux, backward, "
            f"SGD lr {bench.TRAIN_LR:g} momentum {bench.TRAIN_MOMENTUM:g} step), channels_last, {args.dtype}"
            + (" weights, forward under torch.autocast(bfloat16)" if args.amp else "")
            if train else f"eval, no_grad, channels_last, {args.dtype}")
    print(f"ms per {'step' if train else 'batch'}: median, IQR and range of {args.rounds} interleaved rounds, "
          f"{args.min_run_time:g} s per provider and batch size; {what}"
          + ("".join(f"; {n}" for n in notes)))
    if train:
        for p in providers:  # the steps train on one batch: a diverged run would time NaN arithmetic
            last = getattr(p.fn, "last_loss", None)
            if last is not None and not torch.isfinite(last).all():
                print(f"warning: {p.name}: the loss became {last.item()} during timing")
    noisy_rows = [f"b={r['batch_size']} {r['provider']}" for r in rows
                  if "median_ms" in r and r["iqr_ms"] > 0.1 * r["median_ms"]]
    if noisy_rows:
        print(f"noisy (IQR over 10% of the median): {', '.join(noisy_rows)}; rerun with a larger "
              "--min-run-time / --rounds, or on a quieter machine")
    few = [f"b={r['batch_size']} {r['provider']} ({r['runs']})" for r in rows
           if "median_ms" in r and r["runs"] < bench.MIN_RUNS_FOR_SPREAD]
    if few:
        print(f"spread unknown: {', '.join(few)} timed fewer than {bench.MIN_RUNS_FOR_SPREAD} times (runs in "
              "parentheses): their IQR is not a measurement (0.00 for a single run) and their speedups rest on "
              "those few calls, as noisy as the machine; raise --min-run-time or --rounds")
    report["few_runs"] = few
    load_after = bench.load_average()
    if device.type == "cpu":
        _print_cpu_contention(meter, load_before, load_after, torch.get_num_threads(), report)
    failed |= any("error" in r for r in rows)
    report["rows"] = rows
    if not args.no_roofline:
        from . import roofline
        rl_rows, ceilings = roofline.network_roofline_rows(
            rows, mode=args.mode, image_size=photos.shape[-1], dtype=dtype, device=device, variant=args.variant)
        print()
        print(f"whole network, roofline ({args.variant} GoogLeNet FLOPs and minimal bytes per {'step' if train else 'batch'}; "
              "ceilings timed now):")
        print(roofline.format_network_table(rl_rows, ceilings))
        report["roofline"] = {"rows": rl_rows, "ceilings": ceilings}
    if args.json:
        d = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(d, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=str)
        print(f"wrote {args.json}")
    return 1 if failed else 0


def _print_cpu_contention(meter, load_before, load_after, threads: int, report) -> None:
    """Say whether other processes shared the CPU while the providers were timed.

    Measured from /proc/stat over the timing rounds (busy time of all cores minus this process's
    own CPU time), not from the 1-minute load average: that one still counts the minute before the
    command, e.g. the pip install and build that ``pip install ... && googlenet-fast bench`` runs
    first, and would call every such run noisy.  Without /proc/stat: the load average."""
    cores = os.cpu_count() or 1
    other = meter.other_cores
    la = load_after[0] if load_after else None
    if other is not None:
        # noisy when the other processes leave fewer free cores than this process's threads
        noisy = other > max(0.0, cores - threads) + 0.25
        print(f"CPU used by other processes while timing: {other:.2f} of {cores} cores on average over "
              f"{meter.wall_s:.1f} s (measured from /proc/stat: all cores' busy time minus this process's "
              f"own, over the timing rounds only; not the 1-minute load average"
              + (f", {la:.2f} now," if la is not None else "")
              + " which also counts the minute before, e.g. a pip install and build just before this command)"
              + (": other processes were running, the timings are noisy" if noisy else ": quiet"))
        report["other_cpu"] = {"cores_busy": other, "timed_s": meter.wall_s, "cores": cores,
                               "threads": threads, "noisy": noisy, "source": "/proc/stat"}
    elif load_before is not None:
        # this process itself adds up to its thread count to the load while it times
        slack = max(1.0, 0.5 * cores)
        noisy = load_before[0] > slack or load_after[0] > threads + slack
        print(f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after timing, "
              f"{cores} cores (no /proc/stat here; the 1-minute average also counts the minute before the "
              "command)" + (": other processes were running, the timings are noisy" if noisy else ""))
    if load_before is not None:
        report["load_average"] = {"before": load_before, "after": load_after, "cores": cores}


def _check_engine_args(engine_names, args, device) -> None:
    """CommandError for an engine provider the run cannot have (train mode, a GPU, float16) or
    whose package is missing (one line that says what to install)."""
    from . import engines
    asked = ", ".join(engine_names)
    if args.mode != "eval":
        raise CommandError(f"--providers {asked}: the engines run inference only (--mode eval), got --mode {args.mode}")
    if device.type != "cpu":
        raise CommandError(f"--providers {asked}: the engines run on the CPU (--device cpu), got --device {device.type}")
    if args.dtype not in ("float32", "bfloat16"):
        raise CommandError(f"--providers {asked}: the engines run --dtype float32 or bfloat16, got {args.dtype}")
    try:
        engines.require(engine_names)
    except engines.EngineUnavailableError as e:
        raise CommandError(f"--providers: {e}") from None


def _check(nets, photos, device, dtype, args, report, engine_outputs=None, engine_errors=None) -> bool:
    """Print fused (and the engines' ``engine_outputs``, {name: logits}) vs the reference network
    on all photos; return True when one fails (``engine_errors``: {name: why it has no output})."""
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
    checked = [bench.FUSED]
    for name, out in (engine_outputs or {}).items():
        checks[name] = bench.compare_logits(out, ref)
        checked.append(name)
    if dtype == torch.float32 and args.matmul_precision != "highest":
        # PyTorch's "high" allows TF32 (10-bit mantissa) or bf16x3 (~16 bits): not IEEE float32.
        # bf16x3 measured 7e-5 (224x224) to 1.6e-4 (96x96) against float32 here, IEEE float32 ~4e-6;
        # up to 3.2e-4 of float64 on other networks (googlenet_fast/cpu_precision.py).
        limit = 1e-3
        rule = (f"max rel err <= {limit:g}: precision {args.matmul_precision!r} (bf16x3 / TF32 class), "
                "not the 1e-4 of IEEE float32")
    elif dtype == torch.float32:
        limit = 1e-4
        rule = f"max rel err <= {limit:g}"
    else:
        own = checks[ref_name]["max_rel_err"]
        limit = 2 * own
        rule = f"max rel err <= 2x {ref_name}'s own {args.dtype} error ({own:.3g})"
    verdict = all(checks[n]["max_rel_err"] <= limit for n in checked)
    if len(checked) > 1:
        rule += f" for {', '.join(checked)}"
    for name, why in (engine_errors or {}).items():
        print(f"check: {name} failed: {why}")
        verdict = False
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
    if engine_errors:
        report["check"]["engine_errors"] = dict(engine_errors)
    return not verdict


def _check_train(nets, photos, device, args, report) -> bool:
    """--mode train: print fused vs the baseline (float32) for one train-mode forward + backward
    on the photos (logits, both aux heads, loss); return True when it fails: 1e-4 relative, with
    --amp 2x the baseline's own bfloat16 error (plus 1e-4)."""
    import torch
    from . import bench
    ref_name = nets.baseline_name
    x = photos.to(device).contiguous(memory_format=torch.channels_last)
    try:
        checks = bench.check_train_step(nets, x, seed=args.seed, amp=args.amp)
    except Exception as e:
        print(f"check: fused train step failed on the photos: {type(e).__name__}: {e}")
        report["check"] = {"error": f"{type(e).__name__}: {e}"}
        return True
    heads = ("logits", "aux_logits2", "aux_logits1")
    for name, res in checks.items():
        what = "fused train step" if name == bench.FUSED else f"{name} train step"
        mode = " under bfloat16 autocast" if args.amp else ""
        for k in heads:
            c = res[k]
            print(f"check: {what}{mode} {k} vs {ref_name}{' float32' if args.amp else ''} on {c['n']} photos (same dropout masks): "
                  f"max abs err {c['max_abs_err']:.3g}, max rel err {c['max_rel_err']:.3g} "
                  f"(of max |logit| {c['max_ref']:.3g}), top-1 agreement {c['top1_agree']}/{c['n']}")
        print(f"check: {what}{mode} loss rel err {res['loss_rel_err']:.3g}")
    res = checks[bench.FUSED]
    if args.amp:
        own = checks[ref_name]
        limits = {k: 2 * own[k]["max_rel_err"] + 1e-4 for k in heads}
        limits["loss_rel_err"] = 2 * own["loss_rel_err"] + 1e-4
        rule = f"logits, aux logits and loss: max rel err <= 2x {ref_name}'s own bfloat16 error + 1e-4"
    else:
        limits = {k: 1e-4 for k in heads + ("loss_rel_err",)}
        rule = "logits, aux logits and loss: max rel err <= 0.0001"
    verdict = all(res[k]["max_rel_err"] <= limits[k] for k in heads) and res["loss_rel_err"] <= limits["loss_rel_err"]
    print(f"check: {'OK' if verdict else 'FAILED'} ({rule})")
    report["check"] = {"reference": f"{ref_name} float32, train mode", "rule": rule, "ok": verdict, **checks}
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
# train


def add_train_parser(subparsers):
    # argument types of this command (bench's _positive_int/_positive_float are shared)
    def _nonneg_float(s):
        v = float(s)
        if not v >= 0:
            raise argparse.ArgumentTypeError(f"expected a number >= 0, got {s}")
        return v

    def _fraction(s):
        v = float(s)
        if not 0 < v < 1:
            raise argparse.ArgumentTypeError(f"expected a number between 0 and 1 (exclusive), got {s}")
        return v

    def _smoothing(s):
        v = float(s)
        if not 0 <= v < 1:
            raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {s}")
        return v

    def _nonneg_int(s):
        v = int(s)
        if v < 0:
            raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {s}")
        return v

    p = subparsers.add_parser(
        "train", help="train GoogLeNet on scikit-learn's digits or an image folder",
        description="Train GoogLeNet (fused Inception modules) on scikit-learn's bundled digits "
                    "(default: 1797 8x8 images upscaled to --image-size, stratified 80/20 split) or "
                    "on an ImageFolder directory; validation top-1 and loss per epoch, checkpoints "
                    "that resume to the same losses, --compare against the reference path. Under "
                    "torchrun (WORLD_SIZE > 1) it trains with DistributedDataParallel. With --resume, "
                    "settings not given on the command line come from the checkpoint.",
        epilog="Settings marked * must match the checkpoint when resuming (omit them to take the "
               "checkpoint's).")
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="DIR", default=None,
                   help="* ImageFolder directory (class subfolders; with train/ and val/ subfolders "
                        "those are the splits, else a seeded random split by --val-fraction). "
                        "Default: scikit-learn's digits")
    g.add_argument("--val-fraction", type=_fraction, default=None,
                   help="* validation share when splitting (default 0.2)")
    g.add_argument("--image-size", type=_positive_int, default=None, metavar="S",
                   help="* input S x S (default 32; at least 15 for torchvision, 31 for paper)")
    g.add_argument("--num-classes", type=_positive_int, default=None,
                   help="* model outputs (default: the data's class count)")
    g.add_argument("--workers", type=_nonneg_int, default=None,
                   help="DataLoader workers (default: 0 for digits or on a machine with 2 usable cores "
                        "or fewer, where a worker slows training down; else min(4, cores / 2))")
    g = p.add_argument_group("model and optimization")
    g.add_argument("--variant", choices=("torchvision", "paper"), default=None,
                   help="* network variant (default torchvision)")
    g.add_argument("--epochs", type=_positive_int, default=None,
                   help="(default 8) with --resume: may differ from the checkpoint's, e.g. to extend a "
                        "finished run; the cosine LR schedule is then recomputed over the new total")
    g.add_argument("--batch-size", type=_positive_int, default=None,
                   help="* per process (default 64); the last partial batch of an epoch is dropped")
    g.add_argument("--lr", type=_positive_float, default=None, help="* peak learning rate (default 0.05)")
    g.add_argument("--optimizer", choices=("sgd", "adamw"), default=None,
                   help="* sgd: momentum 0.9, Nesterov (default); adamw")
    g.add_argument("--weight-decay", type=_nonneg_float, default=None,
                   help="* on conv/linear weights, not biases or BatchNorm (default 5e-4)")
    g.add_argument("--warmup-steps", type=_nonneg_int, default=None,
                   help="* linear warm-up steps before the per-step cosine decay (default 20)")
    g.add_argument("--label-smoothing", type=_smoothing, default=None, help="* (default 0)")
    g.add_argument("--aux-weight", type=_nonneg_float, default=None,
                   help="* loss = main + W x (aux1 + aux2) (default 0.3, the paper's; 0 drops the aux heads)")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="* autocast (CPU: bfloat16; CUDA: --amp-dtype, float16 with a GradScaler)")
    g.add_argument("--amp-dtype", choices=("bfloat16", "float16"), default=None,
                   help="* autocast dtype (default bfloat16)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last model and inputs (default on)")
    g.add_argument("--seed", type=int, default=None,
                   help="* weights, split, data order and dropout (default 0)")
    g.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when visible, else cpu (under torchrun: cuda:LOCAL_RANK)")
    g.add_argument("--threads", type=_positive_int, default=None,
                   help="torch.set_num_threads (default: torch's choice; on a CPU busy with other "
                        "jobs 1 can be much faster)")
    g.add_argument("--compare", action="store_true", default=None,
                   help="* also train the reference path (fused=False) from the same seed and batches; "
                        "step 1's loss difference is held to 1e-4 relative (float32), later steps drift "
                        "apart by float32 rounding (reported, not checked)")
    g.add_argument("--unfused", action="store_true", default=None,
                   help="* train the reference path (fused=False) only")
    g = p.add_argument_group("checkpoints and control")
    g.add_argument("--checkpoint", metavar="PATH", default=None,
                   help="write a checkpoint here after each epoch, every --checkpoint-interval steps "
                        "and at the end (atomically: temp file + os.replace). Default with --resume: "
                        "the resumed file. Missing parent folders are created; checked before training "
                        "starts")
    g.add_argument("--checkpoint-interval", type=_positive_int, default=None, metavar="STEPS",
                   help="also checkpoint every STEPS steps, mid-epoch too")
    g.add_argument("--resume", metavar="PATH", default=None,
                   help="continue a checkpointed run exactly (same batches, dropout and losses); "
                        "a finished run says so and does nothing unless --epochs is raised")
    g.add_argument("--max-steps", type=_positive_int, default=None,
                   help="stop after this global step (the LR schedule still spans --epochs)")
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.set_defaults(func=run_train)
    return p


def run_train(args) -> int:
    from . import train
    return train.run(args)


# ----------------------------------------------------------------------------------------------

COMMANDS = [add_bench_parser, add_info_parser, add_train_parser]


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
    except BrokenPipeError:
        # the reader of stdout went away (`... | head`): stop quietly, as Unix tools do; stdout is
        # pointed at /dev/null so that the interpreter's final flush does not raise again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
