"""The engine providers of ``bench`` (googlenet_fast.engines): ONNX Runtime and OpenVINO on the
ONNX export, each in a worker process; tiny runs (64x64 photos, 0.05 s of timing)."""
import json
import sys

import pytest
import torch
import torchvision

from googlenet_fast import bench, cli, engines
from cli_helpers import check_lines as _check_lines, table_rows

TINY = ["--device", "cpu", "--image-size", "64", "--min-run-time", "0.05", "--rounds", "1", "--warmup", "1",
        "--quiet", "--no-roofline"]


def _run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_bench_engines_float32(capsys, tmp_path):
    report_path = tmp_path / "bench.json"
    rc, out, err = _run(capsys, "bench", "--providers", "fused", "onnxruntime", "openvino", "--batch-sizes", "1", "2",
                        "--json", str(report_path), *TINY)
    assert rc == 0, out + err
    checks = _check_lines(out)
    assert set(checks) == {"fused", "onnxruntime", "openvino"}, out
    for name, c in checks.items():  # the engines' logits on the 8 photos vs torchvision's
        assert c["n"] == c["total"] == 8 and c["scale"] > 0
        assert c["rel"] < 1e-4 and c["agree"] == 8, (name, out)
    assert "check: OK (max rel err <= 0.0001 for fused, onnxruntime, openvino)" in out
    rows = table_rows(out)
    assert {(b, p) for b, p, *_ in rows} == {(b, p) for b in (1, 2) for p in
                                             ("fused", "torchvision eager", "onnxruntime", "openvino")}, out
    for b, p, median, ips, speedup in rows:
        assert 0 < median < 5000, (p, median)
        assert ips == pytest.approx(b / (median / 1e3), rel=0.01, abs=0.06)
    threads = torch.get_num_threads()
    assert f"onnxruntime: ONNX Runtime " in out and f"{threads} intra-op threads" in out
    assert f"INFERENCE_NUM_THREADS {threads}, INFERENCE_PRECISION_HINT f32" in out
    assert out.count("own process") == 2
    report = json.loads(report_path.read_text())
    assert report["check"]["ok"] is True and report["check"]["openvino"]["max_rel_err"] < 1e-4
    timed = [r for r in report["rows"] if r["provider"] in engines.ENGINES]
    assert len(timed) == 4 and all(r["runs"] >= 1 and r["median_ms"] > 0 for r in timed)


def test_bench_engines_bfloat16(capsys):
    rc, out, err = _run(capsys, "bench", "--dtype", "bfloat16", "--providers", "onnxruntime", "openvino",
                        "--batch-sizes", "1", *TINY)
    assert rc == 0, out + err
    checks = _check_lines(out)
    assert set(checks) == {"fused", "torchvision eager", "openvino"}, out
    own = checks["torchvision eager"]["rel"]  # torchvision's own bf16 error vs its float32 logits
    assert 0 < checks["openvino"]["rel"] <= 2 * own, out
    assert "INFERENCE_PRECISION_HINT bf16" in out
    assert "onnxruntime        n/a: ONNX Runtime's CPU execution provider has no bfloat16 execution" in out
    assert {(b, p) for b, p, *_ in table_rows(out)} == {(1, "torchvision eager"), (1, "openvino")}


def test_missing_engine_is_one_clear_line(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    assert engines.missing_packages(["onnxruntime", "openvino"]) == ["openvino"]
    rc, out, err = _run(capsys, "bench", "--providers", "fused", "openvino", *TINY)
    assert rc == 2
    assert err == ("googlenet-fast bench: error: --providers: openvino asked for but openvino is not installed; "
                   "install the engines with: pip install onnxruntime openvino onnx onnxscript\n")
    assert "Traceback" not in out + err


@pytest.mark.parametrize("argv, expected", [
    (["--mode", "train"], "the engines run inference only (--mode eval), got --mode train"),
    (["--dtype", "float16"], "the engines run --dtype float32 or bfloat16, got float16"),
])
def test_engine_argument_errors(capsys, argv, expected):
    rc, out, err = _run(capsys, "bench", "--providers", "onnxruntime", *argv, *TINY)
    assert rc == 2 and expected in err and "Traceback" not in err


def test_bad_engine_arguments():
    with pytest.raises(ValueError, match="engine: expected one of"):
        engines.EngineWorker("tensorrt")
    with pytest.raises(ValueError, match="engines: expected names from"):
        engines.missing_packages(["tensorrt"])
    with pytest.raises(ValueError, match="dtype: the engines run float32 or bfloat16"):
        engines.EngineSet(["openvino"], torch.float16, 1)
    with pytest.raises(ValueError, match="threads: expected a positive integer, got 0"):
        engines.EngineSet(["openvino"], torch.float32, 0)


def test_failing_worker_keeps_the_other_results(tmp_path, monkeypatch):
    """An engine whose import fails in its worker, and one whose worker dies while timed: each
    fails its own row; the other providers' timings stay."""
    fake = tmp_path / "fake"
    (fake / "openvino").mkdir(parents=True)
    (fake / "openvino" / "__init__.py").write_text("raise ImportError('simulated broken openvino')\n")
    monkeypatch.setenv("PYTHONPATH", str(fake))  # seen by the workers only

    def quick_export(model, example, folder):  # the TorchScript exporter: faster than the default
        path = f"{folder}/g.onnx"
        torch.onnx.export(model, (example[:1],), path, dynamo=False, input_names=["x"])
        return path
    monkeypatch.setattr(engines, "export_for_engines", quick_export)

    torch.manual_seed(0)
    tv = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True).eval()
    x = torch.randn(1, 3, 32, 32)
    with engines.EngineSet(["onnxruntime", "openvino"], torch.float32, 1) as es, torch.no_grad():
        es.load(tv, x)
        assert es.errors["openvino"] == "openvino: ImportError: simulated broken openvino"
        out = es.outputs(x)
        assert set(out) == {"onnxruntime"}
        c = bench.compare_logits(out["onnxruntime"], tv(x))
        assert c["max_rel_err"] < 1e-4 and c["max_ref"] > 0
        ps = [bench.Provider("torchvision eager", tv)] + es.providers()
        results = {r.provider: r for r in bench.run_providers(ps, x, min_run_time=0.05, rounds=1, warmup=1,
                                                               show_progress=False)}
        assert results["openvino"].error.startswith("openvino: ImportError")
        for name in ("torchvision eager", "onnxruntime"):  # sane times, from the worker for onnxruntime
            assert results[name].error is None and results[name].times_s
            assert all(0 < t < 5 for t in results[name].times_s)

        es.workers["onnxruntime"]._proc.kill()  # the worker dies between rounds
        results = {r.provider: r for r in bench.run_providers(ps, x, min_run_time=0.05, rounds=1, warmup=1,
                                                               show_progress=False)}
        assert results["onnxruntime"].error.startswith("EngineError: onnxruntime worker exited with code -9")
        assert results["torchvision eager"].error is None and results["torchvision eager"].times_s
        rows = bench.rows_with_speedup(list(results.values()), "torchvision eager")
        table = bench.format_table(rows, "torchvision eager")
        assert "failed: EngineError: onnxruntime worker exited" in table


def test_worker_measurement_is_blocked_autorange():
    """The worker's timing loop (no torch there): per-call times of blocks of ``number`` calls,
    blocks until min_run_time is spent, as torch's Timer.blocked_autorange."""
    import time
    from googlenet_fast.engine_worker import blocked_autorange
    times = blocked_autorange(lambda: time.sleep(0.002), 0.05)
    assert len(times) >= 1 and all(0.002 <= t < 0.5 for t in times)
    assert len(blocked_autorange(lambda: None, 0.01)) >= 1
