"""benchmarks/device_check.sh's logic on a machine without a GPU (DRY_RUN=1): every stage it is
asked for runs, writes its files and is recorded; a stage cut short by its limit keeps what it
wrote; results come back as two files (summary.txt, results.tgz), within the device tool's
limits.  (The build stage is left out here: the suite runs on the installed package; `DRY_RUN=1
bash benchmarks/device_check.sh` builds too.)"""
import json
import os
import subprocess
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "device_check.sh")


def _run(tmp_path, stages, **env):
    results, out = tmp_path / "results", tmp_path / "out"
    e = dict(os.environ, DRY_RUN="1", RESULTS_DIR=str(results), OUT=str(out), STAGES=stages,
             DEADLINE=str(env.pop("DEADLINE", 400)), **{k: str(v) for k, v in env.items()})
    e.pop("TRITON_INTERPRET", None)
    p = subprocess.run(["bash", SCRIPT], cwd=ROOT, env=e, capture_output=True, text=True, timeout=600)
    return p, results, out


@pytest.mark.slow
def test_dry_run_walks_every_stage(tmp_path):
    p, results, out = _run(tmp_path, "smoke,tests,tables,tests-late,report,sanitizer")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    summary = (results / "summary.txt").read_text()
    for stage in ("env", "smoke", "tests", "tables", "tests-late", "report", "sanitizer"):
        assert f"--- {stage}: ok" in summary, summary
    smoke = json.loads((results / "smoke.json").read_text())
    assert set(smoke["items"]) == {"ceilings", "network", "pooled", "graph", "kernels", "host", "choices"}
    assert not smoke["errors"], smoke["errors"]
    tables = json.loads((results / "gpu_blocks.json").read_text())
    assert tables["blocks"] and tables["network"]
    assert (results / "report.json").exists() and (results / "tests.xml").exists()
    # what comes back: two files, within the tool's limits (8 files, 16 MiB each)
    back = sorted(os.listdir(out))
    assert back == ["results.tgz", "summary.txt"], back
    assert all(os.path.getsize(out / f) < 16 << 20 for f in back)
    with tarfile.open(out / "results.tgz") as t:
        names = {os.path.basename(n) for n in t.getnames()}
    assert {"summary.txt", "env.txt", "smoke.json", "gpu_blocks.json", "tests.log", "report.json"} <= names


@pytest.mark.slow
def test_stage_cut_short_keeps_its_results(tmp_path):
    """A smoke stage interrupted by its limit (SIGINT): the JSON holds what was measured, the
    summary says CUT SHORT, and the next stage still runs."""
    p, results, out = _run(tmp_path, "smoke,tests", SMOKE_TIMEOUT=22)
    summary = (results / "summary.txt").read_text()
    assert "--- smoke: CUT SHORT" in summary or "--- smoke: ok" in summary, summary
    smoke = json.loads((results / "smoke.json").read_text())
    assert "ceilings" in smoke["items"]  # the first item finished before the cut
    assert set(smoke["items"]) | set(smoke["skipped"]) | set(smoke["errors"]) <= {
        "ceilings", "network", "pooled", "graph", "kernels", "host", "choices"}
    assert "--- tests: ok" in summary, summary
    assert (out / "results.tgz").exists()


def test_deadline_skips_stages_and_says_so(tmp_path):
    """Past the overall deadline a stage is not started: recorded as SKIPPED, exit 0."""
    p, results, out = _run(tmp_path, "smoke,tables,report", DEADLINE=10)
    summary = (results / "summary.txt").read_text()
    assert "--- smoke: SKIPPED (deadline)" in summary and "--- report: SKIPPED (deadline)" in summary, summary
    assert p.returncode == 0
    assert (out / "summary.txt").read_text() == summary


def test_unknown_stage_is_a_clear_error(tmp_path):
    p, results, out = _run(tmp_path, "smoke,bogus")
    assert p.returncode == 2
    assert "STAGES: unknown stage 'bogus'" in p.stderr and "tests-late" in p.stderr


def test_failed_stage_shows_its_reason_in_the_summary(tmp_path):
    """Without DRY_RUN on a machine without a GPU the smoke stage fails: the summary carries the
    log's last lines (the reason), not only the exit status."""
    e = dict(os.environ, RESULTS_DIR=str(tmp_path / "r"), OUT=str(tmp_path / "o"), STAGES="smoke")
    e.pop("DRY_RUN", None)
    p = subprocess.run(["bash", SCRIPT], cwd=ROOT, env=e, capture_output=True, text=True, timeout=300)
    summary = (tmp_path / "r" / "summary.txt").read_text()
    assert p.returncode == 1
    assert "--- smoke: FAILED (rc=2)" in summary and "no CUDA device visible" in summary, summary
