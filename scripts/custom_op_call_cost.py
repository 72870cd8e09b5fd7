"""What one custom-op node costs ORT on the CPU, against one of its own: chains of 1 and 201 tiny nodes (ORT's
``Add`` on int32 [1, 8], edgeq's ``DIAdd`` on int8 codes [1, 8] with their scales, ``DIMatMul`` of those codes by a
constant 8 x 8 int8 matrix), 2,000 runs each at two intra-op
threads, graph optimizations off; the per-node cost is the difference of the two chains over 200.

    python scripts/custom_op_call_cost.py
"""

import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from edgeq.custom_ops.library import get_library
from edgeq.custom_ops.schema import opset_import

WIDTH, RUNS = 8, 2000


def chain(n: int, op: str):
    """A graph of n ``op`` nodes, each reading the previous one's output and the graph input; with its feeds."""
    if op == "Add":
        x = [helper.make_tensor_value_info("x", TP.INT32, [1, WIDTH])]
        nodes = [helper.make_node("Add", ["x" if i == 0 else f"y{i - 1}", "x"], [f"y{i}"]) for i in range(n)]
        feeds, code = {"x": np.ones((1, WIDTH), np.int32)}, TP.INT32
    elif op == "DIMatMul":  # WIDTH x WIDTH int8 weights, constant
        x = [helper.make_tensor_value_info("x", TP.INT8, [1, WIDTH]), helper.make_tensor_value_info("xm", TP.INT32, [1, 1]),
             helper.make_tensor_value_info("xe", TP.INT8, [1, 1])]
        prev = lambda i: ["x", "xm", "xe"] if i == 0 else [f"y{i - 1}", f"ym{i - 1}", f"ye{i - 1}"]  # noqa: E731
        nodes = [helper.make_node("DIMatMul", [*prev(i), "W", "wm", "we"], [f"y{i}", f"ym{i}", f"ye{i}"], domain="edgeq",
                                  K=WIDTH, N=WIDTH, abits=8, wbits=8, obits=8) for i in range(n)]
        feeds = {"x": np.ones((1, WIDTH), np.int8), "xm": np.full((1, 1), 1 << 14, np.int32),
                 "xe": np.full((1, 1), 10, np.int8)}
        code = TP.INT8
    else:
        x = [helper.make_tensor_value_info("x", TP.INT8, [1, WIDTH]), helper.make_tensor_value_info("xm", TP.INT32, [1, 1]),
             helper.make_tensor_value_info("xe", TP.INT8, [1, 1])]
        prev = lambda i: ["x", "xm", "xe"] if i == 0 else [f"y{i - 1}", f"ym{i - 1}", f"ye{i - 1}"]  # noqa: E731
        nodes = [helper.make_node("DIAdd", [*prev(i), "x", "xm", "xe"], [f"y{i}", f"ym{i}", f"ye{i}"], domain="edgeq",
                                  obits=8) for i in range(n)]
        feeds = {"x": np.ones((1, WIDTH), np.int8), "xm": np.full((1, 1), 1 << 14, np.int32),
                 "xe": np.full((1, 1), 10, np.int8)}
        code = TP.INT8
    typed = [helper.make_tensor_value_info(f"y{i}", code, [1, WIDTH]) for i in range(n - 1)]
    weights = [numpy_helper.from_array(np.eye(WIDTH, dtype=np.int8), "W"),
               numpy_helper.from_array(np.full(WIDTH, 1 << 14, np.int32), "wm"),
               numpy_helper.from_array(np.full(WIDTH, 14, np.int8), "we")] if op == "DIMatMul" else []
    graph = helper.make_graph(nodes, "chain", x, [helper.make_tensor_value_info(f"y{n - 1}", code, [1, WIDTH])],
                              value_info=typed, initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), opset_import()], ir_version=9)
    return model, feeds


def us_per_run(n: int, op: str, library) -> float:
    model, feeds = chain(n, op)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.register_custom_ops_library(str(library))
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    for _ in range(200):
        session.run(None, feeds)
    start = time.perf_counter()
    for _ in range(RUNS):
        session.run(None, feeds)
    return (time.perf_counter() - start) / RUNS * 1e6


def main():
    library = get_library("cpu")
    print("| op | 1 node µs/run | 201 nodes µs/run | µs per node |\n|---|---:|---:|---:|")
    for op in ("Add", "DIAdd", "DIMatMul"):
        one, many = us_per_run(1, op, library), us_per_run(201, op, library)
        print(f"| {op} | {one:.1f} | {many:.1f} | {(many - one) / 200:.2f} |")


if __name__ == "__main__":
    main()
