"""DIMatMul at decode (one token) on the CPU, one intra-op thread against two: for each LLaMA-style projection shape of
SmolLM2 (K x N), a chain of L nodes with their own constant int8 weights (together beyond this VM's 32 MB L3, so the
weights stream from DRAM as in a decode step), all reading one activation; prints µs per node and the weight GB/s
(BENCHMARKS.md, CPU decode of the integer graph, stop 22).

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
from custom_ops.integer_problems import activation, channel_scales
from edgeq.custom_ops.library import get_library
from edgeq.custom_ops.schema import opset_import
rng = np.random.default_rng(0)
lib = os.fspath(get_library("cpu"))
for K, N, L in [(576, 192, 200), (576, 576, 100), (576, 1536, 50), (1536, 576, 50)]:
    x = activation(rng, (1, K))
    nodes, inits, outs = [], [], []
    for i in range(L):
        W = rng.integers(-127, 128, (N, K)).astype(np.int8); wm, we = channel_scales(rng, N)
        inits += [numpy_helper.from_array(W, f"W{i}"), numpy_helper.from_array(wm, f"m{i}"), numpy_helper.from_array(we, f"e{i}")]
        nodes.append(helper.make_node("DIMatMul", ["X", "x_m", "x_e", f"W{i}", f"m{i}", f"e{i}"], [f"Y{i}", f"Ym{i}", f"Ye{i}"], domain="edgeq", K=K, N=N, abits=8, wbits=8, obits=8))
        outs += [helper.make_tensor_value_info(f"Y{i}", onnx.TensorProto.INT8, None), helper.make_empty_tensor_value_info(f"Ym{i}"), helper.make_empty_tensor_value_info(f"Ye{i}")]
    ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape)) for n, a in zip(["X", "x_m", "x_e"], x)]
    m = helper.make_model(helper.make_graph(nodes, "c", ins, outs, initializer=inits), opset_imports=[helper.make_opsetid("", 17), opset_import()], ir_version=9)
    res = {}
    sessions = {}
    for t in (1, 2):
        o = ort.SessionOptions(); o.intra_op_num_threads = t; o.register_custom_ops_library(lib)
        sessions[t] = ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])
    feeds = dict(zip(["X", "x_m", "x_e"], x)); on = [o.name for o in sessions[1].get_outputs()]
    ts = {1: [], 2: []}
    for r in range(7):
        for t, s in sessions.items():
            s._sess.run(on, feeds, None)
            t0 = time.perf_counter()
            for _ in range(5): s._sess.run(on, feeds, None)
            ts[t].append((time.perf_counter() - t0) / 5 / L * 1e6)
    mb = N * K / 1e3
    print(f"K={K} N={N} x{L} ({mb*L/1e3:.0f} MB): us/node 1 thread {np.median(ts[1]):.1f} ({mb/np.median(ts[1]):.1f} GB/s), 2 threads {np.median(ts[2]):.1f} ({mb/np.median(ts[2]):.1f} GB/s)")
