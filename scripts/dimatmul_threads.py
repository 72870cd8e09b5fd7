"""DIMatMul at decode (one token) on the CPU, one intra-op thread against two: for each projection shape of SmolLM2
(K x N), a chain of L nodes with their own constant int8 weights (together beyond this VM's 32 MB L3, so the weights
stream from DRAM as in a decode step), all reading one activation; prints µs per node and the weight GB/s
(BENCHMARKS.md, CPU decode of the integer graph, stop 22). Sessions run through ORT's binding directly, leaving out
the Python wrapper's feed checks.

    python scripts/dimatmul_threads.py
"""

import os
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from custom_ops.integer_problems import activation, channel_scales  # noqa: E402

from edgeq.custom_ops.library import get_library  # noqa: E402
from edgeq.custom_ops.schema import opset_import  # noqa: E402

SHAPES = [(576, 192, 200), (576, 576, 100), (576, 768, 80), (576, 1536, 50), (576, 3072, 25), (1536, 576, 50)]  # K, N, nodes (768: q|k, 3072: gate|up)
ROUNDS, RUNS = 7, 5


def chain(rng, x, K: int, N: int, L: int) -> onnx.ModelProto:
    nodes, inits, outs = [], [], []
    for i in range(L):
        W = rng.integers(-127, 128, (N, K)).astype(np.int8)
        wm, we = channel_scales(rng, N)
        inits += [numpy_helper.from_array(a, f"{name}{i}") for a, name in ((W, "W"), (wm, "m"), (we, "e"))]
        nodes.append(helper.make_node("DIMatMul", ["X", "x_m", "x_e", f"W{i}", f"m{i}", f"e{i}"],
                                      [f"Y{i}", f"Ym{i}", f"Ye{i}"], domain="edgeq", K=K, N=N, abits=8, wbits=8,
                                      obits=8))
        outs += [helper.make_tensor_value_info(f"Y{i}", onnx.TensorProto.INT8, None),
                 helper.make_empty_tensor_value_info(f"Ym{i}"), helper.make_empty_tensor_value_info(f"Ye{i}")]
    ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))
           for n, a in zip(["X", "x_m", "x_e"], x)]
    graph = helper.make_graph(nodes, "chain", ins, outs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), opset_import()], ir_version=9)


def main() -> None:
    rng = np.random.default_rng(0)
    library = os.fspath(get_library("cpu"))
    for K, N, L in SHAPES:
        x = activation(rng, (1, K))
        blob = chain(rng, x, K, N, L).SerializeToString()
        sessions = {}
        for threads in (1, 2):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.register_custom_ops_library(library)
            sessions[threads] = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
        feeds = dict(zip(["X", "x_m", "x_e"], x))
        names = [o.name for o in sessions[1].get_outputs()]
        times = {t: [] for t in sessions}
        for _ in range(ROUNDS):  # interleaved, so both thread counts see the same phases of the VM
            for t, s in sessions.items():
                s._sess.run(names, feeds, None)
                t0 = time.perf_counter()
                for _ in range(RUNS):
                    s._sess.run(names, feeds, None)
                times[t].append((time.perf_counter() - t0) / RUNS / L * 1e6)
        kb = N * K / 1e3
        us = {t: float(np.median(v)) for t, v in times.items()}
        print(f"K={K} N={N} x{L} ({kb * L / 1e3:.0f} MB): us/node 1 thread {us[1]:.1f} ({kb / us[1]:.1f} GB/s), "
              f"2 threads {us[2]:.1f} ({kb / us[2]:.1f} GB/s)")


if __name__ == "__main__":
    main()
