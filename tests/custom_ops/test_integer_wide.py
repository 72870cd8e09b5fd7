"""16-bit codes at the op level: DIAdd with int8 or int16 codes on either side and int8 (obits <= 8) or int16
(obits 9..16) output codes, DINorm of int16 codes, DIMatMul's int16 output codes (obits 9..16, for the projections
that feed the residual), DISwiGLU and DIRotary of int16 codes (the 16-bit gate/up and q/k projection outputs).
References against float, the CPU and CUDA kernels bit-exact against the references, and the errors for what the
ops refuse."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper

from edgeq.custom_ops import reference_integer as ri
from edgeq.custom_ops.integer_codec import dequantize, eps_q60
from edgeq.custom_ops.schema import OPS, opset_import

from .conftest import session
from .integer_problems import activation, activation16, assert_bit_exact, channel_scales, model, reference, run
from .integer_problems import matmul_kernel, target  # noqa: F401 (fixtures)
from .test_integer_ops import lead_shape, odd_size

SEEDS = range(12)


def operand(rng, shape, wide: bool, **kw):
    return activation16(rng, shape, **kw) if wide else activation(rng, shape, **kw)


def lead_and_size(rng):
    lead = tuple(int(d) for d in rng.integers(1, 6, rng.integers(1, 3)))
    return (*lead, int(rng.choice([1, 3, 7, 63, 577, 1001])))


# ---------------------------------------------------------------------------------------------------------
# References against float (errors in output steps, as test_integer_reference.py)


def steps_off(y, m, e, exact) -> float:
    return float((np.abs(dequantize(y, m, e) - exact) / dequantize(1, m, e)).max())


@pytest.mark.parametrize("wa, wb", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("obits", [8, 12, 16])
def test_add_of_int16_codes_is_the_float_sum(wa, wb, obits):
    rng = np.random.default_rng(obits * 4 + 2 * wa + wb)
    a = operand(rng, (64, 301), wa, full_mantissas=True)
    b = operand(rng, (64, 301), wb, e_range=(0, 35))  # within the 31-bit window of int16 sides
    y = ri.di_add(*a, *b, obits)
    assert y[0].dtype == (np.int16 if obits > 8 else np.int8)
    assert np.abs(y[0].astype(np.int64)).max() == (1 << (obits - 1)) - 1
    assert ((y[1] >= 1 << 14) & (y[1] < 1 << 15)).all()
    # 0.5 + qmax * 2^-15 (the 15-bit output mantissa) + the reciprocal's rounding
    tolerance = 0.5 + ((1 << (obits - 1)) - 1) * 2.0**-15 + 1e-3
    assert steps_off(*y, dequantize(*a) + dequantize(*b)) <= tolerance


@pytest.mark.parametrize("eps", [0.0, 1e-5, 1.5])
def test_norm_of_int16_codes_is_float_rmsnorm(eps):
    rng = np.random.default_rng(77)
    x = activation16(rng, (64, 577), e_range=(16, 28), full_mantissas=True)
    x[0][0, 5] = 32767 * 50 // 50  # a few channels far larger than the rest, as SmolLM2's residual
    g_m, g_e = channel_scales(rng, 577, spread=8, signed=True)
    xf = dequantize(*x)
    exact = xf / np.sqrt((xf**2).mean(-1, keepdims=True) + eps) * dequantize(g_m, 1, g_e)
    y = ri.di_norm(*x, g_m, g_e, eps_q60=eps_q60(eps), obits=8)
    assert y[0].dtype == np.int8
    assert steps_off(*y, exact) <= 0.51


def test_norm_int16_codes_that_fit_int8_give_the_int8_result():
    """Sums of squares below 2^31 are not rounded: int16 codes in the int8 range reproduce the int8 op."""
    rng = np.random.default_rng(3)
    x = activation(rng, (9, 333), saturate=True)
    g = channel_scales(rng, 333)
    wide = (x[0].astype(np.int16), x[1], x[2])
    for want, got in zip(ri.di_norm(*x, *g, eps_q60=7, obits=8), ri.di_norm(*wide, *g, eps_q60=7, obits=8)):
        np.testing.assert_array_equal(want, got)


@pytest.mark.parametrize("act_sym", [1, 0])
def test_swiglu_of_int16_codes_is_float_silu_times_up(act_sym):
    rng = np.random.default_rng(11 + act_sym)
    g = activation16(rng, (64, 301), e_range=(24, 28), full_mantissas=True)  # |gate| up to 2^30 * 2^-24 = 64
    u = activation16(rng, (64, 301), e_range=(20, 26))
    gf, uf = dequantize(*g), dequantize(*u)
    exact = gf / (1 + np.exp(-gf)) * uf
    y = ri.di_swiglu(*g, *u, 8, act_sym=act_sym)
    assert y[0].dtype == np.int8
    codes = y[0].astype(np.int64) - (y[3] if act_sym == 0 else 0)  # asymmetric codes: minus the row's zero point
    # 0.5 step of rounding plus the Q30 sigmoid's and the 15-bit scale's relative errors (a few 1e-4 of the row max)
    assert steps_off(codes, y[1], y[2], exact) <= 0.52


@pytest.mark.parametrize("interleaved", [0, 1])
def test_rotary_of_int16_codes_is_the_float_rotation(interleaved):
    from edgeq.custom_ops.integer_codec import rotary_tables

    rng = np.random.default_rng(21 + interleaved)
    B, S, H, D = 2, 9, 3, 64
    cos, sin = rotary_tables(S, D)
    x = activation16(rng, (B, S, H * D), e_range=(10, 20), full_mantissas=True)
    pos = np.tile(np.arange(S), (B, 1))
    y = ri.di_rotary(*x, pos, cos, sin, interleaved=interleaved, obits=8)
    xf = dequantize(*x).reshape(B, S, H, D)
    c, s_ = (t[pos][:, :, None, :] / 2.0**14 for t in (cos.astype(np.float64), sin.astype(np.float64)))
    a, b = (xf[..., 0::2], xf[..., 1::2]) if interleaved else (xf[..., : D // 2], xf[..., D // 2:])
    first, second = a * c - b * s_, b * c + a * s_
    exact = np.stack([first, second], -1).reshape(B, S, H, D) if interleaved else np.concatenate([first, second], -1)
    assert y[0].dtype == np.int8
    assert steps_off(*y, exact) <= 0.5 + 2e-3  # the Q14 tables' rounding on top of the output step


def test_swiglu_and_rotary_int16_codes_that_fit_int8_give_the_int8_result():
    """Both ops compute exactly before the final requantization: int16 codes in the int8 range reproduce them."""
    from edgeq.custom_ops.integer_codec import rotary_tables

    rng = np.random.default_rng(4)
    g, u = activation(rng, (7, 99), saturate=True), activation(rng, (7, 99))
    wide = lambda a: (a[0].astype(np.int16), *a[1:])  # noqa: E731
    for want, got in zip(ri.di_swiglu(*g, *u, 6, act_sym=0), ri.di_swiglu(*wide(g), *wide(u), 6, act_sym=0)):
        np.testing.assert_array_equal(want, got)
    x, (cos, sin) = activation(rng, (1, 5, 2 * 16), saturate=True), rotary_tables(5, 16)
    pos = np.arange(5)[None]
    for want, got in zip(ri.di_rotary(*x, pos, cos, sin, interleaved=0, obits=8),
                         ri.di_rotary(*wide(x), pos, cos, sin, interleaved=0, obits=8)):
        np.testing.assert_array_equal(want, got)


def matmul_problem(rng, lead, K, N, *, saturate=False, spread=16, **kw):
    x = activation(rng, (*lead, K), saturate=saturate, **kw)
    W = rng.integers(-127, 128, (N, K)).astype(np.int8)
    if saturate:
        W[:, 0], W[:, -1] = -128, 127
    return [*x, W, *channel_scales(rng, N, spread=spread, signed=True)]


def matmul_attrs(args, obits):
    return dict(K=args[3].shape[1], N=args[3].shape[0], abits=8, wbits=8, obits=obits)


@pytest.mark.parametrize("obits", [8, 12, 16])
def test_matmul_with_int16_codes_is_the_float_matmul(obits):
    """Channels within the exact alignment window: the only errors are the output rounding, the 15-bit output
    mantissa (qmax * 2^-15 steps: about one step at 16 bits) and the reciprocal's rounding."""
    rng = np.random.default_rng(400 + obits)
    x_q, x_m, x_e, W, w_m, w_e = matmul_problem(rng, (64,), 333, 45, full_mantissas=True)
    exact = dequantize(x_q, x_m, x_e) @ dequantize(W, w_m[:, None], w_e[:, None]).T
    y = ri.di_matmul(x_q, x_m, x_e, W, w_m, w_e, obits)
    qmax = (1 << (obits - 1)) - 1
    assert y[0].dtype == (np.int16 if obits > 8 else np.int8) and y[0].shape == (64, 45)
    assert (np.abs(y[0].astype(np.int64)).max(-1) == qmax).all()  # each row's largest value maps to qmax
    assert ((y[1] >= 1 << 14) & (y[1] < 1 << 15)).all()
    assert steps_off(*y, exact) <= 0.5 + qmax * 2.0**-15 + 1e-3


def test_matmul_int16_codes_refine_the_int8_ones():
    """The same problem at 8 and 16 bits: the 16-bit codes, brought to the 8-bit step, round to the 8-bit codes
    within one step (both quantize the same P, a 2^8 finer grid)."""
    rng = np.random.default_rng(5)
    args = matmul_problem(rng, (31,), 200, 77, saturate=True)
    y8, y16 = ri.di_matmul(*args, 8), ri.di_matmul(*args, 16)
    assert y8[0].dtype == np.int8 and y16[0].dtype == np.int16
    np.testing.assert_allclose(dequantize(*y16), dequantize(*y8), rtol=0, atol=float(dequantize(1, *y8[1:]).max()))


def test_add_refuses_other_codes_and_widths():
    rng = np.random.default_rng(0)
    a = activation(rng, (2, 5))
    with pytest.raises(ValueError, match="A must hold int8 or int16 codes, got int32"):
        ri.di_add(a[0].astype(np.int32), *a[1:], *a, 8)
    with pytest.raises(ValueError, match="bits must be in 2..16, got 17"):
        ri.di_add(*a, *a, 17)
    with pytest.raises(ValueError, match="X must hold int8 or int16 codes, got int32"):
        ri.di_norm(a[0].astype(np.int32), *a[1:], *channel_scales(rng, 5), eps_q60=0, obits=8)


@pytest.mark.parametrize("obits", [1, 17])
def test_matmul_reference_refuses_obits_outside_2_16(obits):
    args = matmul_problem(np.random.default_rng(0), (2,), 5, 3)
    with pytest.raises(ValueError, match=f"bits must be in 2..16, got {obits}"):
        ri.di_matmul(*args, obits)


# ---------------------------------------------------------------------------------------------------------
# CPU and CUDA kernels, bit-exact


@pytest.mark.parametrize("seed", SEEDS)
def test_add_bit_exact(target, seed):
    """Every (A, B) code type pair, output widths 2..16, exponents over the whole int8 range every third case
    (saturation, flush and gaps beyond both windows), both int16 ends."""
    rng = np.random.default_rng(9000 + seed)
    wa, wb = bool(seed & 1), bool(seed & 2)
    obits = int(rng.choice([2, 4, 8, 9, 12, 15, 16]))
    shape = lead_and_size(rng)
    wide_e = seed % 3 == 0
    a = operand(rng, shape, wa, e_range=(-128, 127) if wide_e else (0, 12), saturate=seed % 2 == 0,
                full_mantissas=seed % 4 < 2)
    b = operand(rng, shape, wb, e_range=(-128, 127) if wide_e else (0, 50), saturate=True)
    assert_bit_exact(target, "DIAdd", [*a, *b], obits=obits)


@pytest.mark.parametrize("wa, wb", [(True, False), (False, True), (True, True)])
def test_add_int16_limits_and_windows(target, wa, wb):
    """Codes at +-32767 with the largest mantissa, exponent gaps at and past the 31-bit window, extreme exponents,
    and b = -a at equal scales (an all-zero row)."""
    q = np.tile(np.array([[-32767, 32767, 1, -1, 16384]], np.int64), (7, 1))
    m = np.full((7, 1), ri.M_MAX, np.int32)
    ea = np.array([[0], [0], [-128], [127], [10], [-128], [0]], np.int8)
    eb = np.array([[31], [32], [127], [-128], [10], [-128], [39]], np.int8)
    qa = q.astype(np.int16) if wa else np.clip(q, -128, 127).astype(np.int8)
    qb = (-q).astype(np.int16) if wb else np.clip(-q, -128, 127).astype(np.int8)
    for obits in (8, 16):
        y = assert_bit_exact(target, "DIAdd", [qa, m, ea, qb, m, eb], obits=obits)
        if wa == wb:
            assert (y[0][4] == 0).all() and y[1][4, 0] == ri.ZERO_SCALE[0]


@pytest.mark.parametrize("seed", SEEDS)
def test_norm_int16_bit_exact(target, seed):
    rng = np.random.default_rng(9100 + seed)
    shape = lead_and_size(rng)
    e_range = (-128, 127) if seed % 3 == 0 else (8, 30)
    x = activation16(rng, shape, e_range=e_range, saturate=seed % 2 == 0, full_mantissas=seed % 2 == 1)
    if seed == 5:
        x[0][...] = 32767  # the largest sum of squares per channel
    g_m, g_e = channel_scales(rng, shape[-1], spread=int(rng.integers(0, 20)), signed=seed % 2 == 0)
    eps = int(rng.choice([0, eps_q60(1e-5), (1 << 61) - 1]))
    assert_bit_exact(target, "DINorm", [*x, g_m, g_e], eps_q60=eps, obits=int(rng.choice([4, 6, 8])))


@pytest.mark.parametrize("seed", SEEDS)
def test_swiglu_int16_bit_exact(target, seed):
    """Gate and up of int16 codes (both ends every other case), symmetric and asymmetric outputs, learned clips,
    rows long enough to be split over blocks on CUDA, exponents over the whole int8 range every third case."""
    rng = np.random.default_rng(9300 + seed)
    shape = (*lead_shape(rng), odd_size(rng, 1536)) if seed % 4 else (int(rng.choice([1, 3])), 4099)
    wide_e = seed % 3 == 0
    g = activation16(rng, shape, e_range=(-128, 127) if wide_e else (8, 16), saturate=seed % 2 == 0,
                     full_mantissas=seed % 2 == 1)
    u = activation16(rng, shape, e_range=(-128, 127) if wide_e else (8, 30), saturate=seed % 4 == 1)
    clip = [ri.CLIP_ONE, 9000, 1, 30000][seed % 4] if seed % 2 else ri.CLIP_ONE  # clips: symmetric codes only
    attrs = dict(obits=int(rng.choice([4, 6, 8])), act_sym=seed % 2, clip_q15=clip)
    assert_bit_exact(target, "DISwiGLU", [*g, *u], **attrs)


@pytest.mark.parametrize("seed", SEEDS)
def test_rotary_int16_bit_exact(target, seed):
    """X of int16 codes as a projection's [B, S, H*D] or as [B, S, H, D] with per-head or per-token scales, both
    pairings, both layouts, odd head dims."""
    from edgeq.custom_ops.integer_codec import rotary_tables

    rng = np.random.default_rng(9400 + seed)
    B, S, H = int(rng.integers(1, 3)), int(rng.integers(1, 40)), int(rng.integers(1, 5))
    D = int(rng.choice([2, 6, 64, 18]))
    P = int(rng.integers(S, 2 * S + 2))
    cos, sin = rotary_tables(P, D)
    x = activation16(rng, (B, S, H * D), e_range=(-128, 127) if seed % 4 == 0 else (0, 20), saturate=seed % 2 == 0,
                     full_mantissas=seed % 3 == 0)
    if seed % 3 == 1:  # [B, S, H, D] with one scale per (token, head)
        x = (x[0].reshape(B, S, H, D), *activation(rng, (B, S, H, 1))[1:])
    elif seed % 3 == 2:  # [B, S, H, D] with one scale per token
        x = (x[0].reshape(B, S, H, D), x[1][..., None], x[2][..., None])
    pos = rng.integers(0, P, (B, S))
    y = assert_bit_exact(target, "DIRotary", [*x, pos, cos, sin], interleaved=seed % 2, obits=int(rng.choice([4, 8])),
                         heads_first=seed // 2 % 2)
    assert y[0].dtype == np.int8


def test_norm_int16_largest_sum_of_squares(target):
    C = ri.MAX_K
    x = (np.full((2, C), -32767, np.int16), np.full((2, 1), ri.M_MAX, np.int32), np.array([[-128], [127]], np.int8))
    g = channel_scales(np.random.default_rng(1), C)
    assert_bit_exact(target, "DINorm", [*x, *g], eps_q60=0, obits=8)


@pytest.mark.parametrize("seed", SEEDS)
def test_matmul_int16_codes(matmul_kernel, seed):
    """Every GEMM kernel, random odd shapes, output widths 9..16 (and 8: the int8 path beside them), channel
    exponents within and past the alignment window, scales at the int8 exponent's ends every fourth case."""
    rng = np.random.default_rng(9200 + seed)
    obits = int(rng.choice([8, 9, 12, 15, 16]))
    lead, K, N = lead_shape(rng, 129), odd_size(rng, 577), odd_size(rng, 150)
    e_range = (-128, 127) if seed % 4 == 3 else (-4, 40)
    args = matmul_problem(rng, lead, K, N, saturate=seed % 2 == 0, spread=[0, 6, 16, 40][seed % 4],
                          full_mantissas=seed % 3 == 1, e_range=e_range)
    y = assert_bit_exact(matmul_kernel, "DIMatMul", args, **matmul_attrs(args, obits))
    assert y[0].dtype == (np.int16 if obits > 8 else np.int8)


@pytest.mark.parametrize("obits", [12, 16])
@pytest.mark.parametrize("sign", [1, -1])
def test_matmul_int16_saturated_codes(matmul_kernel, obits, sign):
    """Codes at +-127 (and -128) with K at the op's limit: the largest accumulators (|acc| up to 2^31 - 2^14),
    the largest mantissas; the top channel maps to +-qmax and the half-size channel to half of it."""
    K = ri.MAX_K
    X = np.full((3, K), 127 * sign, np.int8)
    X[2] = -128
    W = np.full((4, K), 127, np.int8)
    W[1] = -128
    W[2, : K // 2] = 0
    W[3, ::2] = -127
    m = np.full((3, 1), ri.M_MAX, np.int32)
    e = np.array([[0], [40], [-20]], np.int8)
    w_m = np.array([ri.M_MAX, ri.M_MAX, ri.M_MAX, 1 << 14], np.int32)
    w_e = np.array([10, 10, 10, 26], np.int8)
    args = [X, m, e, W, w_m, w_e]
    y = assert_bit_exact(matmul_kernel, "DIMatMul", args, **matmul_attrs(args, obits))
    qmax = (1 << (obits - 1)) - 1
    assert np.abs(y[0].astype(np.int64)).max() == qmax
    assert y[0][0, 1] == -sign * qmax


@pytest.mark.parametrize("e", [-128, 127])
def test_matmul_int16_extreme_scales(matmul_kernel, e):
    """Exponents at both int8 ends at 16 bits: the output exponent saturates (-128) or the rows flush (127)."""
    rng = np.random.default_rng(8)
    args = matmul_problem(rng, (5,), 33, 9, saturate=True, full_mantissas=True)
    args[2] = np.full((5, 1), e, np.int8)
    args[5] = np.full(9, e, np.int8)
    y = assert_bit_exact(matmul_kernel, "DIMatMul", args, **matmul_attrs(args, 16))
    assert (y[2] == e).all()


def test_matmul_cpu_output_typed_by_shape_inference(cpu_library):
    """A graph whose Y is not declared (as the pass writes it) gets Y's type from the schema's inference, which
    ORT then takes: int16 codes at obits=16 without a hand-written declaration."""
    args = matmul_problem(np.random.default_rng(2), (3, 4), 50, 21)
    attrs = matmul_attrs(args, 16)
    proto = model("DIMatMul", args, **attrs)
    proto.graph.output[0].CopyFrom(helper.make_empty_tensor_value_info("Y"))
    proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    assert proto.graph.output[0].type.tensor_type.elem_type == TP.INT16
    feeds = {i.name: a for i, a in zip(OPS["DIMatMul"].inputs, args)}
    got = session(proto, cpu_library).run(None, feeds)
    for g, w in zip(got, reference("DIMatMul", args, **attrs)):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)


# ---------------------------------------------------------------------------------------------------------
# Schema and bad inputs


def infer(op, inputs, **attrs):
    opdef = OPS[op]
    outputs = opdef.outputs[:3] if op == "DIMatMul" and not attrs.get("split") else opdef.outputs  # Y2.. with split
    node = helper.make_node(op, [i[0] for i in inputs], [o.name for o in outputs], domain="edgeq", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(*i) for i in inputs],
                              [helper.make_empty_tensor_value_info(o.name) for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), opset_import()], ir_version=9)
    out = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True).graph.output
    return [(o.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim])
            for o in out]


def act(name, scale, code, shape=("t", 7)):
    return [(name, code, list(shape)), (f"{scale}_m", TP.INT32, [*shape[:-1], 1]),
            (f"{scale}_e", TP.INT8, [*shape[:-1], 1])]


@pytest.mark.parametrize("a, b", [(TP.INT8, TP.INT16), (TP.INT16, TP.INT8), (TP.INT16, TP.INT16)])
@pytest.mark.parametrize("obits, code", [(8, TP.INT8), (4, TP.INT8), (9, TP.INT16), (16, TP.INT16)])
def test_add_schema_output_type_follows_obits(a, b, obits, code):
    assert infer("DIAdd", [*act("A", "a", a), *act("B", "b", b)], obits=obits) == [
        (code, ["t", 7]), (TP.INT32, ["t", 1]), (TP.INT8, ["t", 1])]


def matmul_inputs(K=64, N=24):
    return [*act("X", "x", TP.INT8, ("t", K)), ("W", TP.INT8, [N, K]), ("w_m", TP.INT32, [N]), ("w_e", TP.INT8, [N])]


@pytest.mark.parametrize("obits, code", [(2, TP.INT8), (8, TP.INT8), (9, TP.INT16), (12, TP.INT16), (16, TP.INT16)])
def test_matmul_schema_output_type_follows_obits(obits, code):
    assert infer("DIMatMul", matmul_inputs(), K=64, N=24, abits=8, wbits=8, obits=obits) == [
        (code, ["t", 24]), (TP.INT32, ["t", 1]), (TP.INT8, ["t", 1])]


def test_matmul_schema_split():
    """split: Y of the first split channels, Y2 of the rest, both typed by obits; a split of N or more refused."""
    assert infer("DIMatMul", matmul_inputs(), K=64, N=24, abits=8, wbits=8, obits=16, split=10) == [
        (TP.INT16, ["t", 10]), (TP.INT32, ["t", 1]), (TP.INT8, ["t", 1]),
        (TP.INT16, ["t", 14]), (TP.INT32, ["t", 1]), (TP.INT8, ["t", 1])]
    with pytest.raises(onnx.shape_inference.InferenceError, match="split=24 must be below N=24"):
        infer("DIMatMul", matmul_inputs(), K=64, N=24, abits=8, wbits=8, obits=16, split=24)


def test_norm_schema_takes_int16():
    inputs = [*act("X", "x", TP.INT16), ("g_m", TP.INT32, [7]), ("g_e", TP.INT8, [7])]
    assert infer("DINorm", inputs, eps_q60=0, obits=8)[0] == (TP.INT8, ["t", 7])


@pytest.mark.parametrize("op, inputs, attrs, match", [
    ("DIAdd", [*act("A", "a", TP.INT32), *act("B", "b", TP.INT8)], dict(obits=8), "int32"),
    ("DIAdd", [*act("A", "a", TP.INT8), *act("B", "b", TP.INT8)], dict(obits=17), "obits"),
    ("DINorm", [*act("X", "x", TP.INT32), ("g_m", TP.INT32, [7]), ("g_e", TP.INT8, [7])], dict(eps_q60=0, obits=8),
     "int32"),
    ("DIMatMul", matmul_inputs(), dict(K=64, N=24, abits=8, wbits=8, obits=17),
     r"edgeq::DIMatMul: attribute obits=17: must be in 2..16"),
    ("DIMatMul", matmul_inputs(), dict(K=64, N=24, abits=8, wbits=8, obits=1),
     r"edgeq::DIMatMul: attribute obits=1: must be in 2..16"),
    ("DIMatMul", [*act("X", "x", TP.INT16, ("t", 64)), *matmul_inputs()[3:]], dict(K=64, N=24, abits=8, wbits=8,
     obits=16), "int16"),
])
def test_schema_refuses(op, inputs, attrs, match):
    with pytest.raises(Exception, match=match):
        infer(op, inputs, **attrs)


def fails(library, op, args, match, **attrs):
    with pytest.raises(Exception, match=match):
        run(library, op, args, **attrs)


@pytest.mark.parametrize("index, name", [(0, "A"), (3, "B")])
def test_add_refuses_int32_codes(cpu_library, index, name):
    r = np.random.default_rng(0)
    args = [*activation(r, (2, 5)), *activation16(r, (2, 5))]
    args[index] = args[index].astype(np.int32)
    fails(cpu_library, "DIAdd", args, rf"input parameter \({name}\) of operator \(DIAdd\) in node \(n0\)", obits=8)


@pytest.mark.parametrize("obits", [1, 17])
def test_add_refuses_obits_outside_2_16(cpu_library, obits):
    r = np.random.default_rng(0)
    fails(cpu_library, "DIAdd", [*activation(r, (2, 5)), *activation(r, (2, 5))],
          rf"edgeq::DIAdd node 'n0': attribute obits={obits} must be in 2..16", obits=obits, y_type=TP.INT16)


@pytest.mark.parametrize("obits, y_type, match", [(16, TP.INT8, "Y is int8, but obits=16 gives int16 codes"),
                                                  (8, TP.INT16, "Y is int16, but obits=8 gives int8 codes")])
def test_add_refuses_an_output_type_obits_does_not_give(cpu_library, obits, y_type, match):
    r = np.random.default_rng(0)
    fails(cpu_library, "DIAdd", [*activation16(r, (2, 5)), *activation(r, (2, 5))],
          rf"edgeq::DIAdd node 'n0': {match}", obits=obits, y_type=y_type)


def test_norm_refuses_int32_codes(cpu_library):
    r = np.random.default_rng(0)
    x = activation(r, (2, 5))
    fails(cpu_library, "DINorm", [x[0].astype(np.int32), *x[1:], *channel_scales(r, 5)],
          r"edgeq::DINorm node 'n0': X must be int8 or int16, got an unsupported type|int32", eps_q60=0, obits=8)


@pytest.mark.parametrize("obits", [1, 17])
def test_matmul_refuses_obits_outside_2_16(cpu_library, obits):
    args = matmul_problem(np.random.default_rng(0), (2,), 5, 3)
    fails(cpu_library, "DIMatMul", args, rf"edgeq::DIMatMul node 'n0': attribute obits={obits} must be in 2..16",
          **matmul_attrs(args, obits))


@pytest.mark.parametrize("obits, y_type, match", [(16, TP.INT8, "Y is int8, but obits=16 gives int16 codes"),
                                                  (9, TP.INT8, "Y is int8, but obits=9 gives int16 codes"),
                                                  (8, TP.INT16, "Y is int16, but obits=8 gives int8 codes"),
                                                  (12, TP.INT32, "Y is int32, but obits=12 gives int16 codes")])
def test_matmul_refuses_an_output_type_obits_does_not_give(cpu_library, obits, y_type, match):
    args = matmul_problem(np.random.default_rng(0), (2,), 5, 3)
    fails(cpu_library, "DIMatMul", args, rf"edgeq::DIMatMul node 'n0': {match}", y_type=y_type,
          **matmul_attrs(args, obits))


def test_swiglu_refuses_mixed_or_int32_codes(cpu_library):
    r = np.random.default_rng(0)
    g, u = activation16(r, (2, 5)), activation(r, (2, 5))
    fails(cpu_library, "DISwiGLU", [*g, *u], r"edgeq::DISwiGLU node 'n0': gate is int16 but up is int8", obits=8)
    fails(cpu_library, "DISwiGLU", [g[0].astype(np.int32), *g[1:], u[0].astype(np.int32), *u[1:]],
          r"edgeq::DISwiGLU node 'n0': gate must be int8 or int16, got int32", obits=8)
    with pytest.raises(ValueError, match="gate and up must hold the same code type, got int16 and int8"):
        ri.di_swiglu(*g, *u, 8)


def test_rotary_refuses_int16_codes_without_rotation(cpu_library):
    """rotate=0 copies codes into the int8 cache layout: a 16-bit X is refused (CPU op and reference)."""
    from edgeq.custom_ops.integer_codec import rotary_tables

    x = activation16(np.random.default_rng(0), (1, 3, 8))
    cos, sin = rotary_tables(3, 8)
    pos = np.arange(3)[None]
    fails(cpu_library, "DIRotary", [*x, pos, cos, sin],
          r"edgeq::DIRotary node 'n0': rotate=0 copies the codes into int8: X must be int8", interleaved=0, obits=8,
          rotate=0)
    with pytest.raises(ValueError, match="rotate=0 copies the codes into int8: X must be int8"):
        ri.di_rotary(*x, pos, cos, sin, interleaved=0, obits=8, rotate=0)


def test_matmul_refuses_int16_activations_at_8_bits(cpu_library):
    """int16 X codes are for abits 9..16 (test_integer_head.py); at abits <= 8 X holds int8 codes."""
    args = matmul_problem(np.random.default_rng(0), (2,), 5, 3)
    args[0] = args[0].astype(np.int16)
    fails(cpu_library, "DIMatMul", args, r"edgeq::DIMatMul node 'n0': X is int16, but abits=8 gives int8 codes",
          **matmul_attrs(args, 16))
