"""The CPU training kernels' portable loops (what CPUs without AVX-512BW run, and what runs here
with GOOGLENET_FAST_PORTABLE_LOOPS set): the max pool and BatchNorm + ReLU backward parity checks
of test_pool_train.py and test_bn_train.py, run again in a process where the variable is set.
On an AVX-512BW CPU the in-process runs of those files check the vectorized loops
(csrc/cpu/avx512_lanes.h, max_pool_tap_avx512.h, bn_relu_train_cpu.cpp)."""
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_parity_checks_with_the_portable_loops():
    env = dict(os.environ, GOOGLENET_FAST_PORTABLE_LOOPS="1")
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         os.path.join(HERE, "test_pool_train.py"), os.path.join(HERE, "test_bn_train.py"),
         "-k", "match_aten or matches_aten or channel_groups or minus_zero or bn_relu_backward"],
        env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # every selected test ran: pool forward and backward (9 windows x 3 dtypes each), channel groups,
    # -0 accumulation; BatchNorm + ReLU backward vs ATen (3 dtypes x 2 channel counts), its argument
    # errors, its opcheck, thread-count independence (3 shapes x 2 dtypes)
    assert re.search(r"^70 passed", r.stdout, re.M), r.stdout[-500:]
