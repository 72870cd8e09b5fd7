"""Shared by the pass tests: build graphs, apply a pass, list op types, run in ONNX Runtime."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgeq.exporter.llama_graph import BITS_KEY, pack_uint4
from edgeq.passes.pipeline import infer_shapes


def from_text(text: str) -> ir.Model:
    """An IR model from ONNX text, typed by shape inference (the rules read shapes and dtypes)."""
    model = ir.from_proto(onnx.parser.parse_model(text))
    infer_shapes(model, "test graph")
    return model


def from_proto(proto: onnx.ModelProto) -> ir.Model:
    model = ir.from_proto(proto)
    infer_shapes(model, "test graph")
    return model


def ops(model: ir.Model | onnx.ModelProto) -> Counter:
    nodes = model.graph.node if isinstance(model, onnx.ModelProto) else model.graph
    return Counter(n.op_type for n in nodes)


def session(model: ir.Model | onnx.ModelProto) -> ort.InferenceSession:
    proto = ir.to_proto(model) if isinstance(model, ir.Model) else model
    opts = ort.SessionOptions()
    # ORT would otherwise fuse DQ+MatMul itself with int8 activations: the reference must stay exact.
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    if any(n.domain == "edgeq" for n in proto.graph.node):
        from edgeq.custom_ops.library import get_library

        opts.register_custom_ops_library(str(get_library("cpu")))
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run(model, feeds: dict) -> list[np.ndarray]:
    return session(model).run(None, feeds)


def quantized_linear_graph(K: int, N: int, bits: int, group: int, *, rng: np.random.Generator,
                           dtype=np.float32, perm: bool = False, batch: tuple = (2, 3), zeros: bool = True,
                           shared: bool = False):
    """The exporter's quantized linear: [Gather(x, perm)] -> MatMul(x, DequantizeLinear(codes, scales, zeros)).

    Returns (model proto, W [N, K] float64 as DQ computes it in the original column order).
    """
    G = math.ceil(K / group)
    codes = rng.integers(0, 2**bits, (K, N)).astype(np.uint8)
    zero = rng.integers(0, 2**bits, (G, N)).astype(np.uint8) if zeros else np.zeros((G, N), np.uint8)
    scales = (rng.random((G, N)) * 0.02 + 0.005).astype(dtype)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [numpy_helper.from_array(scales, "w.scales")]
    if bits == 4:
        inits.append(helper.make_tensor("w.codes", TensorProto.UINT4, codes.shape, pack_uint4(codes), raw=True))
        if zeros:
            inits.append(helper.make_tensor("w.zeros", TensorProto.UINT4, zero.shape, pack_uint4(zero), raw=True))
    else:
        inits.append(numpy_helper.from_array(codes, "w.codes"))
        if zeros:
            inits.append(numpy_helper.from_array(zero, "w.zeros"))
    nodes, x = [], "x"
    if perm:
        order = rng.permutation(K).astype(np.int64)
        inits.append(numpy_helper.from_array(order, "w.perm"))
        nodes.append(helper.make_node("Gather", ["x", "w.perm"], ["x_perm"], name="w/Gather", axis=-1))
        x = "x_perm"
    dq = helper.make_node("DequantizeLinear", ["w.codes", "w.scales"] + (["w.zeros"] if zeros else []), ["w"],
                          name="w/DequantizeLinear", axis=0, block_size=group)
    if bits not in (4, 8):
        helper.set_metadata_props(dq, {BITS_KEY: str(bits)})
    nodes += [dq, helper.make_node("MatMul", [x, "w"], ["y"], name="w/MatMul")]
    outputs = [helper.make_tensor_value_info("y", elem, [*batch, N])]
    if shared:
        nodes.append(helper.make_node("MatMul", [x, "w"], ["y2"], name="w/MatMul2"))
        outputs.append(helper.make_tensor_value_info("y2", elem, [*batch, N]))
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", elem, [*batch, K])], outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    proto.ir_version = 10
    group_of_k = np.arange(K) // group
    W = ((codes.astype(np.float64) - zero[group_of_k]) * scales.astype(np.float64)[group_of_k]).T  # [N, K]
    if perm:
        full = np.empty_like(W)
        full[:, order] = W
        W = full
    return proto, W
