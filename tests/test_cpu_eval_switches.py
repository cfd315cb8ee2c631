"""benchmarks/cpu_eval_switches.py: the fused CPU eval forward timed across thread-count and
autocast switches in one process."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from googlenet_fast.backends import native

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import cpu_eval_switches  # noqa: E402

pytestmark = pytest.mark.skipif(not native.available(), reason=f"extension not built: {native.LOAD_ERROR}")


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_threads_prints_a_time_per_count(capsys, restore_threads):
    cpu_eval_switches.main(["threads", "--threads", "1", "2", "--forwards", "1", "--dtype", "float32"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# threads: float32 model, batch 1, median of 1 forwards")
    times = re.findall(r"(\d+) threads (\d+\.\d+) ms", out[1])
    assert [t for t, _ in times] == ["1", "2"] and all(float(ms) > 0 for _, ms in times)


def test_autocast_prints_the_four_phases(capsys):
    cpu_eval_switches.main(["autocast", "--forwards", "1"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# autocast: float32 model, batch 1")
    labels = [lab for lab, _ in re.findall(r"([a-z0-9: ]+?) (\d+\.\d+) ms", out[1].replace(", ", ","))]
    assert labels == ["float32 only", "bf16 autocast only", "alternating: float32", "alternating: bf16 autocast"]


def test_batches_prints_each_size_alone_and_cycling(capsys):
    cpu_eval_switches.main(["batches", "--batches", "1", "2", "--forwards", "1", "--dtype", "float32"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# batches: float32 model, batches 1 2, median of 1 forwards")
    labels = [lab for lab, _ in re.findall(r"(batch \d \w+) (\d+\.\d+) ms", out[1])]
    assert labels == ["batch 1 alone", "batch 2 alone", "batch 1 cycling", "batch 2 cycling"]
    assert re.fullmatch(r"prepacked-weight cache: \d+ keys, \d+ packed tensors", out[2])


def test_grad_prints_the_four_calls(capsys):
    cpu_eval_switches.main(["grad", "--forwards", "1"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# grad: float32 model, batch 1")
    labels = [lab for lab, _ in re.findall(r"((?:fused|torchvision) [a-z_ ]+?) (\d+\.\d+) ms", out[1])]
    assert labels == ["fused no_grad", "fused grad enabled", "torchvision no_grad", "torchvision grad enabled"]


def test_contention_starts_and_stops_its_hogs(capsys):
    cpu_eval_switches.main(["contention", "--hogs", "1", "--forwards", "1", "--dtype", "float32"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# contention: float32 model, batch 1, 1 busy-loop processes")
    labels = [lab for lab, _ in re.findall(r"((?:fused|torchvision) (?:median|worst)) (\d+\.\d+) ms", out[1])]
    assert labels == ["fused median", "fused worst", "torchvision median", "torchvision worst"]
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "os.getppid() == parent" not in ps  # killed


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_contention_hogs_end_with_a_killed_parent():
    """SIGTERM / SIGKILL of the script run no finally: the busy loops must end on their own."""
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                               "sys.path.insert(0, sys.argv[1])\nimport cpu_eval_switches as c\n"
                               "p = subprocess.Popen(c.hog_command())\nprint(p.pid, flush=True)\n"
                               "time.sleep(60)\n", os.path.join(ROOT, "benchmarks")], stdout=subprocess.PIPE, text=True)
    hog = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    for _ in range(100):  # the hog notices within a round of spinning
        try:
            with open(f"/proc/{hog}/status") as f:
                if any(line.startswith("State:") and "Z" in line.split()[1] for line in f):
                    return  # ended; a zombie until something reaps it
        except FileNotFoundError:
            return
        time.sleep(0.05)
    os.kill(hog, signal.SIGKILL)
    raise AssertionError("the busy loop outlived its parent")


def test_hog_of_a_parent_already_gone_ends_at_once():
    """A parent killed before the hog's interpreter started: the hog, handed the parent's pid,
    sees another parent and ends (it once read its parent at start and spun on)."""
    cmd = cpu_eval_switches.hog_command()
    cmd[-1] = str(2 ** 22 + 1)  # above Linux's default pid_max: no process has this pid
    assert subprocess.run(cmd, timeout=60).returncode == 0


@pytest.mark.parametrize("args,message", [
    (["threads", "--threads", "0"], "--threads and --batches value must be >= 1"),
    (["threads", "--threads", "100000"], "--threads: at most"),
    (["contention", "--hogs", "-1"], "--hogs must be >= 0"),
])
def test_bad_arguments_are_usage_errors(capsys, args, message):
    with pytest.raises(SystemExit) as e:
        cpu_eval_switches.main(args)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_a_failed_run_is_an_error_message_not_a_traceback(capsys, monkeypatch):
    def no_memory(a):
        raise RuntimeError("DefaultCPUAllocator: not enough memory")

    monkeypatch.setattr(cpu_eval_switches, "run", no_memory)
    with pytest.raises(SystemExit) as e:
        cpu_eval_switches.main(["threads", "--batch", "100000"])
    assert e.value.code == 1
    assert capsys.readouterr().err == "cpu_eval_switches: error: DefaultCPUAllocator: not enough memory\n"
