"""Helpers for the op-library tests: one-node models of edgeq ops, random GroupQuantMatMul problems, sessions."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgeq.custom_ops  # noqa: F401  (registers the edgeq schemas with onnx)
from edgeq.custom_ops.packing import pack_codes
from edgeq.custom_ops.schema import GROUP_QUANT_MATMUL, opset_import

ONNX_TYPE = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16}


@dataclasses.dataclass
class Problem:
    """One GroupQuantMatMul call: inputs, attributes, and how A is fed."""

    A: np.ndarray
    B: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    K: int
    N: int
    bits: int
    group_size: int

    @property
    def attrs(self) -> dict:
        return dict(K=self.K, N=self.N, bits=self.bits, group_size=self.group_size)


def random_problem(rng: np.random.Generator, lead: tuple[int, ...], K: int, N: int, bits: int, group_size: int,
                   dtype=np.float32, with_zero_points: bool = True) -> Problem:
    codes = rng.integers(0, 2**bits, (N, K), dtype=np.uint8)
    B = pack_codes(codes, bits, group_size)
    n_groups = B.shape[1]
    # Scales of mixed sign and magnitude, as real quantizers produce; never zero, so every code matters.
    scales = (rng.uniform(0.5, 2.0, (N, n_groups)) * rng.choice([-1, 1], (N, n_groups)) * 0.05).astype(dtype)
    zero_points = rng.integers(0, 2**bits, (N, n_groups), dtype=np.uint8) if with_zero_points else None
    A = rng.standard_normal((*lead, K)).astype(dtype)
    return Problem(A, B, scales, zero_points, K, N, bits, group_size)


def gqmm_model(p: Problem, *, a_shape=None, weights_as_inputs: bool = False, **attr_overrides) -> onnx.ModelProto:
    """A one-node model. Weights are initializers unless weights_as_inputs (then every tensor is a graph input)."""
    elem = ONNX_TYPE[p.A.dtype]
    attrs = {**p.attrs, **attr_overrides}
    names = ["A", "B", "scales"] + (["zero_points"] if p.zero_points is not None else [])
    node = helper.make_node(GROUP_QUANT_MATMUL.name, names, ["Y"], domain="edgeq", name="gqmm0", **attrs)
    a_shape = list(p.A.shape[:-1]) + [p.A.shape[-1]] if a_shape is None else a_shape
    inputs = [helper.make_tensor_value_info("A", elem, a_shape)]
    arrays = {"B": p.B, "scales": p.scales, "zero_points": p.zero_points}
    initializers = []
    for name in names[1:]:
        if weights_as_inputs:
            arr = arrays[name]
            # Dynamic shapes, so that wrong ones reach the kernel's own checks instead of ORT's input validation.
            inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(arr.dtype), [None] * arr.ndim))
        else:
            initializers.append(numpy_helper.from_array(arrays[name], name))
    out_rank = len(a_shape)
    output = helper.make_tensor_value_info("Y", elem, [None] * out_rank)
    graph = helper.make_graph([node], "gqmm", inputs, [output], initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), opset_import()], ir_version=9)


def feeds(p: Problem, weights_as_inputs: bool = False) -> dict:
    out = {"A": p.A}
    if weights_as_inputs:
        out.update(B=p.B, scales=p.scales)
        if p.zero_points is not None:
            out["zero_points"] = p.zero_points
    return out


def session(model: onnx.ModelProto, library, providers=("CPUExecutionProvider",), threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.register_custom_ops_library(os.fspath(library))
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts, providers=list(providers))


def run_dynamic_model(build_model, make_feeds, library, p, a=None, **attrs):
    """Run problem ``p`` with everything fed at run time and every dim dynamic, so the checks inside Compute
    (not session-time inference) must catch what is wrong. ``a`` replaces A; ``attrs`` override the node's.
    ``build_model(p, a_shape=, weights_as_inputs=, **attrs)`` and ``make_feeds(p, weights_as_inputs=)`` are the
    op's one-node model and feeds (``gqmm_model``/``feeds`` here, their like in the other ops' problem modules)."""
    rank = p.A.ndim if a is None else a.ndim
    model = build_model(p, a_shape=[None] * rank, weights_as_inputs=True, **attrs)
    f = make_feeds(p, weights_as_inputs=True)
    if a is not None:
        f["A"] = a
    return session(model, library).run(None, f)


def drop_attribute(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """``model`` with attribute ``name`` removed from its first node (the others kept)."""
    node = model.graph.node[0]
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)
    return model


def rel_error(y: np.ndarray, ref: np.ndarray) -> float:
    y = y.astype(np.float64)
    assert np.isfinite(y).all(), "non-finite output"
    return float(np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30))


TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float16): 2e-3}


@pytest.fixture(scope="session")
def cpu_library():
    from edgeq.custom_ops.library import get_library

    return get_library("cpu")


def cuda_available() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


CUDA = ("CUDAExecutionProvider", "CPUExecutionProvider")


@pytest.fixture(scope="session")
def cuda_library():
    from edgeq.custom_ops.library import get_library

    return get_library("cuda")


def providers_that_ran(model: onnx.ModelProto, library, feeds: dict, node: str, tmp_path) -> set:
    """The execution providers ORT's profile names for the events of `node` after one run on CUDA (+ CPU). The
    CPU kernels are registered too, so a GPU test must check that the CUDA one is what ran."""
    import json

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.register_custom_ops_library(os.fspath(library))
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp_path / "profile")
    s = ort.InferenceSession(model.SerializeToString(), opts, providers=list(CUDA))
    s.run(None, feeds)
    with open(s.end_profiling()) as f:
        events = json.load(f)
    return {e["args"].get("provider") for e in events if e.get("name", "").startswith(node)}


def check_cuda_graph_replay(model: onnx.ModelProto, library, A: np.ndarray, ref: np.ndarray, tolerance: float) -> None:
    """The op enqueues on ORT's stream only, so ORT can capture it in a CUDA graph (as the benchmarks do): with
    device-resident input A and output Y bound, the capture and two replays give `ref`, and a replay after A's
    contents change to -A gives -ref."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.register_custom_ops_library(os.fspath(library))
    s = ort.InferenceSession(model.SerializeToString(), opts,
                             providers=[("CUDAExecutionProvider", {"enable_cuda_graph": "1"}), "CPUExecutionProvider"])
    a = ort.OrtValue.ortvalue_from_numpy(A, "cuda", 0)
    y = ort.OrtValue.ortvalue_from_shape_and_type(list(ref.shape), A.dtype, "cuda", 0)
    binding = s.io_binding()
    binding.bind_ortvalue_input("A", a)
    binding.bind_ortvalue_output("Y", y)
    for _ in range(3):  # first run captures, later ones replay
        s.run_with_iobinding(binding)
        assert rel_error(y.numpy(), ref) <= tolerance
    a.update_inplace(np.ascontiguousarray(-A))  # a replay must read the new contents of the bound input
    s.run_with_iobinding(binding)
    assert rel_error(y.numpy(), -ref) <= tolerance
