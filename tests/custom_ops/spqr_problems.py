"""Random edgeq::SpQRMatMul / SpQRDequantize problems and one-node models, shared by the CPU, GPU and
bad-input tests."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeq.custom_ops.packing import pack_codes, pack_row_bitstream
from edgeq.custom_ops.schema import SPQR_DEQUANTIZE, SPQR_MATMUL, SPQR_WEIGHT_INPUTS, opset_import

from .conftest import ONNX_TYPE

WEIGHTS = tuple(i.name for i in SPQR_WEIGHT_INPUTS)


@dataclasses.dataclass
class SpqrProblem:
    A: np.ndarray
    codes: np.ndarray
    scale_codes: np.ndarray
    zero_codes: np.ndarray
    stats: np.ndarray
    row_ptr: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    K: int
    N: int
    bits: int
    group_size: int
    stat_bits: int
    stat_group_size: int

    @property
    def attrs(self) -> dict:
        return dict(K=self.K, N=self.N, bits=self.bits, group_size=self.group_size, stat_bits=self.stat_bits,
                    stat_group_size=self.stat_group_size)

    @property
    def weights(self) -> list[np.ndarray]:
        return [getattr(self, name) for name in WEIGHTS]


def random_outliers(rng: np.random.Generator, N: int, K: int, density: float, duplicates: bool = False
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR (row_ptr int32, cols int16 holding uint16, values float16): about ``density`` of each row, with every
    third row empty and one row (if N > 2) dense with outliers (half of K). ``duplicates`` repeats columns."""
    counts = rng.binomial(K, density, N)
    counts[::3] = 0
    if N > 2 and density > 0:
        counts[1] = K // 2
    rows = []
    for n in range(N):
        if duplicates and counts[n]:
            c = rng.integers(0, K, counts[n])
            c[: counts[n] // 2] = c[0]  # one column several times
        else:
            c = np.sort(rng.choice(K, counts[n], replace=False))
        rows.append(c)
    row_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    cols = (np.concatenate(rows) if rows else np.zeros(0)).astype(np.uint16).view(np.int16)
    values = (rng.standard_normal(len(cols)) * 0.1).astype(np.float16)
    return row_ptr, cols, values


def random_problem(rng: np.random.Generator, lead: tuple[int, ...], K: int, N: int, bits: int, group_size: int,
                   stat_bits: int = 3, stat_group_size: int = 16, density: float = 0.01, dtype=np.float32,
                   duplicates: bool = False) -> SpqrProblem:
    """Codes over their whole range; statistics such that s takes both signs now and then and z lies around the
    code range, as SpQR's do; weights of about 0.05."""
    n_groups = -(-K // group_size)
    R = -(-N // stat_group_size)
    smax = 2**stat_bits - 1
    codes = rng.integers(0, 2**bits, (N, K), dtype=np.uint8)
    scale_codes = rng.integers(0, smax + 1, (N, n_groups), dtype=np.uint8)
    zero_codes = rng.integers(0, smax + 1, (N, n_groups), dtype=np.uint8)
    stats = np.stack([
        rng.uniform(0.5, 2.0, (R, n_groups)) * 0.05 / max(smax, 1),  # scale of scales
        rng.uniform(-1.0, smax / 2, (R, n_groups)),                   # zero of scales
        rng.uniform(0.5, 1.5, (R, n_groups)) * (2**bits - 1) / max(smax, 1),  # scale of zeros
        rng.uniform(0.0, smax / 2, (R, n_groups)),                    # zero of zeros
    ], axis=-1).astype(np.float16)
    row_ptr, cols, values = random_outliers(rng, N, K, density, duplicates)
    A = rng.standard_normal((*lead, K)).astype(dtype)
    return SpqrProblem(A, pack_codes(codes, bits, group_size), pack_row_bitstream(scale_codes, stat_bits),
                       pack_row_bitstream(zero_codes, stat_bits), stats, row_ptr, cols, values, K, N, bits, group_size,
                       stat_bits, stat_group_size)


def spqr_model(p: SpqrProblem, *, dequantize: bool = False, a_shape=None, weights_as_inputs: bool = False,
               **attr_overrides) -> onnx.ModelProto:
    """A one-node model of SpQRMatMul (or SpQRDequantize). Weights are initializers unless weights_as_inputs
    (then every tensor is a graph input with dynamic dims, so that wrong ones reach the kernel's own checks)."""
    op = SPQR_DEQUANTIZE if dequantize else SPQR_MATMUL
    names = list(WEIGHTS) if dequantize else ["A", *WEIGHTS]
    node = helper.make_node(op.name, names, ["Y"], domain="edgeq", name="spqr0", **{**p.attrs, **attr_overrides})
    inputs, initializers = [], []
    if not dequantize:
        a_shape = list(p.A.shape) if a_shape is None else a_shape
        inputs.append(helper.make_tensor_value_info("A", ONNX_TYPE[p.A.dtype], a_shape))
        output = helper.make_tensor_value_info("Y", ONNX_TYPE[p.A.dtype], [None] * len(a_shape))
    else:
        output = helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [None, None])
    for name, arr in zip(WEIGHTS, p.weights):
        if weights_as_inputs:
            inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(arr.dtype), [None] * arr.ndim))
        else:
            initializers.append(numpy_helper.from_array(arr, name))
    graph = helper.make_graph([node], "spqr", inputs, [output], initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), opset_import()], ir_version=9)


def feeds(p: SpqrProblem, *, dequantize: bool = False, weights_as_inputs: bool = False) -> dict:
    out = {} if dequantize else {"A": p.A}
    if weights_as_inputs:
        out.update(zip(WEIGHTS, p.weights))
    return out
