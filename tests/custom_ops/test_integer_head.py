"""The lm_head's wide input: DINorm's int16 output codes (obits 9..16, symmetric or with zero points) and DIMatMul's
int16 input codes (abits 9..16, K bounded by ``di_matmul_max_k``). References against float, the CPU and CUDA kernels
bit-exact against the references (random odd shapes, one-token rows, rows of 4099 values, codes at both ends of their
range, the largest accumulator the bound allows), and the errors for what the ops refuse."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper

from edgeq.custom_ops import reference_integer as ri
from edgeq.custom_ops.integer_codec import dequantize, eps_q60
from edgeq.custom_ops.schema import OPS, opset_import

from .integer_problems import activation, activation16, assert_bit_exact, channel_scales, run
from .integer_problems import matmul_kernel, target  # noqa: F401 (fixtures)
from .test_integer_ops import lead_shape, odd_size


def wide_codes(rng, shape, bits: int, saturate: bool = False) -> np.ndarray:
    """int16 codes over the signed ``bits``-wide range (with ``saturate``, each row holds both ends)."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = rng.integers(lo, hi + 1, shape)
    if saturate and shape[-1] >= 2:
        q[..., 0], q[..., -1] = lo, hi
    return q.astype(np.int16)


def wide_input(rng, lead, K, abits, *, saturate=False, zero=False, **kw):
    """X of abits-wide int16 codes [*lead, K] and its scales, with (``zero``) per-row zero points in the same range."""
    _, m, e = activation(rng, (*lead, K), **kw)
    x_zero = wide_codes(rng, (*lead, 1), abits).astype(np.int32) if zero else None
    return [wide_codes(rng, (*lead, K), abits, saturate), m, e], x_zero


def matmul_args(x, x_zero, W, w_m, w_e, w_zero):
    w_sum = None if x_zero is None else W.astype(np.int64).sum(1).astype(np.int32)
    return [*x, W, w_m, w_e, w_zero, x_zero, w_sum]


def steps_off(y, m, e, exact) -> float:
    return float((np.abs(dequantize(y, m, e) - exact) / dequantize(1, m, e)).max())


def float_rmsnorm(x, g_m, g_e, eps):
    xf = dequantize(*x)
    return xf / np.sqrt((xf**2).mean(-1, keepdims=True) + eps) * dequantize(g_m, 1, g_e)


# ---------------------------------------------------------------------------------------------------------
# References against float


@pytest.mark.parametrize("abits", [10, 12, 16])
@pytest.mark.parametrize("zero", [False, True])
def test_matmul_of_wide_inputs_is_the_float_matmul(abits, zero):
    """(X - x_zero) (W - w_zero)^T of abits-wide codes: the output rounding, the 15-bit mantissa and the reciprocal's."""
    rng = np.random.default_rng(abits + 100 * zero)
    K = min(333, ri.di_matmul_max_k(abits, zero, zero))
    x, x_zero = wide_input(rng, (64,), K, abits, zero=zero, full_mantissas=True)
    W = rng.integers(-127, 128, (45, K)).astype(np.int8)
    w_zero = rng.integers(-128, 128, 45).astype(np.int8) if zero else None
    w_m, w_e = channel_scales(rng, 45, spread=16, signed=True)
    xs = x[0].astype(np.float64) - (0 if x_zero is None else x_zero)
    ws = W.astype(np.float64) - (0 if w_zero is None else w_zero[:, None])
    exact = (xs * dequantize(1, x[1], x[2])) @ (ws * dequantize(1, w_m[:, None], w_e[:, None])).T
    for obits in (8, 16):
        y = ri.di_matmul(*x, W, w_m, w_e, obits, w_zero, x_zero, abits=abits)
        assert y[0].dtype == (np.int16 if obits > 8 else np.int8)
        assert steps_off(*y, exact) <= 0.5 + ((1 << (obits - 1)) - 1) * 2.0**-15 + 1e-3


@pytest.mark.parametrize("obits", [12, 16])
@pytest.mark.parametrize("act_sym", [1, 0])
def test_norm_with_wide_outputs_is_float_rmsnorm(obits, act_sym):
    rng = np.random.default_rng(obits + act_sym)
    x = activation16(rng, (64, 577), e_range=(16, 28), full_mantissas=True)
    g_m, g_e = channel_scales(rng, 577, spread=8, signed=True)
    y = ri.di_norm(*x, g_m, g_e, eps_q60=eps_q60(1e-5), obits=obits, act_sym=act_sym)
    assert y[0].dtype == np.int16 and len(y) == (3 if act_sym else 4)
    q = y[0].astype(np.int64) - (0 if act_sym else y[3])
    # the 15-bit mantissas of the row factor and of gamma: about 3 qmax 2^-15 steps at most
    assert steps_off(q, y[1], y[2], float_rmsnorm(x, g_m, g_e, 1e-5)) <= 0.5 + 3 * (1 << (obits - 1)) * 2.0**-15


def test_a_twelve_bit_head_input_is_sixteen_times_finer():
    """The final norm into lm_head at 12 bits instead of 8, with zero points as the pass writes it: the logits'
    error against float shrinks with the input step (the 16-bit output codes round far below either)."""
    rng = np.random.default_rng(3)
    x = activation16(rng, (32, 576), e_range=(16, 28), full_mantissas=True)
    x[0][:, 7] = 32767  # an outlier channel, as a residual stream has
    g_m, g_e = channel_scales(rng, 576, spread=4)
    W = rng.integers(-127, 128, (300, 576)).astype(np.int8)
    w_m, w_e = channel_scales(rng, 300, spread=4)
    exact = float_rmsnorm(x, g_m, g_e, 1e-5) @ dequantize(W, w_m[:, None], w_e[:, None]).T
    errors = {}
    for bits in (8, 12):
        q, m, e, z = ri.di_norm(*x, g_m, g_e, eps_q60=eps_q60(1e-5), obits=bits, act_sym=0)
        y = ri.di_matmul(q, m, e, W, w_m, w_e, 16, None, z, abits=bits)
        errors[bits] = float(np.abs(dequantize(*y) - exact).mean())
    assert errors[12] < errors[8] / 8, errors


def test_matmul_reference_refuses_codes_and_sizes_outside_abits():
    rng = np.random.default_rng(0)
    x, x_zero = wide_input(rng, (2,), 40, 12, zero=True)
    W = rng.integers(-127, 128, (3, 40)).astype(np.int8)
    w_m, w_e = channel_scales(rng, 3)
    with pytest.raises(ValueError, match="X holds int16 codes, abits=8 gives int8"):
        ri.di_matmul(*x, W, w_m, w_e, 8)
    with pytest.raises(ValueError, match="X holds int8 codes, abits=12 gives int16"):
        ri.di_matmul(x[0].astype(np.int8), *x[1:], W, w_m, w_e, 8, abits=12)
    bad = x[0].copy()
    bad[1, 5] = 2048
    with pytest.raises(ValueError, match="X has a code outside the 12-bit range: 2048"):
        ri.di_matmul(bad, *x[1:], W, w_m, w_e, 8, abits=12)
    with pytest.raises(ValueError, match="x_zero has a code outside the 12-bit range: -2049"):
        ri.di_matmul(*x, W, w_m, w_e, 8, x_zero=np.full((2, 1), -2049, np.int32), abits=12)
    K = ri.di_matmul_max_k(12, False, True) + 1
    with pytest.raises(ValueError, match=f"K={K} exceeds {K - 1}"):
        ri.di_matmul(np.zeros((1, K), np.int16), x[1][:1], x[2][:1], np.zeros((1, K), np.int8), w_m[:1], w_e[:1], 8,
                     x_zero=np.zeros((1, 1), np.int32), abits=12)


def test_max_k_at_eight_bits_is_the_int8_bound():
    assert ri.di_matmul_max_k(8, False, False) == ri.MAX_K == ri.di_matmul_max_k(4, False, False)
    assert ri.di_matmul_max_k(8, True, False) == ri.MAX_K_ZERO
    assert ri.di_matmul_max_k(8, False, True) == ri.di_matmul_max_k(8, True, True) == ri.MAX_K_X_ZERO
    assert ri.di_matmul_max_k(12, True, True) == 2047
    # the bound is tight: K products of the extreme differences stay below 2^31, one more would not
    for abits in (9, 12, 16):
        for w_zero, x_zero in ((False, False), (True, False), (True, True)):
            K = ri.di_matmul_max_k(abits, w_zero, x_zero)
            x_span = (1 << abits) - 1 if x_zero else 1 << (abits - 1)
            w_span = 255 if w_zero or x_zero else 128
            assert K * x_span * w_span < 1 << 31


# ---------------------------------------------------------------------------------------------------------
# CPU and CUDA kernels, bit-exact


@pytest.mark.parametrize("seed", range(16))
def test_matmul_wide_inputs_bit_exact(matmul_kernel, seed):
    """Every GEMM kernel, abits 9..16, random odd shapes (one-token rows included) up to the K bound, zero points on
    either side, int8 or int16 outputs, codes at both ends of abits every other case."""
    rng = np.random.default_rng(9300 + seed)
    abits = [9, 10, 12, 14, 16][seed % 5]
    w_zero_on, x_zero_on = seed % 4 in (1, 3), seed % 4 >= 2
    limit = ri.di_matmul_max_k(abits, w_zero_on, x_zero_on)
    lead, N = ((1,) if seed % 3 == 0 else lead_shape(rng, 129)), odd_size(rng, 150)
    K = min(limit, odd_size(rng, 577))
    x, x_zero = wide_input(rng, lead, K, abits, saturate=seed % 2 == 0, zero=x_zero_on,
                           full_mantissas=seed % 3 == 1)
    W = rng.integers(-128, 128, (N, K)).astype(np.int8)
    w_zero = rng.integers(-128, 128, N).astype(np.int8) if w_zero_on else None
    w_m, w_e = channel_scales(rng, N, spread=[0, 6, 16, 40][seed % 4], signed=seed % 3 == 0)
    obits = [8, 12, 16][seed % 3]
    y = assert_bit_exact(matmul_kernel, "DIMatMul", matmul_args(x, x_zero, W, w_m, w_e, w_zero), K=K, N=N,
                         abits=abits, wbits=8, obits=obits)
    assert y[0].dtype == (np.int16 if obits > 8 else np.int8)


@pytest.mark.parametrize("abits, zero", [(9, True), (12, True), (15, False), (16, False)])
def test_matmul_wide_inputs_of_many_rows(matmul_kernel, abits, zero):
    """Prefill's shape: 134 rows, K and N multiples of 4, so cuBLAS takes int16 codes of at most 15 bits as two int8
    planes (x = 256 hi + lo; 16-bit codes stay on the tiled kernel); codes at both ends of abits in every row."""
    rng = np.random.default_rng(9500 + abits)
    K = min(576, ri.di_matmul_max_k(abits, zero, zero)) // 4 * 4
    x, x_zero = wide_input(rng, (2, 67), K, abits, saturate=True, zero=zero)
    W = rng.integers(-128, 128, (100, K)).astype(np.int8)
    w_zero = rng.integers(-128, 128, 100).astype(np.int8) if zero else None
    w_m, w_e = channel_scales(rng, 100, spread=16, signed=True)
    assert_bit_exact(matmul_kernel, "DIMatMul", matmul_args(x, x_zero, W, w_m, w_e, w_zero), K=K, N=100, abits=abits,
                     wbits=8, obits=16)


@pytest.mark.parametrize("rows", [1, 3, 9])
def test_matmul_wide_inputs_largest_accumulator(matmul_kernel, rows):
    """abits 12 with both zero points at K = 2047: (X - x_zero)(W - w_zero) = (-4095)(-255) per product, summing to
    2,137,528,575 (2^31 - 9,955,073), the largest the bound allows; half-size channels beside it. Few and many rows."""
    K = ri.di_matmul_max_k(12, True, True)
    X = np.full((rows, K), -2048, np.int16)
    X[-1, ::3] = 2047
    W = np.full((4, K), -128, np.int8)
    W[1] = 127
    W[2, : K // 2] = 127
    W[3, ::2] = 0
    w_zero = np.array([127, -128, 127, 127], np.int8)
    x_zero = np.full((rows, 1), 2047, np.int32)
    m = np.full((rows, 1), ri.M_MAX, np.int32)
    e = np.arange(rows, dtype=np.int8).reshape(rows, 1) * 7
    w_m = np.array([ri.M_MAX, ri.M_MAX, 1 << 14, ri.M_MAX], np.int32)
    w_e = np.array([10, 10, 10, 12], np.int8)
    args = matmul_args((X, m, e), x_zero, W, w_m, w_e, w_zero)
    y = assert_bit_exact(matmul_kernel, "DIMatMul", args, K=K, N=4, abits=12, wbits=8, obits=16)
    assert np.abs(y[0].astype(np.int64)).max() == (1 << 15) - 1


@pytest.mark.parametrize("seed", range(12))
def test_norm_wide_outputs_bit_exact(target, seed):
    """int8 or int16 X, obits 9..16, symmetric (with a learned clip every third case) or with zero points, rows of
    one token up to 4099 values (the CUDA ops spread those over blocks), exponents at the int8 ends every fourth."""
    rng = np.random.default_rng(9400 + seed)
    rows = [1, 3, int(rng.integers(4, 60))][seed % 3]
    C = [4099, 577, odd_size(rng, 1001)][seed % 3]
    e_range = (-128, 127) if seed % 4 == 3 else (8, 30)
    x = (activation16 if seed % 2 else activation)(rng, (rows, C), e_range=e_range, saturate=seed % 5 == 0)
    if rows > 1:
        x[0][0] = 0  # an all-zero row
    g_m, g_e = channel_scales(rng, C, spread=int(rng.integers(0, 20)), signed=seed % 2 == 0)
    obits = [9, 12, 16][seed % 3]
    act_sym = seed % 2
    clip = {"clip_q15": int(rng.integers(1 << 13, 1 << 15))} if act_sym and seed % 3 == 0 else {}
    y = assert_bit_exact(target, "DINorm", [*x, g_m, g_e], eps_q60=eps_q60(1e-5), obits=obits, act_sym=act_sym,
                         **clip)
    assert y[0].dtype == np.int16


# ---------------------------------------------------------------------------------------------------------
# Schema and bad inputs


def infer(op, inputs, outputs, **attrs):
    node = helper.make_node(op, [i[0] for i in inputs], outputs, domain="edgeq", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(*i) for i in inputs],
                              [helper.make_empty_tensor_value_info(o) for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), opset_import()], ir_version=9)
    out = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True).graph.output
    return [o.type.tensor_type.elem_type for o in out]


def head_inputs(code, K=576, N=24, zero=True):
    inputs = [("X", code, ["t", K]), ("x_m", TP.INT32, ["t", 1]), ("x_e", TP.INT8, ["t", 1]), ("W", TP.INT8, [N, K]),
              ("w_m", TP.INT32, [N]), ("w_e", TP.INT8, [N])]
    if zero:
        inputs += [("w_zero", TP.INT8, [N]), ("x_zero", TP.INT32, ["t", 1]), ("w_sum", TP.INT32, [N])]
    return inputs


def test_schema_types_the_wide_head():
    norm = [("X", TP.INT16, ["t", 7]), ("x_m", TP.INT32, ["t", 1]), ("x_e", TP.INT8, ["t", 1]), ("g_m", TP.INT32, [7]),
            ("g_e", TP.INT8, [7])]
    assert infer("DINorm", norm, ["Y", "y_m", "y_e", "y_zero"], eps_q60=0, obits=12, act_sym=0) == [
        TP.INT16, TP.INT32, TP.INT8, TP.INT32]
    assert infer("DINorm", norm, ["Y", "y_m", "y_e"], eps_q60=0, obits=8)[0] == TP.INT8
    assert infer("DIMatMul", head_inputs(TP.INT16), ["Y", "y_m", "y_e"], K=576, N=24, abits=12, wbits=8,
                 obits=16)[0] == TP.INT16


@pytest.mark.parametrize("code, attrs, match", [
    (TP.INT16, dict(abits=8), "X is int16, abits=8 gives int8 codes"),
    (TP.INT8, dict(abits=12), "X is int8, abits=12 gives int16 codes"),
    (TP.INT16, dict(abits=12, K=2048), "K=2048 at abits=12 with w_zero and x_zero exceeds 2047"),
    (TP.INT16, dict(abits=17), "attribute abits=17: must be in 2..16"),
])
def test_schema_refuses(code, attrs, match):
    attrs = {"K": 576, "N": 24, "wbits": 8, "obits": 16, **attrs}
    with pytest.raises(Exception, match=match):
        infer("DIMatMul", head_inputs(code, K=attrs["K"]), ["Y", "y_m", "y_e"], **attrs)


def fails(library, op, args, match, **attrs):
    with pytest.raises(Exception, match=f"edgeq::{op} node 'n0': {match}"):
        run(library, op, args, **attrs)


def test_matmul_refuses_what_the_int32_bound_does_not_cover(cpu_library):
    rng = np.random.default_rng(1)
    x, x_zero = wide_input(rng, (3,), 50, 12, zero=True)
    W = rng.integers(-127, 128, (4, 50)).astype(np.int8)
    w_m, w_e = channel_scales(rng, 4)
    attrs = dict(K=50, N=4, abits=12, wbits=8, obits=16)
    bad = x[0].copy()
    bad[2, 7] = -2049
    fails(cpu_library, "DIMatMul", matmul_args((bad, *x[1:]), x_zero, W, w_m, w_e, None),
          r"X holds -2049 at flat index 107, outside the 12-bit codes \[-2048, 2047\] of abits=12", **attrs)
    fails(cpu_library, "DIMatMul", matmul_args(x, np.full((3, 1), 4096, np.int32), W, w_m, w_e, None),
          r"x_zero holds 4096 at flat index 0, outside the 12-bit codes", **attrs)
    fails(cpu_library, "DIMatMul", matmul_args((x[0].astype(np.int8), *x[1:]), x_zero, W, w_m, w_e, None),
          "X is int8, but abits=12 gives int16 codes", **attrs)
    K = 2048
    big, _ = wide_input(rng, (1,), K, 12)
    fails(cpu_library, "DIMatMul", matmul_args(big, np.zeros((1, 1), np.int32), np.zeros((2, K), np.int8),
                                               w_m[:2], w_e[:2], None),
          "K=2048 at abits=12 with x_zero exceeds 2047", **dict(attrs, K=K, N=2))


def test_norm_refuses_an_output_type_obits_does_not_give(cpu_library):
    rng = np.random.default_rng(2)
    x = activation16(rng, (2, 5))
    g = channel_scales(rng, 5)
    fails(cpu_library, "DINorm", [*x, *g], "Y is int8, but obits=12 gives int16 codes", eps_q60=0, obits=12,
          y_type=TP.INT8)
    fails(cpu_library, "DINorm", [*x, *g], "attribute obits=17 must be in 2..16", eps_q60=0, obits=17,
          y_type=TP.INT16)


def test_ops_schema_lists_int16_activations():
    assert "tensor(int16)" in OPS["DIMatMul"].type_constraints["TX"]
    assert "tensor(int16)" in OPS["DINorm"].type_constraints["TY"]
