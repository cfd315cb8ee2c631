"""One inference engine (ONNX Runtime or OpenVINO) in a process of its own, for the bench.

Started by :class:`googlenet_fast.engines.EngineWorker` as a script (``python engine_worker.py
FD``), not as a module of the package: it imports neither googlenet_fast nor its extension,
only the engine and numpy (not torch either: it starts in a fraction of a second).  Its own
process keeps the engine's thread pool (which spins after each call) away from everything timed
in the bench process.

Protocol: pickled tuples over the connection on file descriptor FD (a socket), one reply per
request, ``("ok", value)`` or ``("error", "Type: message")``; the worker goes on after an error:

    ("load", engine, onnx_path, threads, precision)  -> ("ok", description of the session)
    ("infer", x)      one call on x (float32 NCHW ndarray)      -> ("ok", logits ndarray)
    ("input", x)      keep x for "call"/"measure" (OpenVINO compiles for its shape) -> ("ok", None)
    ("call",)         one call on the kept input                -> ("ok", None)
    ("measure", s)    :func:`blocked_autorange` of a call on the kept input, min_run_time s: the
                      measurement of the bench's in-process providers -> ("ok", per-call seconds)
    ("close",)        exit
"""
import os
import sys

if __name__ == "__main__":  # the package's folder is not a place to import from (data.py, ops.py, ...)
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

import statistics  # noqa: E402
import timeit  # noqa: E402
import traceback  # noqa: E402
from multiprocessing.connection import Connection  # noqa: E402
from typing import List  # noqa: E402


class _OnnxRuntime:
    def __init__(self, path, threads, precision):
        import onnxruntime as ort
        if precision != "f32":
            raise ValueError(f"precision: ONNX Runtime's CPU provider runs f32 here, got {precision!r}")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.description = (f"ONNX Runtime {ort.__version__} CPUExecutionProvider, {threads} intra-op threads, "
                            "graph optimizations all")

    def runner(self, x):
        session, feed = self.session, {self.input_name: x}
        return lambda: session.run(None, feed)[0]


class _OpenVINO:
    def __init__(self, path, threads, precision):
        import openvino as ov
        self.core = ov.Core()
        self.model = self.core.read_model(path)
        # The precision is set explicitly: on a CPU with bf16 instructions OpenVINO's default is bf16.
        self.config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision,
                       "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = {}
        self.description = (f"OpenVINO {ov.__version__.split('-')[0]} CPU, INFERENCE_NUM_THREADS {threads}, "
                            f"INFERENCE_PRECISION_HINT {precision}, LATENCY hint, compiled per input shape")

    def runner(self, x):
        shape = tuple(x.shape)
        if shape not in self.compiled:  # static shapes, as deployed: one compiled model per shape
            model = self.model.clone()
            model.reshape({0: list(shape)})
            self.compiled[shape] = self.core.compile_model(model, "CPU", self.config).create_infer_request()
        request = self.compiled[shape]
        return lambda: request.infer({0: x})[0]


ENGINES = {"onnxruntime": _OnnxRuntime, "openvino": _OpenVINO}


def blocked_autorange(fn, min_run_time: float) -> List[float]:
    """Per-call seconds of ``fn()``, measured as torch.utils.benchmark.Timer.blocked_autorange
    measures a Python statement on the CPU (what the bench's in-process providers get), without
    importing torch (seconds of start-up per worker): timeit's timer (perf_counter, garbage
    collection off while timing); the block size ``number`` grows tenfold from 1 until the
    timer's overhead (median of five empty timings) is at most 1e-4 of a block and a block takes
    at least min_run_time / 1000, or a block takes over min_run_time; then blocks run until their
    total reaches min_run_time (at least one).  Returns each block's time / number."""
    timer = timeit.Timer(fn)
    overhead = statistics.median(timer.timeit(0) for _ in range(5))
    number = 1
    while True:
        taken = timer.timeit(number)
        if taken > 0 and overhead / taken <= 1e-4 and taken >= min_run_time / 1000:
            break
        if taken > min_run_time or number * 10 > 2147483647:
            break
        number *= 10
    times, total = [], 0.0
    while not times or total < min_run_time:
        spent = timer.timeit(number)
        times.append(spent / number)
        total += spent
    return times


def serve(conn) -> None:
    engine = run = None
    while True:
        try:
            msg = conn.recv()
        except EOFError:  # the bench is gone
            return
        op = msg[0]
        if op == "close":
            return
        try:
            if op == "load":
                _, name, path, threads, precision = msg
                engine = ENGINES[name](path, threads, precision)
                reply = engine.description
            elif engine is None:
                raise RuntimeError(f"{op}: no engine loaded")
            elif op == "infer":
                import numpy as np
                reply = np.array(engine.runner(msg[1])())
            elif op == "input":
                run = engine.runner(msg[1])
                reply = None
            elif run is None:
                raise RuntimeError(f"{op}: no input set")
            elif op == "call":
                run()
                reply = None
            elif op == "measure":
                reply = blocked_autorange(run, msg[1])
            else:
                raise ValueError(f"unknown request {op!r}")
        except Exception as e:  # reported to the bench, which goes on without this engine
            traceback.print_exc(file=sys.stderr)
            conn.send(("error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
            continue
        conn.send(("ok", reply))


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1])))
