"""Random edgeq::QuantLinear problems and one-node models, shared by the CPU, GPU and bad-input tests."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeq.custom_ops.quant_linear_packing import pack_weights, unpack_weights, value_range
from edgeq.custom_ops.reference import quant_linear_rounded
from edgeq.custom_ops.schema import QUANT_LINEAR, opset_import

from .conftest import ONNX_TYPE

WIDTHS = [(8, 8), (6, 6), (4, 4), (4, 8)]  # OmniQuant's W8A8, W6A6, W4A4, and 4-bit weights with 8-bit codes


@dataclasses.dataclass
class QlProblem:
    A: np.ndarray
    B: np.ndarray
    w_scales: np.ndarray
    K: int
    N: int
    wbits: int
    abits: int
    w_zero: np.ndarray | None = None  # int8 [N]: asymmetric weights
    act_sym: bool = True               # False: asymmetric per-token activations (attribute act_sym=0 + w_sum)

    @property
    def attrs(self) -> dict:
        return dict(K=self.K, N=self.N, wbits=self.wbits, abits=self.abits, **({} if self.act_sym else {"act_sym": 0}))

    @property
    def w_sum(self) -> np.ndarray:
        return unpack_weights(self.B, self.K, self.wbits).astype(np.int32).sum(axis=1, dtype=np.int32)

    def weights(self) -> dict[str, np.ndarray]:
        """The node's weight inputs by name, optional ones only when used."""
        out = {"B": self.B, "w_scales": self.w_scales}
        if self.w_zero is not None or not self.act_sym:
            out["w_zero"] = self.w_zero  # None: the empty name of an omitted input
        if not self.act_sym:
            out["w_sum"] = self.w_sum
        return out


def random_problem(rng: np.random.Generator, lead: tuple[int, ...], K: int, N: int, wbits: int, abits: int,
                   dtype=np.float32, saturate: bool = False, asymmetric: bool = False, act_sym: bool = True) -> QlProblem:
    """Weights over their whole signed range (both ends included in every row when ``saturate``); activations
    with per-row magnitudes 1e-6..30 and an outlier column, so rows take every path of the scale rule.
    ``asymmetric``: per-channel zero offsets over the whole signed range too (both ends when ``saturate``).
    ``act_sym=False``: asymmetric per-token activations; rows shifted off zero, some all positive or all negative."""
    lo, hi = value_range(wbits)
    values = rng.integers(lo, hi + 1, (N, K))
    if saturate:
        values[:, 0], values[:, -1] = lo, hi
    w_scales = (rng.uniform(0.5, 2.0, N) * rng.choice([-1, 1], N) * 0.01).astype(dtype)
    A = rng.standard_normal((*lead, K)) * rng.choice([1e-6, 0.01, 1.0, 30.0], (*lead, 1))
    if K > 3:
        A[..., 3] *= 20.0  # an outlier channel, as LLM activations have
    if saturate:  # each row reaches +absmax and -absmax: codes +qmax and -qmax
        absmax = np.abs(A).max(axis=-1, keepdims=True)
        A[..., 0:1], A[..., -1:] = absmax, -absmax
    if not act_sym:
        A = A + rng.choice([0.0, 1.0, -1.0, 2.0], (*lead, 1)) * np.abs(A).max(axis=-1, keepdims=True)
        w_scales /= 16  # a shifted row adds shift * sum_k W to every output: keep float16 outputs finite
    w_zero = None
    if asymmetric:
        w_zero = rng.integers(lo, hi + 1, N).astype(np.int8)
        if saturate:
            w_zero[0], w_zero[-1] = lo, hi
    return QlProblem(A.astype(dtype), pack_weights(values, wbits), w_scales, K, N, wbits, abits, w_zero, act_sym)


def ql_model(p: QlProblem, *, a_shape=None, weights_as_inputs: bool = False, **attr_overrides) -> onnx.ModelProto:
    """A one-node model. Weights are initializers unless weights_as_inputs (then every tensor is a graph input,
    with dynamic shapes, so that wrong ones reach the kernel's own checks)."""
    elem = ONNX_TYPE[p.A.dtype]
    weights = p.weights()
    node = helper.make_node(QUANT_LINEAR.name, ["A", *(name if arr is not None else "" for name, arr in weights.items())],
                            ["Y"], domain="edgeq", name="ql0", **{**p.attrs, **attr_overrides})
    a_shape = list(p.A.shape) if a_shape is None else a_shape
    inputs = [helper.make_tensor_value_info("A", elem, a_shape)]
    initializers = []
    for name, arr in ((n, a) for n, a in weights.items() if a is not None):
        if weights_as_inputs:
            inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(arr.dtype), [None] * arr.ndim))
        else:
            initializers.append(numpy_helper.from_array(arr, name))
    output = helper.make_tensor_value_info("Y", elem, [None] * len(a_shape))
    graph = helper.make_graph([node], "ql", inputs, [output], initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), opset_import()], ir_version=9)


def feeds(p: QlProblem, weights_as_inputs: bool = False) -> dict:
    if not weights_as_inputs:
        return {"A": p.A}
    return {"A": p.A, **{name: arr for name, arr in p.weights().items() if arr is not None}}


def rounded_reference(p: QlProblem) -> np.ndarray:
    """The kernels' exact bits (``reference.quant_linear_rounded``)."""
    return quant_linear_rounded(p.A, p.B, p.w_scales, p.K, p.N, p.wbits, p.abits, p.w_zero, p.act_sym)


def random_shapes(count: int, seed: int, *, max_k: int = 600):
    """(lead, K, N) with odd M/N/K mixed in, K off every vector grid, 1-3 leading dims."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        lead = [(1,), (3,), (2, 5), (7,), (1, 1), (2, 3, 2), (17,), (65,), (9,), (130,)][int(rng.integers(10))]
        K = int(rng.integers(1, max_k))
        if i % 4 == 0:
            K |= 1  # odd: a packed row ends in half a byte
        N = int(rng.integers(1, 80)) | (i % 2)
        out.append((lead, K, N))
    return out
