"""The integer references against the float math they approximate, with the tolerances README.md states
("Integer-only ops"), their primitives, and a check that reference_integer.py really contains no float math.

Errors are per element, in units of the op's output step (the dequantized scale ``m * 2**-e`` of the row): a
perfect quantizer of the exact result is off by at most 0.5 step, so 0.5 + x means the integer math itself
(15-bit scale mantissas, the exp polynomial, Q14 tables) adds at most x step."""

import ast
import inspect
import math

import numpy as np
import pytest

from edgeq.custom_ops import reference_integer as ri
from edgeq.custom_ops.integer_codec import dequantize, eps_q60, quantize, rotary_tables, to_dyadic

from .integer_problems import WIDTHS, activation, channel_scales

# 0.5 (the output rounding) + qmax times the relative error of the integer math: 2^-15 per 15-bit mantissa,
# 9e-5 per exp polynomial (twice for DIExp and the softmax: the codes and the scale), 2^-15 per Q14 table entry.
STEP_TOLERANCE = {"DIMatMul": 0.505, "DIAdd": 0.505, "DINorm": 0.51, "DISwiGLU": 0.52, "DIRotary": 0.52,
                  "DIExp": 0.525, "DIClippedSoftmax": 0.55}


def steps_off(y, m, e, exact) -> float:
    """Largest |dequantized y - exact| in units of the row's step."""
    return float((np.abs(dequantize(y, m, e) - exact) / dequantize(1, m, e)).max())


@pytest.fixture(params=WIDTHS, ids=[f"W{w}A{a}" for w, a in WIDTHS])
def bits(request):
    return request.param[1]


def test_matmul_is_the_float_matmul_of_the_dequantized_inputs(bits):
    rng = np.random.default_rng(bits)
    x = activation(rng, (64, 333), bits, full_mantissas=True)
    W = rng.integers(-(1 << (bits - 1)) + 1, 1 << (bits - 1), (45, 333)).astype(np.int8)
    w_m, w_e = channel_scales(rng, 45, spread=16)  # within the exact alignment window
    exact = dequantize(*x) @ dequantize(W, w_m[:, None], w_e[:, None]).T
    assert steps_off(*ri.di_matmul(*x, W, w_m, w_e, bits), exact) <= STEP_TOLERANCE["DIMatMul"]


def test_add_is_the_float_sum(bits):
    rng = np.random.default_rng(10 + bits)
    a, b = activation(rng, (64, 301), bits), activation(rng, (64, 301), bits, e_range=(0, 43))
    assert steps_off(*ri.di_add(*a, *b, bits), dequantize(*a) + dequantize(*b)) <= STEP_TOLERANCE["DIAdd"]


@pytest.mark.parametrize("eps", [0.0, 1e-5, 1.5])
def test_norm_is_float_rmsnorm(bits, eps):
    rng = np.random.default_rng(20 + bits)
    x = activation(rng, (64, 577), bits, e_range=(8, 20), full_mantissas=True)
    g_m, g_e = channel_scales(rng, 577, spread=8, signed=True)
    xf = dequantize(*x)
    exact = xf / np.sqrt((xf**2).mean(-1, keepdims=True) + eps) * dequantize(g_m, 1, g_e)
    y = ri.di_norm(*x, g_m, g_e, eps_q60=eps_q60(eps), obits=bits)
    assert steps_off(*y, exact) <= STEP_TOLERANCE["DINorm"]


def test_swiglu_is_float_silu_times_up(bits):
    rng = np.random.default_rng(30 + bits)
    gate = activation(rng, (64, 1001), bits, e_range=(bits + 8, bits + 16), full_mantissas=True)
    up = activation(rng, (64, 1001), bits, e_range=(0, 30))
    g = dequantize(*gate)
    exact = g / (1 + np.exp(-g)) * dequantize(*up)
    assert steps_off(*ri.di_swiglu(*gate, *up, bits), exact) <= STEP_TOLERANCE["DISwiGLU"]


@pytest.mark.parametrize("interleaved", [0, 1])
def test_rotary_is_the_exact_rotation(bits, interleaved):
    rng = np.random.default_rng(40 + bits)
    B, S, H, D, P = 2, 33, 3, 64, 4096
    cos, sin = rotary_tables(P, D)
    x = activation(rng, (B, S, H, D), bits, full_mantissas=True)
    pos = rng.integers(0, P, (B, S))
    angle = pos[:, :, None, None] * 10000.0 ** (-np.arange(0, D, 2) / D)
    xf = dequantize(*x)
    a, b = (xf[..., 0::2], xf[..., 1::2]) if interleaved else (xf[..., : D // 2], xf[..., D // 2:])
    first, second = a * np.cos(angle) - b * np.sin(angle), b * np.cos(angle) + a * np.sin(angle)
    exact = np.stack([first, second], -1).reshape(xf.shape) if interleaved else np.concatenate([first, second], -1)
    y = ri.di_rotary(*x, pos, cos, sin, interleaved=interleaved, obits=bits)
    assert steps_off(*y, exact) <= STEP_TOLERANCE["DIRotary"]


@pytest.mark.parametrize("clip", [1 << 14, 30000, 1])
def test_clipped_dyn_quant_saturates_beyond_the_clipped_range(clip):
    """clip_q15 shrinks the row range to A * clip / 2^15: codes are round(v * qmax / A') inside it (within half a
    step of the exact value) and +-qmax beyond; the scale is A' / qmax."""
    rng = np.random.default_rng(60)
    v = rng.integers(-(10**9), 10**9, 4001)
    q, m, e = ri.dyn_quant(v, 1, 0, 127, clip)
    A = ri.rshr(int(np.abs(v).max()), 0)
    Ac = max(1, ri.rshr(A * clip, 15))
    step = m * 2.0 ** -e
    assert abs(step * 127 / Ac - 1) < 2**-13
    inside = np.abs(v) <= Ac * (1 - 1 / 127)
    if inside.any():  # (clip 1: the range is A / 2^15, nearly every value saturates)
        assert np.abs(q[inside] * step - v[inside]).max() <= 0.5 * step * (1 + 1e-3)
    assert (np.abs(q[~inside]) >= 126).all() and np.abs(q.astype(int)).max() == 127


def test_rotary_heads_first_is_the_transposed_output():
    rng = np.random.default_rng(41)
    cos, sin = rotary_tables(64, 8)
    x = activation(rng, (2, 5, 3, 8))
    pos = rng.integers(0, 64, (2, 5))
    plain = ri.di_rotary(*x, pos, cos, sin, interleaved=0, obits=8)
    first = ri.di_rotary(*x, pos, cos, sin, interleaved=0, obits=8, heads_first=1)
    for a, b in zip(plain, first):
        np.testing.assert_array_equal(a.transpose(0, 2, 1, 3), b)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_batch_matmul_grouped_heads_equal_repeated_heads(trans_b):
    """B with 2 heads against A's 6: head h reads B's head h // 3, exactly as if B's heads were repeated."""
    rng = np.random.default_rng(42)
    A = activation(rng, (1, 6, 4, 16))
    B = activation(rng, (1, 2, 9, 16) if trans_b else (1, 2, 16, 9))
    repeated = [np.repeat(t, 3, axis=1) for t in B]
    for a, b in zip(ri.di_batch_matmul(*A, *B, trans_b=trans_b), ri.di_batch_matmul(*A, *repeated, trans_b=trans_b)):
        np.testing.assert_array_equal(a, b)


def test_exp_is_float_exp(bits):
    rng = np.random.default_rng(50 + bits)
    x = activation(rng, (64, 300), bits, e_range=(bits + 8, bits + 16), full_mantissas=True)
    exact = np.exp(dequantize(*x))
    y = ri.di_exp(*x, bits)
    assert steps_off(*y, exact) <= STEP_TOLERANCE["DIExp"]
    # the largest element of each row is exp(max x) within the polynomial's relative error and one code step
    top = np.take_along_axis(dequantize(*y), exact.argmax(-1)[:, None], -1)
    assert np.abs(top / exact.max(-1, keepdims=True) - 1).max() <= 9e-5 + 0.5 / ((1 << (bits - 1)) - 1)


@pytest.mark.parametrize("clip", [0.0, 15.0, 4.5])
@pytest.mark.parametrize("obits", [8, 4])
def test_clipped_softmax_is_float_softmax_of_the_clipped_scores(clip, obits):
    rng = np.random.default_rng(int(clip) + obits)
    x = activation(rng, (3, 50, 70), e_range=(15, 19), full_mantissas=True)  # scores within about +-40
    mask = rng.random((3, 1, 70)) < 0.8
    visible = mask & ri.causal_allowed((3, 50, 70))
    s = np.where(visible, dequantize(*x), -np.inf)
    top = s.max(-1, keepdims=True)
    if clip:
        s = np.where(visible, np.maximum(s, top - clip), -np.inf)
    with np.errstate(invalid="ignore"):
        p = np.exp(s - top)
        p = np.where(visible.any(-1, keepdims=True), p / p.sum(-1, keepdims=True), 0)
    y = ri.di_clipped_softmax(*x, mask, clip_q8=int(clip * 256), is_causal=1, obits=obits)
    assert steps_off(*y, p) <= STEP_TOLERANCE["DIClippedSoftmax"]
    assert np.abs(dequantize(*y).sum(-1)[visible.any(-1)] - 1).max() < 70 * 0.5 / ((1 << obits) - 1)


# ---------------------------------------------------------------------------------------------------------
# Primitives


def test_exp2_polynomial_error():
    t = np.arange(0, 3 << ri.EXP_FRAC, 997, dtype=np.int64)
    exact = 2.0 ** (-t / 2.0**ri.EXP_FRAC) * 2**30
    assert (np.abs(ri.exp2_neg(t) - exact) <= 9e-5 * exact + 1).all()
    assert ri.exp2_neg(np.int64(0)) == 1 << 30 and ri.exp2_neg(np.int64(ri.EXP_CAP)) == 0


@pytest.mark.parametrize("num, den", [(1, 1), (3, 7), (2**62, 3), (5, 2**62), (2**31 - 1, 127), (2**15 - 1, 1)])
def test_ratio_is_a_normalized_rounding(num, den):
    m, k = ri.ratio(num, den)
    assert 1 << 14 <= m < 1 << 15
    assert abs(m - num * 2.0**k / den) <= 0.5  # the nearest 15-bit mantissa


def test_rms_scale_matches_float():
    rng = np.random.default_rng(3)
    for _ in range(50):
        q = rng.integers(-128, 128, int(rng.integers(1, 600))).astype(np.int64)
        m, e, eps = int(rng.integers(1, 1 << 15)), int(rng.integers(-128, 128)), int(rng.integers(0, 1 << 61))
        if not q.any():
            continue
        r, er = ri.rms_scale(q, m, e, eps)
        assert 1 << 30 <= r < 1 << 31
        exact = math.sqrt(float((q.astype(float) ** 2).mean()) * (m * 2.0**-e) ** 2 + eps * 2.0**-60)
        assert abs(r * 2.0**-er / exact - 1) < 1e-8


def test_codec_round_trip():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((20, 77)) * rng.choice([1e-6, 1.0, 300.0], (20, 1))
    q, m, e = quantize(x, 8)
    assert (np.abs(dequantize(q, m, e) - x) <= 0.5 * dequantize(1, m, e) * (1 + 2**-13)).all()
    m, e = to_dyadic(np.array([1.0, -0.375, 3e-30, 0.0]))
    assert dequantize(1, m, e).tolist()[:2] == [1.0, -0.375] and m[3] == 0


def test_reference_has_no_float_math():
    """No float literal, true division, float dtype or float function anywhere in reference_integer.py."""
    tree = ast.parse(inspect.getsource(ri))
    forbidden_names = {"float", "float16", "float32", "float64", "exp", "log", "sqrt", "exp2", "log2", "frexp",
                       "ldexp", "rint", "round", "floor", "ceil", "true_divide", "divide", "pow", "power"}
    for node in ast.walk(tree):
        assert not (isinstance(node, ast.Constant) and isinstance(node.value, float)), ast.dump(node)
        assert not (isinstance(node, (ast.BinOp, ast.AugAssign)) and isinstance(node.op, (ast.Div, ast.Pow))), \
            ast.unparse(node)
        if isinstance(node, ast.Attribute):
            assert node.attr not in forbidden_names, ast.unparse(node)
        if isinstance(node, ast.Name):
            assert node.id not in forbidden_names, node.id


def test_batch_matmul_is_the_float_attention_of_the_dequantized_inputs():
    """Scores (trans_b=1, causal) and contexts (trans_b=0) within half a step of the float products: the wide
    int32 output rounds once, at 2^-30 of the row's largest value; exponents within the alignment window."""
    rng = np.random.default_rng(11)
    Q, K, V = (activation(rng, s, e_range=(8, 24), full_mantissas=True) for s in ((2, 6, 32), (2, 9, 32), (2, 9, 20)))
    y, m, e = ri.di_batch_matmul(*Q, *K, trans_b=1, is_causal=1)
    exact = dequantize(*Q) @ np.swapaxes(dequantize(*K), -1, -2)
    visible = ri.causal_allowed(exact.shape)
    assert steps_off(y, m, e, np.where(visible, exact, 0)) <= 0.5
    P = np.where(visible, rng.integers(0, 256, exact.shape), 0).astype(np.uint8)
    p_m, p_e = activation(rng, (2, 6, 1), e_range=(20, 30))[1:]
    y, m, e = ri.di_batch_matmul(P, p_m, p_e, *V, trans_b=0)
    assert steps_off(y, m, e, dequantize(P, p_m, p_e) @ dequantize(*V)) <= 0.5


def test_requant_merges_rows_like_a_float_requantization(bits):
    rng = np.random.default_rng(12)
    X = activation(rng, (5, 4, 16), e_range=(8, 24), full_mantissas=True)
    y, m, e = ri.di_requant(*X, bits)
    assert steps_off(y, m, e, dequantize(*X).reshape(5, 64)) <= STEP_TOLERANCE["DIMatMul"]


# ---- asymmetric per-row codes (act_sym=0) and DIMatMul's x_zero


def asym_steps_off(y, m, e, z, exact) -> float:
    """Largest |dequantized (y - z) - exact| in units of the row's step."""
    return float((np.abs(dequantize(y.astype(np.int64) - z, m, e) - exact) / dequantize(1, m, e)).max())


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_asymmetric_quantization_is_within_a_step_and_spans_the_range(bits):
    rng = np.random.default_rng(bits)
    rows = [rng.integers(-(1 << 40), 1 << 40, 301), rng.integers(0, 1 << 20, 301),      # mixed; one-sided +
            -rng.integers(0, 1 << 50, 301), rng.integers(-5, 6, 301), np.zeros(301, np.int64)]  # one-sided -; tiny
    mid, levels = 1 << (bits - 1), (1 << bits) - 1
    for v in rows:
        v = np.asarray(v, np.int64)
        q, m, e, z = ri.dyn_quant_asym(v, 12345, 60, bits)
        exact = v.astype(np.float64) * 12345 * 2.0**-60
        assert q.dtype == np.int8 and -mid <= q.min() and q.max() <= mid - 1 and -mid <= z <= mid - 1
        if not v.any():
            assert not q.any() and z == 0 and (m, e) == ri.ZERO_SCALE
            continue
        # round(v/s) + round(-lo/s): half a step each, plus the scale's 15-bit mantissa over `levels` steps
        assert asym_steps_off(q, m, e, z, exact) <= 1.0 + levels * 2.0**-14
        u = q.astype(np.int64) + mid
        # the range's ends reach the grid's ends, up to the two roundings (round(lo/s) + round(-lo/s) may be 1)
        assert u.min() <= 1 or v.min() >= 0
        assert u.max() >= levels - 1 or v.max() <= 0
        if v.min() >= 0:
            assert z == -mid  # zp = 0: the grid starts at 0
        if v.max() <= 0:
            assert z == levels - mid


@pytest.mark.parametrize("bits", [4, 8])
def test_asymmetric_outputs_of_norm_swiglu_requant(bits):
    """act_sym=0 gives a fourth output, the zero points, and values at least as close as the symmetric codes'."""
    rng = np.random.default_rng(30 + bits)
    x = activation(rng, (16, 96), 8, e_range=(8, 20), full_mantissas=True)
    g_m, g_e = channel_scales(rng, 96, spread=8, signed=True)
    sym = ri.di_norm(*x, g_m, g_e, eps_q60=eps_q60(1e-5), obits=bits)
    asym = ri.di_norm(*x, g_m, g_e, eps_q60=eps_q60(1e-5), obits=bits, act_sym=0)
    assert len(sym) == 3 and len(asym) == 4 and asym[3].shape == (16, 1) and asym[3].dtype == np.int32
    xf = dequantize(*x)
    exact = xf / np.sqrt((xf**2).mean(-1, keepdims=True) + 1e-5) * dequantize(g_m, 1, g_e)
    err = lambda y, m, e, z=0: np.abs(dequantize(y.astype(np.int64) - z, m, e) - exact).max(-1)  # noqa: E731
    assert (err(*asym) <= err(*sym) * 1.05 + 1e-12).mean() > 0.9
    gate, up = activation(rng, (16, 96), 8), activation(rng, (16, 96), 8)
    assert len(ri.di_swiglu(*gate, *up, bits, act_sym=0)) == 4
    heads = activation(rng, (16, 4, 24), 8)
    q, m, e, z = ri.di_requant(*heads, bits, act_sym=0)
    assert q.shape == (16, 96) and z.shape == (16, 1)
    with pytest.raises(ValueError, match="needs symmetric codes"):
        ri.di_requant(*heads, bits, clip_q15=1 << 14, act_sym=0)


def test_matmul_with_x_zero_is_the_shifted_product():
    rng = np.random.default_rng(7)
    X = rng.integers(-128, 128, (9, 200)).astype(np.int8)
    x_m, x_e = rng.integers(1 << 14, 1 << 15, (9, 1)).astype(np.int32), rng.integers(10, 20, (9, 1)).astype(np.int8)
    x_zero = rng.integers(-128, 128, (9, 1)).astype(np.int32)
    W = rng.integers(-128, 128, (13, 200)).astype(np.int8)
    w_zero = rng.integers(-20, 20, 13).astype(np.int8)
    w_m, w_e = channel_scales(rng, 13, spread=16)
    y, m, e = ri.di_matmul(X, x_m, x_e, W, w_m, w_e, 8, w_zero=w_zero, x_zero=x_zero)
    exact = dequantize(X.astype(np.int64) - x_zero, x_m, x_e) @ dequantize(
        W.astype(np.int64) - w_zero[:, None], w_m[:, None], w_e[:, None]).T
    assert steps_off(y, m, e, exact) <= STEP_TOLERANCE["DIMatMul"]
    with pytest.raises(ValueError, match="exceeds 32767"):
        ri.di_matmul(np.zeros((1, 32768), np.int8), x_m[:1], x_e[:1], np.zeros((2, 32768), np.int8), w_m[:2],
                     w_e[:2], 8, x_zero=x_zero[:1])
