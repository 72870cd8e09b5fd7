"""QuantLinear's schema (ONNX shape inference and attribute checks), weight packing and reference rules."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeq.custom_ops.quant_linear_packing import from_codes, pack_weights, unpack_weights
from edgeq.custom_ops.reference import quant_linear, quantize_tokens
from edgeq.custom_ops.schema import QUANT_LINEAR, opset_import
from edgeq.errors import EdgeqError


def infer(a_shape, b_shape, s_shape, elem=TensorProto.FLOAT, **attrs):
    node = QUANT_LINEAR.make_node(["A", "B", "w_scales"], ["Y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", elem, a_shape),
                                            helper.make_tensor_value_info("B", TensorProto.INT8, b_shape),
                                            helper.make_tensor_value_info("w_scales", elem, s_shape)],
                              [helper.make_tensor_value_info("Y", elem, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), opset_import()])
    out = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph.output[0].type.tensor_type
    return out.elem_type, [d.dim_value or d.dim_param for d in out.shape.dim]


def test_inference_keeps_leading_dims_and_appends_n():
    assert infer(["batch", "seq", 64], [24, 32], [24], TensorProto.FLOAT16, K=64, N=24, wbits=4, abits=4) == (
        TensorProto.FLOAT16, ["batch", "seq", 24])
    assert infer([5, 63], [7, 63], [7], K=63, N=7, wbits=8, abits=8) == (TensorProto.FLOAT, [5, 7])


@pytest.mark.parametrize("shapes, attrs, match", [
    (([5, 64], [24, 64], [24]), dict(K=64, N=24, wbits=4, abits=4), r"B has shape \[24, 64\], expected \[24, 32\]"),
    (([5, 63], [7, 32], [7]), dict(K=64, N=7, wbits=3, abits=8), r"A's last dim is 63, attribute K is 64"),
    (([5, 64], [7, 64], [6]), dict(K=64, N=7, wbits=8, abits=8), r"w_scales has shape \[6\], expected \[7\]"),
])
def test_inference_refuses_inconsistent_shapes(shapes, attrs, match):
    with pytest.raises(Exception, match=rf"edgeq::QuantLinear: {match}"):
        infer(*shapes, **attrs)


@pytest.mark.parametrize("attrs, match", [(dict(K=8, N=2, wbits=1, abits=8), "wbits=1: must be an integer in 2..8"),
                                          (dict(K=8, N=2, wbits=8, abits=9), "abits=9: must be an integer in 2..8"),
                                          (dict(K=0, N=2, wbits=8, abits=8), "K=0: must be a positive integer")])
def test_make_node_checks_attributes(attrs, match):
    with pytest.raises(ValueError, match=f"edgeq::QuantLinear: attribute {match}"):
        QUANT_LINEAR.make_node(["A", "B", "w_scales"], ["Y"], **attrs)


@pytest.mark.parametrize("wbits", range(2, 9))
@pytest.mark.parametrize("K", [1, 2, 31, 64])
def test_pack_round_trip_over_the_whole_range(wbits, K):
    rng = np.random.default_rng(wbits * 100 + K)
    lo, hi = -(1 << (wbits - 1)), (1 << (wbits - 1)) - 1
    values = rng.integers(lo, hi + 1, (6, K))
    values[0, 0], values[-1, -1] = lo, hi
    B = pack_weights(values, wbits)
    assert B.dtype == np.int8 and B.shape == ((6, (K + 1) // 2) if wbits <= 4 else (6, K))
    np.testing.assert_array_equal(unpack_weights(B, K, wbits), values)


def test_four_bit_layout_is_low_nibble_first():
    B = pack_weights(np.array([[1, -2, -8, 7, 3]]), 4)
    assert B.view(np.uint8).tolist() == [[0xE1, 0x78, 0x03]]


def test_packing_refuses_values_outside_the_width_and_bad_zeros():
    with pytest.raises(EdgeqError, match=r"values span \[-9, 0\], outside the 4-bit range \[-8, 7\]"):
        pack_weights(np.array([[-9, 0]]), 4)
    with pytest.raises(EdgeqError, match=r"zero points span \[8, 16\], outside the 4-bit codes \[0, 15\]"):
        from_codes(np.zeros((2, 4), np.uint8), np.array([8, 16]), 4)
    with pytest.raises(EdgeqError, match=r"zero points \[3\] do not match codes \[2, 4\]"):
        from_codes(np.zeros((2, 4), np.uint8), np.array([8, 8, 8]), 4)


@pytest.mark.parametrize("wbits", [8, 4, 3])
def test_asymmetric_codes_become_signed_values_and_zero_offsets(wbits):
    """code - zero == (B - w_zero) for every code and zero point of the width, both at int8's ends for 8 bits."""
    top = (1 << wbits) - 1
    codes = np.tile(np.arange(top + 1), (3, 1)).astype(np.uint8)
    zeros = np.array([0, 1 << (wbits - 1), top])
    B, w_zero = from_codes(codes, zeros, wbits)
    assert w_zero.dtype == np.int8 and w_zero.tolist() == [-(1 << (wbits - 1)), 0, top - (1 << (wbits - 1))]
    values = unpack_weights(B, top + 1, wbits).astype(np.int64) - w_zero.astype(np.int64)[:, None]
    np.testing.assert_array_equal(values, codes.astype(np.int64) - zeros[:, None])
    B_sym, none = from_codes(codes, np.full(3, 1 << (wbits - 1)), wbits)
    assert none is None and np.array_equal(B_sym, B)


def test_reference_scale_rule_and_float16_steps():
    x = np.array([[1e-7, -3e-7], [254.0, -127.0]], np.float32)
    q, s = quantize_tokens(x, 8)
    assert s[0, 0] == np.float32(1e-5) and s[1, 0] == 2.0
    assert q.tolist() == [[0, 0], [127, -64]]  # -63.5 rounds to even
    # float16: the scale is rounded to float16 before dividing (exporter's chain in float16)
    h = np.array([[1000.0, 3.0]], np.float16)
    _, s16 = quantize_tokens(h, 8)
    assert s16.dtype == np.float16 and s16[0, 0] == np.float16(np.float32(1000.0) / 127)


def test_reference_is_the_dequantized_product_of_the_codes():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((4, 40)).astype(np.float32)
    values = rng.integers(-32, 32, (9, 40))
    ws = rng.random(9).astype(np.float32)
    q, s = quantize_tokens(A, 6)
    expected = (q * s.astype(np.float64)) @ (values * ws[:, None].astype(np.float64)).T
    np.testing.assert_allclose(quant_linear(A, pack_weights(values, 6), ws, 40, 9, 6, 6), expected, rtol=1e-12)
