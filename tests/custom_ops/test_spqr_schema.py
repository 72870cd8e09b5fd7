"""SpQRMatMul / SpQRDequantize: ONNX schemas and shape inference, attribute checks, and the float64 reference
against SpQRWeight's own dequantization."""

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edgeq.custom_ops import schema
from edgeq.custom_ops.packing import pack_codes, pack_row_bitstream
from edgeq.custom_ops.reference import spqr_dequantize, spqr_matmul, spqr_weight
from edgeq.custom_ops.schema import SPQR_DEQUANTIZE, SPQR_MATMUL, SPQR_WEIGHT_INPUTS
from edgeq.exporter.llama_graph import SPQR_INPUTS

from .spqr_problems import WEIGHTS, random_problem, spqr_model

ATTRS = dict(K=100, N=7, bits=3, group_size=16, stat_bits=3, stat_group_size=4)


def test_ops_are_registered_with_the_exporters_input_order():
    for op in (SPQR_MATMUL, SPQR_DEQUANTIZE):
        s = onnx.defs.get_schema(op.name, 1, "edgeq")
        assert [i.name for i in s.inputs] == op.input_names()
        assert sorted(s.attributes) == sorted(ATTRS)
    assert SPQR_MATMUL.input_names() == ["A", *SPQR_INPUTS]
    assert SPQR_DEQUANTIZE.input_names() == list(SPQR_INPUTS) == list(WEIGHTS)
    assert [i.type for i in SPQR_WEIGHT_INPUTS] == ["tensor(uint8)"] * 3 + ["tensor(float16)", "tensor(int32)",
                                                                              "tensor(int16)", "tensor(float16)"]


def test_weight_shapes():
    # G1 = 7 groups of 16 along K=100; 7 3-bit stat codes = 21 bits = 3 bytes; R = ceil(7/4) = 2 row blocks
    assert schema.spqr_weight_shapes(**ATTRS) == {"codes": [7, 7, 6], "scale_codes": [7, 3], "zero_codes": [7, 3],
                                                  "stats": [2, 7, 4], "row_ptr": [8]}


def infer(model):
    return onnx.shape_inference.infer_shapes(model, strict_mode=True).graph.output[0].type.tensor_type


@pytest.mark.parametrize("dtype, elem", [(np.float32, TensorProto.FLOAT), (np.float16, TensorProto.FLOAT16)])
def test_matmul_inference_keeps_leading_dims_and_type(dtype, elem):
    p = random_problem(np.random.default_rng(0), (2, 3), **ATTRS, dtype=dtype)
    model = spqr_model(p, a_shape=["batch", "seq", 100])
    onnx.checker.check_model(model, full_check=True)
    y = infer(model)
    assert y.elem_type == elem
    assert [d.dim_param or d.dim_value for d in y.shape.dim] == ["batch", "seq", 7]


def test_dequantize_inference_is_float_k_by_n():
    p = random_problem(np.random.default_rng(1), (1,), **ATTRS)
    model = spqr_model(p, dequantize=True)
    onnx.checker.check_model(model, full_check=True)
    y = infer(model)
    assert y.elem_type == TensorProto.FLOAT and [d.dim_value for d in y.shape.dim] == [100, 7]


@pytest.mark.parametrize("override, match", [
    (dict(K=99), "A's last dim is 100, attribute K is 99"),
    (dict(N=8), r"codes has shape \[7, 7, 6\], expected \[8, 7, 6\]"),
    (dict(bits=4), r"codes has shape \[7, 7, 6\], expected \[7, 7, 8\]"),
    (dict(stat_bits=4), r"scale_codes has shape \[7, 3\], expected \[7, 4\]"),
    (dict(stat_group_size=2), r"stats has shape \[2, 7, 4\], expected \[4, 7, 4\]"),
    (dict(group_size=32), r"codes has shape \[7, 7, 6\], expected \[7, 4, 12\]"),
    (dict(bits=5), "attribute bits=5: must be one of"),
    (dict(stat_bits=9), "attribute stat_bits=9: must be an integer in 1..8"),
    (dict(stat_group_size=0), "attribute stat_group_size=0: must be a positive integer"),
])
def test_inference_refuses_inconsistent_nodes(override, match):
    p = random_problem(np.random.default_rng(2), (2,), **ATTRS)
    with pytest.raises(onnx.shape_inference.InferenceError, match=f"edgeq::SpQRMatMul: {match}"):
        infer(spqr_model(p, **override))


def test_inference_refuses_sparse_arrays_of_different_lengths():
    p = random_problem(np.random.default_rng(3), (2,), **ATTRS)
    p.values = p.values[:-1].copy()
    with pytest.raises(onnx.shape_inference.InferenceError, match=r"SpQRDequantize: cols has \d+ entries, values"):
        infer(spqr_model(p, dequantize=True))


def test_make_node_checks_attributes():
    names = ["A", *WEIGHTS]
    node = SPQR_MATMUL.make_node(names, ["Y"], **ATTRS)
    assert node.domain == "edgeq" and node.op_type == "SpQRMatMul"
    with pytest.raises(ValueError, match="edgeq::SpQRMatMul: attribute group_size=24: must be one of"):
        SPQR_MATMUL.make_node(names, ["Y"], **{**ATTRS, "group_size": 24})
    with pytest.raises(ValueError, match="'stat_group_size' is required"):
        SPQR_MATMUL.make_node(names, ["Y"], **{k: v for k, v in ATTRS.items() if k != "stat_group_size"})
    with pytest.raises(ValueError, match="needs inputs"):
        SPQR_DEQUANTIZE.make_node(list(WEIGHTS[:-1]), ["W"], **ATTRS)


def test_reference_applies_the_bilevel_statistics_and_adds_duplicate_outliers():
    # One row, one group of 16: codes 0..15 (4 bits), scale code 5 and zero code 2 (3 bits);
    # s = 0.5 * (5 - 1) = 2, z = 2 * (2 - 0.5) = 3; outliers at columns 4 (twice) and 15.
    weights = (pack_codes(np.arange(16, dtype=np.uint8)[None], 4, 16), pack_row_bitstream(np.array([[5]], np.uint8), 3),
               pack_row_bitstream(np.array([[2]], np.uint8), 3), np.array([[[0.5, 1.0, 2.0, 0.5]]], np.float16),
               np.array([0, 3], np.int32), np.array([4, 4, 15], np.uint16).view(np.int16),
               np.array([1.0, 0.25, -2.0], np.float16))
    attrs = dict(K=16, N=1, bits=4, group_size=16, stat_bits=3, stat_group_size=16)
    expected = 2.0 * (np.arange(16) - 3.0)
    expected[4] += 1.25
    expected[15] -= 2.0
    np.testing.assert_array_equal(spqr_weight(*weights, **attrs)[0], expected)
    np.testing.assert_array_equal(spqr_dequantize(*weights, **attrs)[:, 0], expected)
    A = np.ones((2, 16))
    np.testing.assert_array_equal(spqr_matmul(A, *weights, **attrs), A @ expected[:, None])


@pytest.mark.parametrize("bits, group_size, stat_group_size", [(3, 16, 16), (2, 32, 8), (4, 16, 16)])
def test_reference_equals_spqr_weight_dequantization(bits, group_size, stat_group_size):
    """The op's weight is SpQRWeight's: a real SpQR solve (with outliers and act-order), exported tensors."""
    from edgeq.quantize.spqr import SpQR

    g = torch.Generator().manual_seed(bits)
    n, k = 40, 200
    x = torch.randn(1024, k, generator=g) @ (torch.randn(k, k, generator=g) * torch.linspace(0.05, 2, k))
    w = torch.randn(n, k, generator=g)
    w[3, 190], w[17, 150] = 9.0, -11.0
    solver = SpQR(w)
    solver.add_batch(x)
    q = solver.quantize(bits, group_size, 3, stat_group_size, 0.2, True, 0.01, 64)
    assert q.nnz > 0
    t = {key.split(".", 1)[1]: v.numpy() for key, v in q.to_tensors("w").items()}
    attrs = dict(K=k, N=n, bits=bits, group_size=group_size, stat_bits=3, stat_group_size=stat_group_size)
    W = spqr_weight(*(t[name] for name in WEIGHTS), **attrs)
    expected = q.dequantize_permuted().double().numpy()
    # SpQRWeight computes in float32 from the same float16 statistics.
    assert np.abs(W - expected).max() <= 1e-6 * np.abs(expected).max()
    assert math.isclose(np.abs(W).max(), np.abs(expected).max(), rel_tol=1e-6)
