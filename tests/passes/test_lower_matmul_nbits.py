from collections import Counter

import numpy as np
import onnx
import pytest

from edgeq.passes._rules import why_not
from edgeq.passes.lower_matmul_nbits import LowerMatMulNBitsPass, MatMulNBitsLowering
from tests.passes.helpers import from_proto, ops, quantized_linear_graph, run

# Relative to the output's scale: both sides are float32 GEMMs over the same dequantized weights, only the
# summation order differs.
RTOL = 2e-6


def lowered(K, N, bits, group, **kw):
    rng = np.random.default_rng(K * 1000 + N + bits + group)
    proto, W = quantized_linear_graph(K, N, bits, group, rng=rng, **kw)
    model = from_proto(proto)
    result = LowerMatMulNBitsPass()(model)
    x = rng.standard_normal((2, 3, K)).astype(kw.get("dtype", np.float32))
    return proto, result, W, x


def assert_close(y, ref, rtol=RTOL):
    scale = np.abs(ref).max()
    assert np.abs(y.astype(np.float64) - ref).max() <= rtol * scale, np.abs(y - ref).max() / scale


@pytest.mark.parametrize(
    "K,N,bits,group",
    [
        (64, 24, 4, 16),
        (128, 40, 4, 32),
        (256, 16, 4, 128),
        (80, 24, 4, 32),  # K not a multiple of the group: short last group
        (96, 16, 4, 96),  # per-channel (one group per row, K not a power of two): re-blocked to 128
        (512, 8, 4, 256),  # group larger than 128: re-blocked to 128
        (64, 24, 8, 16),
        (80, 24, 8, 64),
        (64, 24, 6, 32),  # 6-bit codes stored as 8-bit: same values
    ],
)
def test_lowers_to_one_matmulnbits_and_matches(K, N, bits, group):
    proto, result, W, x = lowered(K, N, bits, group)
    assert result.modified
    assert ops(result.model) == Counter({"MatMulNBits": 1})
    node = next(iter(result.model.graph))
    attrs = {k: a.value for k, a in node.attributes.items()}
    assert node.domain == "com.microsoft"
    assert attrs["K"] == K and attrs["N"] == N and attrs["bits"] == (4 if bits == 4 else 8)
    assert attrs["accuracy_level"] == 0
    assert attrs["block_size"] in (16, 32, 64, 128) and (group >= K or group % attrs["block_size"] == 0)
    # The old codes/scales/zeros are gone; only the packed triple remains.
    assert sorted(result.model.graph.initializers) == ["w.nbits_B", "w.nbits_scales", "w.nbits_zeros"]
    (y,) = run(result.model, {"x": x})
    (y_ref,) = run(proto, {"x": x})
    assert_close(y, x.astype(np.float64) @ W.T)
    assert_close(y, y_ref)


def test_keeps_act_order_gather_as_its_own_node():
    proto, result, W, x = lowered(64, 24, 4, 16, perm=True)
    assert ops(result.model) == Counter({"Gather": 1, "MatMulNBits": 1})
    (y,) = run(result.model, {"x": x})
    assert_close(y, x.astype(np.float64) @ W.T)


def test_without_zero_points_uses_dq_default_zero():
    # DequantizeLinear's missing zero point means 0; MatMulNBits' means 2^(bits-1). The pass must write zeros.
    proto, result, W, x = lowered(64, 16, 4, 32, zeros=False)
    assert ops(result.model) == Counter({"MatMulNBits": 1})
    (y,) = run(result.model, {"x": x})
    assert_close(y, x.astype(np.float64) @ W.T)


def test_float16_activations_and_scales():
    proto, result, W, x = lowered(64, 32, 4, 32, dtype=np.float16)
    assert ops(result.model) == Counter({"MatMulNBits": 1})
    (y,) = run(result.model, {"x": x})
    (y_ref,) = run(proto, {"x": x})
    assert y.dtype == np.float16
    assert_close(y, y_ref.astype(np.float64), rtol=2e-3)  # half output rounding


def test_accuracy_level_is_written_as_asked():
    rng = np.random.default_rng(0)
    proto, _ = quantized_linear_graph(64, 16, 4, 32, rng=rng)
    model = from_proto(proto)
    assert LowerMatMulNBitsPass(accuracy_level=4)(model).modified
    assert next(iter(model.graph)).attributes["accuracy_level"].value == 4
    with pytest.raises(ValueError, match="accuracy_level"):
        LowerMatMulNBitsPass(accuracy_level=7)


@pytest.mark.parametrize(
    "bits,group,reason",
    [
        (4, 8, "group size 8 cannot be cut into blocks"),
        (2, 16, "2-bit codes are GroupQuantMatMul's"),
        (3, 32, "3-bit codes are GroupQuantMatMul's"),
    ],
)
def test_leaves_what_it_cannot_lower_and_says_why(bits, group, reason):
    rng = np.random.default_rng(1)
    proto, _ = quantized_linear_graph(64, 16, bits, group, rng=rng)
    model = from_proto(proto)
    pass_ = LowerMatMulNBitsPass()
    result = pass_(model)
    assert not result.modified
    assert ops(model) == Counter({"DequantizeLinear": 1, "MatMul": 1})
    assert reason in why_not(pass_.rules, model)


def test_shared_dequantized_weight_is_not_packed_twice():
    rng = np.random.default_rng(2)
    proto, _ = quantized_linear_graph(64, 16, 4, 16, rng=rng, shared=True)
    model = from_proto(proto)
    assert not LowerMatMulNBitsPass()(model).modified
    assert ops(model) == Counter({"DequantizeLinear": 1, "MatMul": 2})


def test_rule_name_names_the_accuracy_level():
    assert "accuracy_level=0" in MatMulNBitsLowering.rule(accuracy_level=0).name


def test_picks_the_block_that_stores_fewest_bytes():
    # SmolLM2's K=576 in groups of 128: blocks of 128 would pad every row to 640 codes (+11%); blocks of 64
    # cut each group in two with the same scale and zero, no padding.
    proto, result, W, x = lowered(576, 8, 4, 128)
    node = next(iter(result.model.graph))
    assert node.attributes["block_size"].value == 64
    packed = sum(v.const_value.nbytes for v in result.model.graph.initializers.values())
    N = 8
    with_blocks_of_128 = N * (640 // 2) + N * 5 * 4 + N * 3  # padded codes, float32 scales, packed zeros
    assert packed == N * (576 // 2) + N * 9 * 4 + N * 5
    assert packed < with_blocks_of_128
    (y,) = run(result.model, {"x": x})
    assert_close(y, x.astype(np.float64) @ W.T)
