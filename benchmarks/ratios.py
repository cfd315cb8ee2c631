"""Speedup ratios from a pytest-benchmark JSON file: per group, every provider's median against
the group's baseline (torchvision eager, channels_last).

    python benchmarks/ratios.py benchmarks/results/cpu.json [--baseline "torchvision eager"] [--json out.json]

speedup = baseline median / provider median (> 1: faster than the baseline).

When the file holds both whole-network groups ("network b=N", eval) and train-step groups
("train step b=N", BENCH_TRAIN=1), a second table puts each provider's eval and train-step
speedups side by side per batch size.
"""
import argparse
import json
import re
import sys
from collections import OrderedDict

try:
    from googlenet_fast.bench import speedup as _speedup  # one definition of a ratio
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__))))
    from googlenet_fast.bench import speedup as _speedup


def _natural(s):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def ratios(report, baseline=None):
    """[(group, provider, median_ms, iqr_ms, rounds, speedup or None)] from a pytest-benchmark report."""
    groups = OrderedDict()
    for b in report.get("benchmarks", []):
        provider = b.get("extra_info", {}).get("provider") or b.get("param") or b["name"]
        groups.setdefault(b.get("group") or "(no group)", []).append((provider, b))
    rows = []
    for group in sorted(groups, key=_natural):
        entries = groups[group]
        base_name = baseline or next((b.get("extra_info", {}).get("baseline") for _, b in entries
                                      if b.get("extra_info", {}).get("baseline")), "torchvision eager")
        base = next((b["stats"]["median"] for p, b in entries if p == base_name), None)
        for provider, b in entries:
            st = b["stats"]
            rows.append((group, provider, st["median"] * 1e3, st["iqr"] * 1e3, st["rounds"],
                         _speedup(base, st["median"])))
    return rows


SIDE_BY_SIDE = (("network", "eval"), ("train step", "train step"))


def side_by_side(rows):
    """[(batch, provider, {column: speedup or None})] for the whole-network eval groups and the
    train-step groups (empty unless the train-step groups are present)."""
    kinds = dict(SIDE_BY_SIDE)
    table = OrderedDict()
    seen = set()
    for group, provider, _, _, _, speedup in rows:
        m = re.fullmatch(r"(.+) b=(\d+)", group)
        if not m or m.group(1) not in kinds:
            continue
        seen.add(m.group(1))
        table.setdefault((int(m.group(2)), provider), {})[kinds[m.group(1)]] = speedup
    if "train step" not in seen:
        return []
    return [(b, p, cols) for (b, p), cols in sorted(table.items(), key=lambda kv: kv[0][0])]


def _print_side_by_side(rows, baseline):
    sbs = side_by_side(rows)
    if not sbs:
        return
    cols = [c for _, c in SIDE_BY_SIDE]
    head = ("batch", "provider") + tuple(f"{c} speedup" for c in cols)
    cells = [(str(b), p) + tuple(f"{d[c]:.2f}x" if d.get(c) else "-" for c in cols) for b, p, d in sbs]
    w = [max(len(h), *(len(c[k]) for c in cells)) for k, h in enumerate(head)]
    print()
    print(f"eval and train step side by side (speedup over {baseline or 'torchvision eager'}):")
    print("  ".join(x.ljust(w[k]) if k == 1 else x.rjust(w[k]) for k, x in enumerate(head)))
    print("  ".join("-" * k for k in w))
    for c in cells:
        print("  ".join(x.ljust(w[k]) if k == 1 else x.rjust(w[k]) for k, x in enumerate(c)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json_file", help="the file written by pytest --benchmark-json")
    ap.add_argument("--baseline", default=None, help="provider to divide by (default: torchvision eager)")
    ap.add_argument("--json", metavar="PATH", help="also write the ratios as JSON")
    args = ap.parse_args(argv)
    try:
        with open(args.json_file) as f:
            report = json.load(f)
    except (OSError, ValueError) as e:
        print(f"ratios.py: error: cannot read {args.json_file!r} as pytest-benchmark JSON: {e}", file=sys.stderr)
        return 2
    rows = ratios(report, args.baseline)
    if not rows:
        print(f"ratios.py: error: {args.json_file!r} holds no benchmarks", file=sys.stderr)
        return 2
    mi = report.get("machine_info", {})
    cpu = mi.get("cpu", {}) if isinstance(mi.get("cpu"), dict) else {}
    print(f"{args.json_file}: {report.get('datetime', '?')}, {cpu.get('brand_raw', mi.get('processor', '?'))}, "
          f"{cpu.get('count', '?')} cores, python {mi.get('python_version', '?')}")
    head = ("group", "provider", "median ms", "IQR ms", "rounds", "speedup")
    cells = [(g, p, f"{m:.3f}", f"{i:.3f}", str(r), f"{s:.2f}x" if s else "-") for g, p, m, i, r, s in rows]
    w = [max(len(h), *(len(c[k]) for c in cells)) for k, h in enumerate(head)]
    line = lambda c: "  ".join(x.ljust(w[k]) if k < 2 else x.rjust(w[k]) for k, x in enumerate(c))  # noqa: E731
    print(line(head))
    print("  ".join("-" * k for k in w))
    prev = None
    for c in cells:
        if prev is not None and c[0] != prev:
            print()
        print(line(c))
        prev = c[0]
    _print_side_by_side(rows, args.baseline)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dict(zip(("group", "provider", "median_ms", "iqr_ms", "rounds", "speedup"), r))
                       for r in rows], f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
