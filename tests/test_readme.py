"""README.md is what users run: its API example runs and asserts what it claims, its test command
is the one CI runs, and it stays within the size the project allows (20,000 characters)."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()


def test_api_example_runs():
    """The first python block: the fused model against torchvision on calibrated BatchNorm
    statistics (its assertions would fail on a wrong fused model or on vanishing features)."""
    block = re.findall(r"```python\n(.*?)```", README, re.S)[0]
    p = subprocess.run([sys.executable, "-c", block], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]


def test_test_command_is_what_ci_runs():
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    command = ci.strip().splitlines()[-1]
    assert f"```\n{command}\n```" in README


def test_size_and_links():
    assert len(README) <= 20000, len(README)
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if "://" not in target:
            assert os.path.exists(os.path.join(ROOT, target)), f"README links to a missing file: {target}"
