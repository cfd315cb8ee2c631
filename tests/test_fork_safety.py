"""A forked child runs the fused CPU model even when another parent thread held the extension's
cache locks at the moment of fork (csrc/cpu/fork_safety.cpp: the child starts new caches).

Found by a stress test (2026-12-06): children forked while other threads ran forwards hung on the
packed-weight cache's mutex, held mid-pack by a thread that does not exist in the child.  Here a
parent thread holds both caches' locks (the packed weights' and the direct oneDNN path's
primitives') across the fork; the child folds, packs and creates primitives anew (one OpenMP
thread: libgomp's own pool does not survive fork, docs/api.md)."""
import os
import signal
import threading
import time
import warnings

import pytest
import torch

from googlenet_fast.backends import native
from model_helpers import make_input, ours_from, rel_err, tv_model

pytestmark = [
    pytest.mark.skipif(not native.available(), reason=f"extension not built: {native.LOAD_ERROR}"),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform"),
]

CHILD_TIMEOUT_S = 60


def _run_in_child(fn) -> str:
    """fn() in a forked child; its returned text, or a test failure when the child hangs."""
    r, w = os.pipe()
    with warnings.catch_warnings():  # (Python 3.12: "this process is multi-threaded, fork() may deadlock")
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's cleanup
        code = 0
        try:
            os.close(r)
            os.write(w, fn().encode())
        except BaseException as e:  # noqa: BLE001 (reported to the parent)
            os.write(w, f"child raised {type(e).__name__}: {e}".encode())
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            pytest.fail(f"the forked child hung for {CHILD_TIMEOUT_S} s (a lock held at fork?)")
        time.sleep(0.02)
    with os.fdopen(r, "rb") as f:
        return f.read().decode()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_child_forward_while_a_parent_thread_holds_the_cache_locks(dtype):
    tv = tv_model()
    m = ours_from(tv).to(dtype)
    x = make_input(2, 3, 64, 64).to(dtype)
    with torch.no_grad():
        ref = tv(x.float())
        m(x)  # the parent's caches are warm: folds, packed weights, primitives
    assert native._C._prepacked_weight_count() > 0
    holder = threading.Thread(target=native._C._hold_cache_locks_for_test, args=(3000,))
    holder.start()
    time.sleep(0.3)  # the holder has both locks now

    def child():
        torch.set_num_threads(1)
        m.clear_folded_cache()  # new folds: every weight is packed again, under the cache's lock
        with torch.no_grad():
            y = m(x)
        return f"{rel_err(y.float(), ref):.3e} {native._C._prepacked_weight_count()}"

    try:
        got = _run_in_child(child)
    finally:
        holder.join()
    assert not got.startswith("child raised"), got
    err, packed = got.split()
    assert float(err) <= (1e-4 if dtype == torch.float32 else 3e-2), got
    assert int(packed) > 0  # the child's own new cache packed the weights


def test_hold_cache_locks_rejects_bad_durations():
    with pytest.raises(ValueError, match="ms: expected 0 to 60000"):
        native._C._hold_cache_locks_for_test(-1)
    with pytest.raises(TypeError):
        native._C._hold_cache_locks_for_test("1")
