"""benchmarks/report.py: a --dry-run (CPU, Triton interpreter, tiny sizes) writes a JSON, a markdown
table and a PNG with every configuration, provider and skip reason; the roofline math against
hand-computed values for Table 1's 3a."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from googlenet_fast import roofline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "report.py")


def _load_report():
    spec = importlib.util.spec_from_file_location("gf_report", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


report = _load_report()
TABLE1 = report.TABLE1


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    prefix = str(out / "report-dry")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONUNBUFFERED="1")
    env.pop("GOOGLENET_FAST_BACKEND", None)
    proc = subprocess.run([sys.executable, SCRIPT, "--dry-run", "--out-prefix", prefix],
                          capture_output=True, text=True, timeout=110, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(prefix + ".json") as f:
        data = json.load(f)
    with open(prefix + ".md") as f:
        md = f.read()
    return {"prefix": prefix, "json": data, "md": md, "stdout": proc.stdout}


def test_dry_run_json_schema(dry_run):
    d = dry_run["json"]
    assert d["schema"] == "googlenet_fast.report/1"
    assert d["dry_run"] is True and d["device"] == "cpu" and d["dtype"] == "float32"
    for k in ("created_utc", "machine", "versions", "load_average", "ceilings", "budget_s", "elapsed_s",
              "providers", "rows", "markdown"):
        assert k in d, k
    assert d["versions"]["torch"] == torch.__version__
    # ceilings measured in the run, positive
    c = d["ceilings"]
    assert c["copy"]["gb_s"] > 0 and c["copy"]["bytes"] > 0
    assert c["matmul"]["float32"]["tflop_s"] > 0
    # a ceiling is the fastest run's rate (the median understates it on a loaded machine)
    assert c["copy"]["min_ms"] <= c["copy"]["median_ms"]
    assert c["copy"]["gb_s"] == pytest.approx(c["copy"]["bytes"] / (c["copy"]["min_ms"] / 1e3) / 1e9)
    mm = c["matmul"]["float32"]
    assert mm["tflop_s"] == pytest.approx(2 * mm["shape"][0] ** 3 / (mm["min_ms"] / 1e3) / 1e12)
    # every provider is described and accounted for
    assert set(d["providers"]) == set(report.BLOCK_PROVIDERS)
    rows = d["rows"]
    statuses = {r["status"] for r in rows}
    assert statuses <= {"ok", "error", "skipped"}
    assert not [r for r in rows if r["status"] == "error"], [r for r in rows if r["status"] == "error"]
    # each configuration x mode x provider has exactly one row (timed or skipped with a reason)
    for mode in ("eval", "train"):
        for name in TABLE1:
            got = sorted(r["provider"] for r in rows if r["scope"] == "block" and r["config"] == name
                         and r["mode"] == mode)
            assert got == sorted(report.BLOCK_PROVIDERS), (name, mode, got)
        net = sorted(r["provider"] for r in rows if r["scope"] == "network" and r["mode"] == mode)
        assert net == sorted(report.NETWORK_PROVIDERS), (mode, net)
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["provider"] for r in ok} >= {report.FUSED, report.UNFUSED, report.BASELINE, "fused [triton]"}
    for r in ok:
        for k in ("median_ms", "speedup", "tflop_s", "gb_s", "frac_peak_flops", "frac_peak_bw", "roofline_ms",
                  "frac_roofline", "gflop", "mbytes"):
            assert 0 < r[k] < math.inf, (r["config"], r["provider"], k, r[k])
        assert r["bound"] in ("compute", "memory")
        if r["provider"] == report.BASELINE:
            assert r["speedup"] == pytest.approx(1.0)
    # the eager fused providers were checked against torchvision (tiny fp32 blocks: close)
    errs = [r["max_rel_err"] for r in ok if r["mode"] == "eval" and "max_rel_err" in r]
    assert errs and max(errs) < 1e-4
    for r in rows:
        if r["status"] == "skipped":
            assert r["reason"], r
    reasons = {r["reason"] for r in rows if r["status"] == "skipped"}
    assert any("no CUDA device" in x for x in reasons)
    assert any("--compile" in x for x in reasons)
    assert any("max-autotune" in x for x in reasons)


def test_dry_run_markdown(dry_run):
    md = dry_run["md"]
    d = dry_run["json"]
    assert md.startswith("# googlenet_fast benchmark report: cpu, float32")
    head = md.split("## Providers")[0]
    for s in ("date:", "machine:", f"torch {torch.__version__}", "triton", "dtype: float32", "load average",
              "ceilings measured in this run", "budget:"):
        assert s in head, s
    for name in TABLE1:
        assert f"| {name} |" in md, name
    assert "| network |" in md
    for r in d["rows"]:
        if r["status"] == "skipped":
            assert r["reason"] in md
    assert "not requested (--compile)" in md and "no CUDA device" in md
    for mode in ("eval", "train"):
        assert f"## Speedup vs torchvision eager: {mode}, batch 1" in md


def test_dry_run_png(dry_run):
    path = dry_run["prefix"] + ".png"
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.image
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200


def test_render_from_json(dry_run, tmp_path):
    """--render rebuilds the markdown and PNG from a JSON (device_check.sh brings back only it)."""
    prefix = str(tmp_path / "again")
    assert report.main(["--render", dry_run["prefix"] + ".json", "--out-prefix", prefix]) == 0
    with open(prefix + ".md") as f:
        assert f.read() == dry_run["md"]
    assert os.path.getsize(prefix + ".png") > 1000


# ----------------------------------------------------------------------------------------------
# The cost model and the roofline, by hand for Table 1's 3a (192, 64, 96, 128, 16, 32, 32, 28):
#   P = 28*28 = 784 pixels; multiply-adds per pixel = weights =
#   192*(64+96+16+32) + 9*96*128 + 9*16*32 = 39936 + 110592 + 4608 = 155136
#   eval FLOPs = 2 * 784 * 155136 = 243_253_248
#   eval bytes (fp32) = 4 * (784*192 + 155136 + 784*256 + 2*784*(96+16))
#                     = 4 * (150528 + 155136 + 200704 + 175616) = 4 * 681984 = 2_727_936
#   train FLOPs = 3 * 243_253_248 = 729_759_744
#   train bytes = 4 * (2*155136 + 3*150528 + 3*200704 + 4*784*112)
#               = 4 * (310272 + 451584 + 602112 + 351232) = 4 * 1_715_200 = 6_860_800


def test_block_cost_3a_by_hand():
    cfg = TABLE1["3a"]
    assert report.block_cost(cfg, 1, 28, torch.float32, "eval") == (243_253_248, 2_727_936)
    assert report.block_cost(cfg, 1, 28, torch.float32, "train") == (729_759_744, 6_860_800)
    # bf16 halves the bytes, not the FLOPs; batch 8 scales everything but the weights
    assert report.block_cost(cfg, 1, 28, torch.bfloat16, "eval") == (243_253_248, 2_727_936 // 2)
    f8, b8 = report.block_cost(cfg, 8, 28, torch.float32, "eval")
    assert f8 == 8 * 243_253_248
    assert b8 == 4 * (8 * (150528 + 200704 + 175616) + 155136)
    with pytest.raises(ValueError, match="mode"):
        report.block_cost(cfg, 1, 28, torch.float32, "predict")


def test_roofline_3a_by_hand():
    flops, nbytes = 243_253_248, 2_727_936
    # 1 TFLOP/s and 10 GB/s: compute 243.25 us < memory 272.79 us -> memory bound
    rl = roofline.roofline(flops, nbytes, 1.0, 10.0)
    assert rl["compute_s"] == pytest.approx(2.43253248e-4)
    assert rl["memory_s"] == pytest.approx(2.727936e-4)
    assert rl["bound_s"] == pytest.approx(2.727936e-4) and rl["bound"] == "memory"
    # 0.5 TFLOP/s: compute 486.5 us binds
    rl = roofline.roofline(flops, nbytes, 0.5, 10.0)
    assert rl["bound_s"] == pytest.approx(4.86506496e-4) and rl["bound"] == "compute"
    ceilings = {"copy": {"gb_s": 10.0}, "matmul": {"float32": {"tflop_s": 1.0}}}
    row = roofline.add_cost_columns({"status": "ok", "median_ms": 1.0}, flops, nbytes, ceilings, torch.float32)
    assert row["tflop_s"] == pytest.approx(0.243253248)
    assert row["gb_s"] == pytest.approx(2.727936)
    assert row["frac_peak_flops"] == pytest.approx(0.243253248)
    assert row["frac_peak_bw"] == pytest.approx(0.2727936)
    assert row["roofline_ms"] == pytest.approx(0.2727936) and row["bound"] == "memory"
    assert row["frac_roofline"] == pytest.approx(0.2727936)
    skipped = roofline.add_cost_columns({"status": "skipped"}, flops, nbytes, ceilings, torch.float32)
    assert "tflop_s" not in skipped and skipped["gflop"] == pytest.approx(0.243253248)


def test_block_flops_match_flop_counter():
    """The hand formula (gpu_blocks.block_flops) and its train multiple agree with
    torch.utils.flop_counter on torchvision's block (meta device: nothing runs)."""
    from torch.utils.flop_counter import FlopCounterMode
    from torchvision.models.googlenet import Inception
    cfg = TABLE1["4e"]
    with torch.device("meta"):
        blk = Inception(*cfg[:7])
        x = torch.empty(2, cfg[0], 14, 14, requires_grad=True)
    with FlopCounterMode(display=False) as fc:
        blk.eval()(x)
    assert fc.get_total_flops() == report.block_cost(cfg, 2, 14, torch.float32, "eval")[0]
    with FlopCounterMode(display=False) as fc:
        blk.train()(x).sum().backward()
    assert fc.get_total_flops() == report.block_cost(cfg, 2, 14, torch.float32, "train")[0]


def test_network_cost():
    f1, b1 = roofline.network_cost(1, 224, torch.float32, "eval")
    # torchvision documents googlenet at 1.50 GMACs per 224x224 image
    assert 2 * 1.45e9 < f1 < 2 * 1.55e9
    f4, b4 = roofline.network_cost(4, 224, torch.float32, "eval")
    assert f4 == 4 * f1
    weights = 6_624_904  # torchvision googlenet without aux heads
    assert b4 - 4 * b1 == pytest.approx(4 * weights * (1 - 4), rel=1e-9)
    ft, bt = roofline.network_cost(1, 224, torch.float32, "train")
    assert 2.5 * f1 < ft < 3.5 * f1 and bt > 2 * b1


def test_budget_skips_are_reported(tmp_path):
    """A budget too small for any row: every row is still there, skipped with the budget reason."""
    prefix = str(tmp_path / "tiny")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, SCRIPT, "--dry-run", "--budget-s", "0.001", "--modes", "eval",
                           "--quiet", "--out-prefix", prefix], capture_output=True, text=True, timeout=100,
                          env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(prefix + ".json") as f:
        d = json.load(f)
    rows = d["rows"]
    assert len(rows) == len(TABLE1) * len(report.BLOCK_PROVIDERS) + len(report.NETWORK_PROVIDERS)
    # a section's first row starts while any of its time is left; the budget stops the rest
    assert {r["config"] for r in rows if r["status"] == "ok"} <= {"3a", "googlenet"}
    budget = [r for r in rows if "budget" in r.get("reason", "")]
    assert {r["provider"] for r in budget} >= {report.FUSED, report.UNFUSED, report.BASELINE}
    with open(prefix + ".md") as f:
        md = f.read()
    assert "budget: 0.001 s" in md
    for name in TABLE1:
        assert f"eval b=1 {name}" in md


def test_network_roofline_rows_for_bench():
    """The helper the bench command can call on bench.rows_with_speedup rows (ceilings given)."""
    rows = [{"batch_size": 2, "provider": "fused", "median_ms": 10.0, "iqr_ms": 0.1, "speedup": 1.2},
            {"batch_size": 2, "provider": "torch.compile", "error": "RuntimeError: x"}]
    ceilings = {"copy": {"gb_s": 20.0}, "matmul": {"float32": {"tflop_s": 0.2}}}
    out, c = roofline.network_roofline_rows(rows, mode="eval", image_size=224, dtype=torch.float32, device="cpu",
                                          ceilings=ceilings)
    flops, nbytes = roofline.network_cost(2, 224, torch.float32, "eval")
    assert c is ceilings and out[0]["tflop_s"] == pytest.approx(flops / 1e-2 / 1e12)
    assert out[0]["frac_roofline"] == pytest.approx(max(flops / 0.2e12, nbytes / 20e9) / 1e-2)
    assert out[1]["status"] == "error" and "tflop_s" not in out[1]
    text = roofline.format_network_table(out, ceilings)
    fused_line = next(line for line in text.splitlines() if " fused " in line)
    assert fused_line.split() == ["eval", "2", "fused", "10.00", "1.20x", f"{out[0]['tflop_s']:.3g}",
                                  f"{100 * out[0]['frac_peak_flops']:.1f}%", f"{out[0]['gb_s']:.3g}",
                                  f"{100 * out[0]['frac_peak_bw']:.1f}%", f"{100 * out[0]['frac_roofline']:.1f}%"]
    assert "b=2 torch.compile: error: RuntimeError: x" in text
    assert "copy 20.0 GB/s, matmul float32 0.2 TFLOP/s" in text
