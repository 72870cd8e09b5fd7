from collections import Counter

import numpy as np
import pytest

from edgeq.custom_ops.packing import unpack_codes
from edgeq.custom_ops.reference import group_quant_matmul
from edgeq.passes._rules import why_not
from edgeq.passes.lower_group_quant_matmul import LowerGroupQuantMatMulPass
from tests.passes.helpers import from_proto, ops, quantized_linear_graph, run

RTOL = 2e-6  # float64 reference vs float32 kernels, relative to the output scale


def lowered(K, N, bits, group, widths=(2, 3), **kw):
    rng = np.random.default_rng(K * 1000 + N + bits + group)
    proto, W = quantized_linear_graph(K, N, bits, group, rng=rng, **kw)
    model = from_proto(proto)
    result = LowerGroupQuantMatMulPass(widths)(model)
    x = rng.standard_normal((2, 3, K)).astype(np.float32)
    return proto, result, W, x


def node_inputs(model):
    node = next(n for n in model.graph if n.op_type == "GroupQuantMatMul")
    attrs = {k: a.value for k, a in node.attributes.items()}
    arrays = [v.const_value.numpy() for v in node.inputs[1:]]
    return node, attrs, arrays


def assert_close(y, ref, rtol=RTOL):
    scale = np.abs(ref).max()
    assert np.abs(np.asarray(y, np.float64) - ref).max() <= rtol * scale


@pytest.mark.parametrize(
    "K,N,bits,group,expect_group",
    [
        (64, 24, 2, 16, 16),
        (128, 16, 3, 32, 32),
        (256, 8, 3, 128, 128),
        (80, 24, 3, 32, 32),  # short last group
        (512, 8, 2, 256, 128),  # re-blocked: 256 is beyond the op's largest group
        (96, 8, 2, 96, 128),  # per-channel, K not a power of two: one padded group of 128
    ],
)
def test_lowers_to_group_quant_matmul_matching_the_reference(K, N, bits, group, expect_group):
    proto, result, W, x = lowered(K, N, bits, group)
    assert result.modified
    assert ops(result.model) == Counter({"GroupQuantMatMul": 1})
    node, attrs, (B, scales, zeros) = node_inputs(result.model)
    assert node.domain == "edgeq"
    assert attrs == {"K": K, "N": N, "bits": bits, "group_size": expect_group}
    n_groups = -(-K // expect_group)
    assert B.shape == (N, n_groups, expect_group * bits // 8) and B.dtype == np.uint8
    assert scales.shape == zeros.shape == (N, n_groups) and zeros.dtype == np.uint8
    y_ref = group_quant_matmul(x, B, scales, zeros, K, N, bits, expect_group)
    assert_close(y_ref, x.astype(np.float64) @ W.T)  # the packed weight is the exported weight
    (y_dq,) = run(proto, {"x": x})
    assert_close(y_dq, y_ref)


@pytest.mark.parametrize("bits", [2, 3])
def test_runs_in_onnx_runtime_with_the_edgeq_library(bits):
    proto, result, W, x = lowered(80, 24, bits, 32)
    (y,) = run(result.model, {"x": x})
    assert_close(y, x.astype(np.float64) @ W.T)


def test_four_bit_packing_is_matmulnbits_order_when_asked_to_take_four_bit():
    proto, result, W, x = lowered(64, 8, 4, 32, widths=(4,))
    assert ops(result.model) == Counter({"GroupQuantMatMul": 1})
    _, attrs, (B, scales, zeros) = node_inputs(result.model)
    codes = unpack_codes(B, 4, 32, 64)
    # low nibble first: the first byte holds codes 0 and 1
    assert np.array_equal(B[:, 0, 0], codes[:, 0] | (codes[:, 1] << 4))
    assert_close(group_quant_matmul(x, B, scales, zeros, 64, 8, 4, 32), x.astype(np.float64) @ W.T)


def test_keeps_act_order_gather():
    proto, result, W, x = lowered(64, 16, 3, 16, perm=True)
    assert ops(result.model) == Counter({"Gather": 1, "GroupQuantMatMul": 1})
    (y,) = run(result.model, {"x": x})
    assert_close(y, x.astype(np.float64) @ W.T)


@pytest.mark.parametrize("bits,group,reason", [(4, 32, "4-bit codes"), (2, 8, "cannot be cut into groups")])
def test_leaves_other_weights_and_says_why(bits, group, reason):
    rng = np.random.default_rng(3)
    proto, _ = quantized_linear_graph(64, 16, bits, group, rng=rng)
    model = from_proto(proto)
    pass_ = LowerGroupQuantMatMulPass()
    assert not pass_(model).modified
    assert ops(model) == Counter({"DequantizeLinear": 1, "MatMul": 1})
    assert reason in why_not(pass_.rules, model)


def test_refuses_widths_the_op_does_not_take():
    with pytest.raises(ValueError, match="takes widths"):
        LowerGroupQuantMatMulPass((5,))


def test_float16_model_runs_in_onnx_runtime():
    proto, result, W, x = lowered(64, 16, 3, 32, dtype=np.float16)
    assert ops(result.model) == Counter({"GroupQuantMatMul": 1})
    _, _, (B, scales, zeros) = node_inputs(result.model)
    assert scales.dtype == np.float16
    (y,) = run(result.model, {"x": x.astype(np.float16)})
    assert y.dtype == np.float16
    assert_close(y, x.astype(np.float16).astype(np.float64) @ W.T, rtol=2e-3)  # half output rounding
