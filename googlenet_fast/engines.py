"""The CPU inference engines as bench providers: ONNX Runtime and OpenVINO on the ONNX export.

Each engine runs in a worker process of its own (googlenet_fast/engine_worker.py, started as a
script): the engines' thread pools spin after each call and would steal cores from anything timed
in the same process.  The bench process exports the network once (:func:`export_for_engines`),
each worker loads the file once; then the worker answers the same requests as an in-process
provider: the warm-up calls, and timing rounds interleaved with the other providers' (each
round: the measurement of torch's Timer.blocked_autorange with the bench's min run time, inside
the worker, on an input sent once per batch size).  A worker that fails (import error, crash, timeout) fails its
own provider only.

Threads: every engine gets the bench's torch thread count (ONNX Runtime intra_op_num_threads with
one inter-op thread; OpenVINO INFERENCE_NUM_THREADS).  Precision: float32 runs both in f32
(OpenVINO's precision hint set to f32: its default on a CPU with bf16 instructions is bf16);
bfloat16 runs OpenVINO with INFERENCE_PRECISION_HINT bf16 on the float32 file, how OpenVINO users
run bf16; ONNX Runtime's CPU provider has no bfloat16 execution: its row is "n/a" with the reason.
"""
import importlib.util
import os
import subprocess
import sys
import tempfile
from multiprocessing import Pipe
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from .bench import Provider
from .onnx_export import INSTALL_HINT, export_onnx

ENGINES = ("onnxruntime", "openvino")
# The Python packages each engine provider needs (the export needs onnx and onnxscript).
PACKAGES = {"onnxruntime": ("onnxruntime", "onnx", "onnxscript"), "openvino": ("openvino", "onnx", "onnxscript")}
PRECISIONS = {torch.float32: "f32", torch.bfloat16: "bf16"}
# Engines that cannot run a precision at all: the reason, shown in the table's "n/a" row.
UNSUPPORTED = {("onnxruntime", torch.bfloat16):
               "ONNX Runtime's CPU execution provider has no bfloat16 execution (time it with --dtype float32)"}
WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "engine_worker.py")
LOAD_TIMEOUT_S = 600.0  # start-up imports and the engine's graph compilation
CALL_TIMEOUT_S = 300.0


class EngineUnavailableError(ImportError):
    """An engine's Python package is not installed (the message says what to install)."""


class EngineError(RuntimeError):
    """An engine worker failed: an error inside the engine, the process exited, or no answer."""


def missing_packages(engines: Sequence[str]) -> List[str]:
    """The packages that ``engines`` (names from ENGINES) need and this Python cannot import, in
    order, each once.  Looks for them without importing them (no engine threads start here).
    Raises ValueError for an unknown engine name."""
    missing = []
    for e in engines:
        if e not in PACKAGES:
            raise ValueError(f"engines: expected names from {ENGINES}, got {e!r}")
        for pkg in PACKAGES[e]:
            try:
                found = importlib.util.find_spec(pkg) is not None
            except (ImportError, ValueError):  # a broken or None entry in sys.modules
                found = False
            if not found and pkg not in missing:
                missing.append(pkg)
    return missing


def require(engines: Sequence[str]) -> None:
    """Raise EngineUnavailableError (one line: what is missing, how to install it) unless every
    package ``engines`` need is installed."""
    missing = missing_packages(engines)
    if missing:
        raise EngineUnavailableError(
            f"{', '.join(engines)} asked for but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
            f"not installed; install the engines with: {INSTALL_HINT}")


def _to_numpy(x: Tensor):
    return x.detach().to("cpu", torch.float32).contiguous().numpy()


class EngineWorker:
    """One engine in a process of its own, driven by requests (see engine_worker.py).

    ``EngineWorker(engine)`` starts the process (it imports while the caller exports the model);
    :meth:`load` then opens the ONNX file.  Every method raises :class:`EngineError` when the
    engine raised (the worker goes on), the process exited (its exit code and last stderr line
    in the message) or did not answer in time (the process is then killed).  Use as a context
    manager or call :meth:`close`.
    """

    def __init__(self, engine: str, log_dir: Optional[str] = None):
        if engine not in ENGINES:
            raise ValueError(f"engine: expected one of {ENGINES}, got {engine!r}")
        self.engine = engine
        self.description = ""
        self._log = tempfile.NamedTemporaryFile(mode="w+", prefix=f"{engine}-worker-", suffix=".log",
                                                dir=log_dir, delete=False)
        self._conn, child = Pipe()
        try:
            self._proc = subprocess.Popen([sys.executable, WORKER_SCRIPT, str(child.fileno())],
                                          pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
                                          stdout=self._log, stderr=self._log)
        finally:
            child.close()

    @property
    def pid(self) -> Optional[int]:
        """The worker's process id; None once closed."""
        return self._proc.pid if self._proc is not None else None

    def _request(self, msg: tuple, timeout: float = CALL_TIMEOUT_S):
        if self._proc is None:
            raise EngineError(f"{self.engine} worker: closed")
        try:
            self._conn.send(msg)
            if not self._conn.poll(timeout):
                self._kill()
                raise EngineError(f"{self.engine} worker did not answer {msg[0]!r} within {timeout:.0f} s")
            status, value = self._conn.recv()
        except (EOFError, OSError):
            raise EngineError(self._exit_message()) from None
        if status != "ok":
            raise EngineError(f"{self.engine}: {value}")
        return value

    def _exit_message(self) -> str:
        try:
            rc = self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._kill()
            rc = self._proc.returncode if self._proc is not None else None
        last = ""
        try:
            with open(self._log.name) as f:
                lines = [l.strip() for l in f if l.strip()]
            last = lines[-1] if lines else ""
        except OSError:
            pass
        return f"{self.engine} worker exited with code {rc}" + (f": {last}" if last else "")

    def load(self, onnx_path: str, threads: int, precision: str = "f32") -> str:
        """Open ``onnx_path`` with ``threads`` threads in ``precision`` ("f32", or "bf16" for
        OpenVINO); returns the session's description (engine version, threads, precision).
        ValueError for threads < 1 or another precision."""
        if int(threads) < 1:
            raise ValueError(f"threads: expected a positive integer, got {threads}")
        if precision not in PRECISIONS.values():
            raise ValueError(f"precision: expected one of {tuple(PRECISIONS.values())}, got {precision!r}")
        self.description = self._request(("load", self.engine, os.fspath(onnx_path), int(threads), precision),
                                         timeout=LOAD_TIMEOUT_S)
        return self.description

    def infer(self, x: Tensor) -> Tensor:
        """One call on ``x`` (N, 3, H, W) (sent as float32 NCHW): the (N, classes) float32 logits."""
        return torch.from_numpy(self._request(("infer", _to_numpy(x)), timeout=LOAD_TIMEOUT_S))

    def set_input(self, x: Tensor) -> None:
        """Send ``x`` once: the input of :meth:`call` and :meth:`measure` (OpenVINO compiles for
        its shape here)."""
        self._request(("input", _to_numpy(x)), timeout=LOAD_TIMEOUT_S)

    def call(self) -> None:
        """One call on the input set by :meth:`set_input` (a warm-up)."""
        self._request(("call",))

    def measure(self, min_run_time: float) -> List[float]:
        """Per-call seconds of the kept input, measured inside the worker as torch's
        Timer.blocked_autorange(min_run_time) measures in process (:func:`googlenet_fast.bench.measure`;
        see engine_worker.blocked_autorange)."""
        return self._request(("measure", float(min_run_time)), timeout=CALL_TIMEOUT_S + 20 * min_run_time)

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def close(self) -> None:
        """Ask the worker to exit (killed after 10 s) and remove its log."""
        if self._proc is None:
            return
        try:
            self._conn.send(("close",))
            self._proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self._kill()
        self._conn.close()
        self._proc = None
        self._log.close()
        try:
            os.unlink(self._log.name)
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class _WorkerCall:
    """The callable run_providers warms up (one call in the worker) and times in the worker."""

    def __init__(self, worker: EngineWorker):
        self.worker = worker

    def __call__(self, x: Tensor) -> None:
        self.worker.call()

    def measure_in_worker(self, min_run_time: float) -> List[float]:
        return self.worker.measure(min_run_time)


def export_for_engines(model: torch.nn.Module, example: Tensor, folder: str) -> str:
    """Export ``model`` (float32, eval) with torch.onnx's default exporter and a dynamic batch
    to ``folder``/googlenet.onnx at ``example``'s (N, 3, H, W) spatial size; returns the path."""
    return export_onnx(model, os.path.join(folder, "googlenet.onnx"), example.to(torch.float32))


class EngineSet:
    """The engine providers a bench run asked for: their workers, the ONNX file they load and
    the errors of those that failed.

    ``EngineSet(engines, dtype, threads)`` checks the packages (EngineUnavailableError) and
    starts a worker per engine that can run ``dtype`` (ValueError for a dtype outside
    PRECISIONS); :meth:`load` exports the model and opens it in every worker; :meth:`outputs`
    runs the check images; :meth:`providers` gives the bench's Provider objects.  A context
    manager: on exit the workers stop and the temporary folder is removed.
    """

    def __init__(self, engines: Sequence[str], dtype: torch.dtype, threads: int):
        if dtype not in PRECISIONS:
            raise ValueError(f"dtype: the engines run float32 or bfloat16, got {dtype}")
        if int(threads) < 1:
            raise ValueError(f"threads: expected a positive integer, got {threads}")
        require(engines)
        self.engines = list(dict.fromkeys(engines))
        self.dtype = dtype
        self.threads = int(threads)
        self.errors: Dict[str, str] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="googlenet-fast-engines-")
        self.workers: Dict[str, EngineWorker] = {}
        for e in self.engines:
            if (e, dtype) not in UNSUPPORTED:
                self.workers[e] = EngineWorker(e, log_dir=self._tmp.name)

    def load(self, model: torch.nn.Module, example: Tensor) -> str:
        """Export ``model`` (a float32 eval-mode copy of the network the torch providers run)
        at ``example``'s size and open the file in each worker; returns the file's path.
        An engine that fails to load is recorded in :attr:`errors`."""
        path = export_for_engines(model, example, self._tmp.name)
        for e, w in list(self.workers.items()):
            try:
                w.load(path, self.threads, PRECISIONS[self.dtype])
            except EngineError as err:
                self._fail(e, err)
        return path

    def _fail(self, engine: str, err: Exception) -> None:
        self.errors[engine] = str(err)
        w = self.workers.pop(engine, None)
        if w is not None:
            w.close()

    def outputs(self, x: Tensor) -> Dict[str, Tensor]:
        """{engine: logits of ``x``} for the loaded engines (a failing one goes to errors)."""
        out = {}
        for e, w in list(self.workers.items()):
            try:
                out[e] = w.infer(x)
            except EngineError as err:
                self._fail(e, err)
        return out

    def providers(self) -> List[Provider]:
        """One Provider per engine asked for, in the order asked: a worker's, or an "n/a" one
        (unsupported precision) or a failing one (its error) that run_providers reports."""
        ps = []
        for e in self.engines:
            if (e, self.dtype) in UNSUPPORTED:
                ps.append(Provider(e, None, unavailable=UNSUPPORTED[(e, self.dtype)]))
            elif e in self.workers:
                w = self.workers[e]

                def prepare(x, w=w):
                    w.set_input(x)
                    return _WorkerCall(w)
                ps.append(Provider(e, None, prepare=prepare, note=f"{e}: {w.description}, own process"))
            else:
                ps.append(Provider(e, None, failed=self.errors.get(e, "not loaded")))
        return ps

    def pids(self) -> List[int]:
        """The running workers' process ids (their CPU time is the bench's own, not contention)."""
        return [w.pid for w in self.workers.values() if w.pid is not None]

    def close(self) -> None:
        for w in self.workers.values():
            w.close()
        self.workers.clear()
        self._tmp.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
