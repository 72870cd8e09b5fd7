"""The integer-only ops on ORT's CPU and (on a GPU machine) CUDA execution providers against the integer NumPy
reference, bit for bit: codes, scale mantissas and scale exponents must be identical (integer math has no
rounding excuse). Random shapes (odd sizes, 1..300 rows), random values, saturated codes at the int8 limits, int32 limits, and scales at
the ends of their ranges (where the int8 exponent saturates or a row flushes to zero)."""

import numpy as np
import pytest

from edgeq.custom_ops import reference_integer as ri
from edgeq.custom_ops.integer_codec import eps_q60, rotary_tables

from edgeq.custom_ops.schema import OPS

from .conftest import CUDA, cuda_available, providers_that_ran, session
from .integer_problems import (WIDTHS, Target, activation, assert_bit_exact, channel_scales, matmul_kernel,  # noqa: F401
                               model, run, target)

INTEGER_OPS = ["DIMatMul", "DIExp", "DIClippedSoftmax", "DINorm", "DISwiGLU", "DIRotary", "DIAdd", "DIBatchMatMul",
               "DIRequant"]


def lead_shape(rng: np.random.Generator, max_rows: int = 300) -> tuple[int, ...]:
    """1 to 3 leading dims, 1..max_rows rows in all."""
    rows = int(rng.choice([1, 2, 3, 7, 31, 64, 129, max_rows]))
    if rows > 6 and rng.random() < 0.5:
        return (2, rows // 2) if rng.random() < 0.5 else (1, 2, rows // 2)
    return (rows,)


def odd_size(rng: np.random.Generator, hi: int) -> int:
    return int(rng.choice([1, 2, 3, 15, 16, 17, 33, 63, 100, hi, hi - 1]))


SEEDS = range(20)


@pytest.mark.parametrize("seed", SEEDS)
def test_matmul(matmul_kernel, seed):
    rng = np.random.default_rng(1000 + seed)
    wbits, abits = WIDTHS[seed % 3]
    lead, K, N = lead_shape(rng), odd_size(rng, 577), odd_size(rng, 150)
    x = activation(rng, (*lead, K), abits, saturate=seed % 2 == 0, full_mantissas=seed % 4 == 1)
    W = rng.integers(-(1 << (wbits - 1)), 1 << (wbits - 1), (N, K)).astype(np.int8)
    if seed % 2 == 0:
        W[:, 0], W[:, -1] = -128, 127
    w_m, w_e = channel_scales(rng, N, spread=[0, 6, 16, 40][seed % 4], signed=seed % 3 == 0)
    assert_bit_exact(matmul_kernel, "DIMatMul", [*x, W, w_m, w_e], K=K, N=N, abits=abits, wbits=wbits, obits=abits)


@pytest.mark.parametrize("seed", range(12))
def test_matmul_zero_points(matmul_kernel, seed):
    """An asymmetric weight grid (w_zero): every GEMM kernel's x.W minus w_zero * sum(x), on random odd shapes with
    codes and zero points over the whole int8 range (both ends in every row on even seeds)."""
    rng = np.random.default_rng(2000 + seed)
    wbits, abits = WIDTHS[seed % 3]
    lead, K, N = lead_shape(rng), odd_size(rng, 577), odd_size(rng, 150)
    x = activation(rng, (*lead, K), abits, saturate=seed % 2 == 0)
    W = rng.integers(-128, 128, (N, K)).astype(np.int8)
    w_zero = rng.integers(-128, 128, N).astype(np.int8)
    if seed % 2 == 0:
        W[:, 0], W[:, -1] = -128, 127
        w_zero[0], w_zero[-1] = -128, 127
    w_m, w_e = channel_scales(rng, N, spread=[0, 6, 16, 40][seed % 4], signed=seed % 3 == 0)
    assert_bit_exact(matmul_kernel, "DIMatMul", [*x, W, w_m, w_e, w_zero], K=K, N=N, abits=abits, wbits=wbits,
                     obits=abits)


def test_matmul_zero_points_largest_accumulator(matmul_kernel):
    """K = 65535 products of -128 * (127 - (-128)): |acc| = 2^31 - 2^15 * 255 + ..., the largest with w_zero, exact
    (x.W and w_zero * sum(x) are each near 2^30 with opposite-sign terms; their difference must not wrap)."""
    K = ri.MAX_K_ZERO
    X = np.full((2, K), -128, np.int8)
    X[1, : K // 2] = 127
    W = np.full((3, K), 127, np.int8)
    W[1] = -128
    W[2, : K // 2] = 0
    w_zero = np.array([-128, 127, 5], np.int8)
    m = np.full((2, 1), ri.M_MAX, np.int32)
    e = np.array([[0], [30]], np.int8)
    w_m, w_e = np.array([ri.M_MAX, 1, 1 << 14], np.int32), np.array([-128, 127, 0], np.int8)
    assert_bit_exact(matmul_kernel, "DIMatMul", [X, m, e, W, w_m, w_e, w_zero], K=K, N=3, abits=8, wbits=8,
                     obits=8)


def test_matmul_zero_points_meaning():
    """The reference with w_zero is the float product X * (W - w_zero) within the output's 8-bit rounding."""
    rng = np.random.default_rng(5)
    x = activation(rng, (4, 96))
    W = rng.integers(-128, 128, (40, 96)).astype(np.int8)
    w_zero = rng.integers(-128, 128, 40).astype(np.int8)
    w_m, w_e = channel_scales(rng, 40)
    q, m, e = ri.di_matmul(*x, W, w_m, w_e, 8, w_zero)
    X = x[0] * (x[1] * 2.0 ** -x[2].astype(np.float64))
    Wf = (W.astype(np.float64) - w_zero[:, None]) * (w_m * 2.0 ** -w_e.astype(np.float64))[:, None]
    want, got = X @ Wf.T, q * (m * 2.0 ** -e.astype(np.float64))
    assert (np.abs(got - want) <= np.abs(want).max(axis=1, keepdims=True) / 127).all()
    with pytest.raises(ValueError, match="K=65536 exceeds 65535"):
        ri.di_matmul(np.zeros((1, 65536), np.int8), x[1][:1], x[2][:1], np.zeros((1, 65536), np.int8), w_m[:1],
                     w_e[:1], 8, w_zero[:1])


def test_matmul_largest_accumulator(matmul_kernel):
    """K = 131071 products of -128 * -128: acc = 2^31 - 2^14, the largest the op can meet, must come out exact
    (any lost carry changes the codes of the other channel, whose value is half of it)."""
    K = ri.MAX_K
    X = np.full((2, K), -128, np.int8)
    W = np.full((3, K), -128, np.int8)
    W[1] = 127
    W[2, : K // 2] = 0
    m = np.full((2, 1), ri.M_MAX, np.int32)
    e = np.array([[0], [127]], np.int8)
    w_m, w_e = np.array([ri.M_MAX, 1, 1 << 14], np.int32), np.array([-128, 127, 0], np.int8)
    assert_bit_exact(matmul_kernel, "DIMatMul", [X, m, e, W, w_m, w_e], K=K, N=3, abits=8, wbits=8, obits=8)


@pytest.mark.parametrize("raised", [0, 1, 2, 8, 9, 64])
@pytest.mark.parametrize("K", [31, 64, 95, 577, 1536])
def test_matmul_one_row_bytes(matmul_kernel, raised, K):
    """One token (decode): AVX2's byte kernel raises the row's -128 codes to -127 and takes those weights back,
    exact up to 8 of them (more go to the int16 kernel): codes of -128 at random places (the K tail included),
    weights over the whole int8 range with both ends in every row, symmetric and zero-point grids."""
    rng = np.random.default_rng(K * 100 + raised)
    q, m, e = activation(rng, (1, K))
    q[q == -128] = -127
    at = rng.choice(K, min(raised, K), replace=False)
    if raised:
        at[0] = K - 1
    q[0, at] = -128
    N = int(rng.integers(1, 200))
    W = rng.integers(-128, 128, (N, K)).astype(np.int8)
    W[:, 0], W[:, -1] = -128, 127
    w_m, w_e = channel_scales(rng, N)
    w_zero = rng.integers(-128, 128, N).astype(np.int8)
    for arrays in ([q, m, e, W, w_m, w_e], [q, m, e, W, w_m, w_e, w_zero]):
        assert_bit_exact(matmul_kernel, "DIMatMul", arrays, K=K, N=N, abits=8, wbits=8, obits=8)


@pytest.mark.parametrize("rows", [1, 3])
def test_matmul_channel_exponents_far_apart(matmul_kernel, rows):
    """Channel exponents over the whole int8 range: with Ea 16 above the lowest, the channels' shifts run from a left
    shift of 16 to right shifts of 62, 63 and 64 (the last two flush to 0) and beyond, at every lane of the decode
    path's four-channel steps and its scalar tail."""
    rng = np.random.default_rng(31 + rows)
    K = 45
    x = activation(rng, (rows, K))
    exps = np.array([-128, -120, -112, -100, -51, -50, -49, -48, -47, 0, 127], np.int8)
    w_e = np.resize(np.roll(exps, 3), 4 * len(exps) + 3).astype(np.int8)
    N = len(w_e)
    W = rng.integers(-128, 128, (N, K)).astype(np.int8)
    W[:, 0] = 127
    w_m = rng.integers(1 << 14, 1 << 15, N).astype(np.int32) * rng.choice([-1, 1], N).astype(np.int32)
    w_zero = rng.integers(-128, 128, N).astype(np.int8)
    for arrays in ([*x, W, w_m, w_e], [*x, W, w_m, w_e, w_zero]):
        assert_bit_exact(matmul_kernel, "DIMatMul", arrays, K=K, N=N, abits=8, wbits=8, obits=16)


def test_matmul_one_row_bytes_largest_pairs(matmul_kernel):
    """The byte kernel's largest 16-bit pair sums, 2 * 128 * 127 either sign (|w| = 128 against x = +-127 and a
    raised -128), and the largest int32 sums over K = 131071 (x = -128 everywhere: the int16 kernel)."""
    K = 1537
    X = np.full((1, K), -127, np.int8)
    X[0, ::2] = 127
    X[0, [5, 700, K - 1]] = -128
    W = np.full((4, K), -128, np.int8)
    W[1] = 127
    W[2, ::3] = 127
    W[3, 1::2] = -127
    m, e = np.full((1, 1), ri.M_MAX, np.int32), np.full((1, 1), 20, np.int8)
    w_m, w_e = np.full(4, 1 << 14, np.int32), np.full(4, 10, np.int8)
    assert_bit_exact(matmul_kernel, "DIMatMul", [X, m, e, W, w_m, w_e], K=K, N=4, abits=8, wbits=8, obits=16)
    X = np.full((1, ri.MAX_K), -128, np.int8)
    W = np.full((2, ri.MAX_K), -128, np.int8)
    W[1] = 127
    assert_bit_exact(matmul_kernel, "DIMatMul", [X, m, e, W, w_m[:2], w_e[:2]], K=ri.MAX_K, N=2, abits=8, wbits=8,
                     obits=8)


@pytest.mark.parametrize("e", [-128, 127])
def test_matmul_extreme_scales(target, e):
    """Exponents at both int8 ends: the output exponent saturates (-128) or the rows flush to zero (127)."""
    rng = np.random.default_rng(7)
    q, m, _ = activation(rng, (5, 33), saturate=True, full_mantissas=True)
    W = rng.integers(-128, 128, (9, 33)).astype(np.int8)
    w_m, w_e = channel_scales(rng, 9)
    x_e = np.full((5, 1), e, np.int8)
    y = assert_bit_exact(target, "DIMatMul", [q, m, x_e, W, w_m, np.full(9, e, np.int8)], K=33, N=9, abits=8,
                         wbits=8, obits=8)
    assert (y[2] == e).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_exp(target, seed):
    rng = np.random.default_rng(2000 + seed)
    bits = WIDTHS[seed % 3][1]
    x = activation(rng, (*lead_shape(rng), odd_size(rng, 300)), bits, e_range=(-128, 127) if seed % 3 == 0 else (0, 30),
                   saturate=seed % 2 == 0, full_mantissas=seed % 2 == 1)
    assert_bit_exact(target, "DIExp", list(x), obits=bits)


def softmax_inputs(rng: np.random.Generator, seed: int):
    rank = 2 + seed % 3
    skv = odd_size(rng, 300)
    sq = int(rng.integers(1, min(skv, 20) + 1))
    shape = (*[int(rng.integers(1, 4)) for _ in range(rank - 2)], sq, skv)
    if seed % 4 == 3:  # int32 scores, including both int32 limits
        q = rng.integers(-(2**31), 2**31, shape, dtype=np.int64)
        q[..., 0], q[..., -1] = -(2**31), 2**31 - 1
        _, m, e = activation(rng, shape, e_range=(20, 60), full_mantissas=True)
        x = (q.astype(np.int32), m, e)
    else:
        x = activation(rng, shape, e_range=(-10, 30) if seed % 5 else (-128, 127), saturate=seed % 2 == 0)
    mask = None
    if seed % 3 == 1:
        mshape = tuple(d if rng.random() < 0.5 else 1 for d in shape)
        mask = rng.random(mshape) < 0.7
    return x, mask, shape


@pytest.mark.parametrize("seed", SEEDS)
def test_clipped_softmax(target, seed):
    rng = np.random.default_rng(3000 + seed)
    x, mask, _ = softmax_inputs(rng, seed)
    assert_bit_exact(target, "DIClippedSoftmax", [*x, mask], clip_q8=[0, 3840, 1, 65535][seed % 4],
                     is_causal=seed % 2, obits=[8, 6, 4][seed % 3])


@pytest.mark.parametrize("seed", SEEDS)
def test_clipped_softmax_wide_probabilities(target, seed):
    """obits 9..16: uint16 codes, the same algorithm with a wider qmax (the integer graph's 16-bit P)."""
    rng = np.random.default_rng(3500 + seed)
    x, mask, _ = softmax_inputs(rng, seed)
    obits = [16, 9, 12, 15][seed % 4]
    p = assert_bit_exact(target, "DIClippedSoftmax", [*x, mask], clip_q8=[0, 3840, 1, 65535][seed % 4],
                         is_causal=seed % 2, obits=obits)
    assert p[0].dtype == np.uint16 and int(p[0].max()) <= (1 << obits) - 1


def test_wide_probabilities_are_closer_to_float():
    """16-bit codes of the same scores: the probabilities' error against float64 softmax shrinks from the 8-bit
    codes' rounding (~2^-9) to about the exp polynomial's own (relative 9e-5)."""
    rng = np.random.default_rng(3600)
    q, m, e = activation(rng, (64, 300), e_range=(17, 19))  # scores within about +-8
    x = q.astype(np.float64) * m * 2.0 ** -e.astype(np.float64)
    want = np.exp(x - x.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    err = {}
    for obits in (8, 16):
        p, pm, pe = ri.di_clipped_softmax(q, m, e, clip_q8=0, is_causal=0, obits=obits)
        err[obits] = np.abs(p * pm * 2.0 ** -pe.astype(np.float64) - want).max()
    assert err[16] < err[8] / 20 and err[16] < 2e-5, err


def test_clipped_softmax_fully_masked_rows(target):
    """Rows with no visible key give zeros and the zero-row scale; the others are untouched by them."""
    rng = np.random.default_rng(5)
    x = activation(rng, (3, 4, 10))
    mask = np.ones((3, 1, 10), bool)
    mask[1] = False
    p = assert_bit_exact(target, "DIClippedSoftmax", [*x, mask], clip_q8=3840, is_causal=1, obits=8)
    assert (p[0][1] == 0).all() and (p[1][1] == ri.ZERO_SCALE[0]).all() and (p[0][0].sum(-1) > 0).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_norm(target, seed):
    rng = np.random.default_rng(4000 + seed)
    bits = WIDTHS[seed % 3][1]
    shape = (*lead_shape(rng), odd_size(rng, 576))
    x = activation(rng, shape, bits, e_range=(-128, 127) if seed % 4 == 0 else (0, 30), saturate=seed % 2 == 0,
                   full_mantissas=seed % 3 == 0)
    if shape[0] > 1:
        x[0][0] = 0  # an all-zero row
    g_m, g_e = channel_scales(rng, shape[-1], spread=[0, 4, 16, 30][seed % 4], signed=True)
    eps = [0, eps_q60(1e-5), eps_q60(1e-6), (1 << 61) - 1][seed % 4]
    clip = [ri.CLIP_ONE, 1, 20000, 32767][seed % 4]  # a learned clip of the row range (1: everything saturates)
    assert_bit_exact(target, "DINorm", [*x, g_m, g_e], eps_q60=eps, obits=bits, clip_q15=clip)


@pytest.mark.parametrize("seed", SEEDS)
def test_rotary(target, seed):
    rng = np.random.default_rng(6000 + seed)
    bits = WIDTHS[seed % 3][1]
    B, S, H = int(rng.integers(1, 3)), int(rng.integers(1, 40)), int(rng.integers(1, 5))
    D = int(rng.choice([2, 6, 64, 18]))
    P = int(rng.integers(S, 2 * S + 2))
    cos, sin = rotary_tables(P, D)
    q, m, e = activation(rng, (B, S, H, D), bits, e_range=(-128, 127) if seed % 4 == 0 else (0, 20),
                         saturate=seed % 2 == 0, full_mantissas=seed % 3 == 0)
    if seed % 2:  # one scale per token, shared by the heads
        m, e = m[:, :, :1], e[:, :, :1]
    pos = rng.integers(0, P, (B, S))
    pos[0, 0], pos[-1, -1] = 0, P - 1
    y = assert_bit_exact(target, "DIRotary", [q, m, e, pos, cos, sin], interleaved=seed % 2, obits=bits,
                         heads_first=seed % 3 % 2)
    assert y[0].shape == ((B, H, S, D) if seed % 3 % 2 else (B, S, H, D))


@pytest.mark.parametrize("seed", range(6))
def test_rotary_reads_a_projection_output(target, seed):
    """X [B, S, H*D] with per-token scales [B, S, 1] (a DIMatMul's output, no Reshape between) is the same
    rotary as X [B, S, H, D] with scales [B, S, 1, 1]: bit-identical outputs, D from the tables."""
    rng = np.random.default_rng(6100 + seed)
    B, S, H, D = int(rng.integers(1, 3)), int(rng.integers(1, 20)), int(rng.integers(1, 10)), int(rng.choice([2, 8, 64]))
    cos, sin = rotary_tables(S + 3, D)
    q, m, e = activation(rng, (B, S, H * D), saturate=seed % 2 == 0)
    pos = rng.integers(0, S + 3, (B, S))
    attrs = dict(interleaved=seed % 2, obits=8, heads_first=seed // 3)
    flat = assert_bit_exact(target, "DIRotary", [q, m, e, pos, cos, sin], **attrs)
    four = run(target, "DIRotary", [q.reshape(B, S, H, D), m[..., None], e[..., None], pos, cos, sin], **attrs)
    for got, want in zip(flat, four):
        np.testing.assert_array_equal(got, want)
    assert flat[0].shape == ((B, H, S, D) if seed // 3 else (B, S, H, D))


@pytest.mark.parametrize("seed", range(6))
def test_rotary_without_rotation_is_the_relayout(target, seed):
    """rotate=0 (V into attention's layout): the codes unchanged and each (token, head) row with its token's
    scale, in [B, S, H, D] or (heads_first) [B, H, S, D], from 4-d or projection-shaped X."""
    rng = np.random.default_rng(6200 + seed)
    B, S, H, D = int(rng.integers(1, 3)), int(rng.integers(1, 20)), int(rng.integers(1, 6)), int(rng.choice([2, 8, 64]))
    cos, sin = rotary_tables(S, D)
    q, m, e = activation(rng, (B, S, H * D), saturate=True, e_range=(-128, 127))
    pos = rng.integers(0, S, (B, S))
    heads_first = seed % 2
    arrays = [q, m, e] if seed < 3 else [q.reshape(B, S, H, D), m[..., None], e[..., None]]
    y = assert_bit_exact(target, "DIRotary", [*arrays, pos, cos, sin], interleaved=0, obits=8,
                         heads_first=heads_first, rotate=0)
    codes = q.reshape(B, S, H, D)
    scales = [np.broadcast_to(s[..., None], (B, S, H, 1)) for s in (m, e)]
    want = [codes, *scales]
    if heads_first:
        want = [w.transpose(0, 2, 1, 3) for w in want]
    for got, w in zip(y, want):
        np.testing.assert_array_equal(got, w)


def cache(rng: np.random.Generator, B: int, H: int, P: int, D: int) -> list[np.ndarray]:
    """A KV cache of P positions: int8 codes over the whole range, scales as DIRotary writes them."""
    q = rng.integers(-128, 128, (B, H, P, D)).astype(np.int8)
    m = rng.integers(1, 1 << 15, (B, H, P, 1)).astype(np.int32)
    e = rng.integers(-128, 128, (B, H, P, 1)).astype(np.int8)
    return [q, m, e]


@pytest.mark.parametrize("seed", range(12))
def test_rotary_appends_to_a_cache(target, seed):
    """With past, past_m, past_e (heads_first) the outputs are the present cache: each (batch, head)'s P cached rows
    unchanged, then the rows the op writes without a past, for rotated keys (int8 or 16-bit X) and for V (rotate=0),
    4-d or projection-shaped X, an empty cache (P = 0) included."""
    rng = np.random.default_rng(6300 + seed)
    B, S, H = int(rng.integers(1, 3)), int(rng.choice([1, 1, 3, 17])), int(rng.integers(1, 5))
    D, P = int(rng.choice([2, 8, 64, 18])), int([0, 1, 5, 37][seed % 4])
    rotate = int(seed % 3 != 2)
    bits = 16 if rotate and seed % 2 else 8
    cos, sin = rotary_tables(P + S + 2, D)
    x = activation(rng, (B, S, H * D), bits, saturate=seed % 2 == 0, e_range=(-128, 127) if seed % 5 == 0 else (0, 20))
    if seed % 4 >= 2:  # 4-d X with per-token scales
        x = [x[0].reshape(B, S, H, D), x[1][..., None], x[2][..., None]]
    pos = np.broadcast_to(np.arange(P, P + S), (B, S)).copy()
    past = cache(rng, B, H, P, D)
    attrs = dict(interleaved=0, obits=8, heads_first=1, rotate=rotate)
    y = assert_bit_exact(target, "DIRotary", [*x, pos, cos, sin, *past], **attrs)
    alone = run(target, "DIRotary", [*x, pos, cos, sin], **attrs)
    for got, old, new in zip(y, past, alone):
        assert got.shape == (B, H, P + S, got.shape[-1])
        np.testing.assert_array_equal(got[:, :, :P], old)
        np.testing.assert_array_equal(got[:, :, P:], new)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("op", ["DISwiGLU", "DIAdd"])
def test_two_input_ops(target, op, seed):
    """DISwiGLU (gates up to 1536 wide) and DIAdd (operand exponents up to 60 apart)."""
    rng = np.random.default_rng(5000 + seed)
    bits = WIDTHS[seed % 3][1]
    shape = (*lead_shape(rng), odd_size(rng, 1536 if op == "DISwiGLU" else 576))
    wide = seed % 3 == 0
    first = activation(rng, shape, bits, e_range=(-128, 127) if wide else (0, 12), saturate=seed % 2 == 0,
                       full_mantissas=seed % 2 == 1)
    second = activation(rng, shape, bits, e_range=(-128, 127) if wide else (0, 60), saturate=seed % 4 == 1)
    clip = dict(clip_q15=[ri.CLIP_ONE, 9000, 1, 30000][seed % 4]) if op == "DISwiGLU" else {}
    assert_bit_exact(target, op, [*first, *second], obits=bits, **clip)


def test_add_scales_far_apart(target):
    """Exponent gaps inside (exact) and beyond (the finer side shifted away) the 39-bit window, both int8 ends,
    and b = -a at equal scales, which cancels to an all-zero row."""
    q = np.tile(np.array([[-127, 127, 1, -1, 64]], np.int8), (5, 1))
    m = np.full((5, 1), ri.M_MAX, np.int32)
    ea = np.array([[0], [0], [-128], [127], [10]], np.int8)
    eb = np.array([[39], [40], [127], [-128], [10]], np.int8)
    y = assert_bit_exact(target, "DIAdd", [q, m, ea, -q, m, eb], obits=8)
    assert (y[0][4] == 0).all() and y[1][4, 0] == ri.ZERO_SCALE[0] and y[2][4, 0] == ri.ZERO_SCALE[1]


def test_thread_count_does_not_change_results(target):
    rng = np.random.default_rng(11)
    x = activation(rng, (37, 129), saturate=True)
    W = rng.integers(-128, 128, (70, 129)).astype(np.int8)
    w_m, w_e = channel_scales(rng, 70)
    args = [*x, W, w_m, w_e]
    one = run(target, "DIMatMul", args, threads=1, K=129, N=70, abits=8, wbits=8, obits=8)
    two = run(target, "DIMatMul", args, threads=2, K=129, N=70, abits=8, wbits=8, obits=8)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def attention_shapes(rng: np.random.Generator, seed: int):
    """(A's lead dims, B's lead dims (each equal, 1 or a divisor), M, K, N) for DIBatchMatMul."""
    rank = seed % 3
    lead = tuple(int(rng.choice([1, 2, 3, 6])) for _ in range(rank))
    # each B dim A's, 1, or (grouped-query heads) a proper divisor of A's
    b_lead = tuple(d if rng.random() < 0.5 else 1 if rng.random() < 0.5 else {6: 3, 2: 1}.get(d, 1) for d in lead)
    return lead, b_lead, int(rng.integers(1, 12)), odd_size(rng, 130), odd_size(rng, 90)


@pytest.mark.parametrize("seed", SEEDS)
def test_batch_matmul_scores(matmul_kernel, seed):
    """trans_b=1 (Q.K^T): keys with their own scales (exponents spread past the alignment window), causal and
    broadcast masks, rows with no visible key."""
    rng = np.random.default_rng(6000 + seed)
    lead, b_lead, M, K, N = attention_shapes(rng, seed)
    N = max(N, M) if seed % 2 else N
    A = activation(rng, (*lead, M, K), saturate=seed % 2 == 0, full_mantissas=seed % 4 == 1)
    B = activation(rng, (*b_lead, N, K), e_range=(-4, 40) if seed % 3 else (-128, 127), saturate=seed % 3 == 0,
                   full_mantissas=seed % 4 == 2)
    mask = rng.random(tuple(d if rng.random() < 0.5 else 1 for d in (*lead, M, N))) < 0.7 if seed % 4 == 3 else None
    assert_bit_exact(matmul_kernel, "DIBatchMatMul", [*A, *B, mask], trans_b=1, is_causal=seed % 2)


@pytest.mark.parametrize("seed", SEEDS)
def test_batch_matmul_context(target, seed):
    """trans_b=0 (P.V): uint8 probabilities (zeros where keys were hidden) or int8 codes against values whose
    scales run along the contraction axis."""
    rng = np.random.default_rng(7000 + seed)
    lead, b_lead, M, K, N = attention_shapes(rng, seed)
    if seed % 2:
        P = rng.integers(0, 256, (*lead, M, K))
        P[rng.random(P.shape) < 0.3] = 0
        _, m, e = activation(rng, (*lead, M, 1), full_mantissas=seed % 4 == 1)
        A = (P.astype(np.uint8), m, e)
    else:
        A = activation(rng, (*lead, M, K), saturate=True)
    B = activation(rng, (*b_lead, K, N), e_range=(-4, 40) if seed % 3 else (-128, 127), saturate=seed % 3 == 0)
    assert_bit_exact(target, "DIBatchMatMul", [*A, *B, None], trans_b=0)


@pytest.mark.parametrize("seed", SEEDS)
def test_batch_matmul_context_wide_probabilities(target, seed):
    """trans_b=0 with uint16 probabilities: softmax rows (codes summing to about 2^16) and arbitrary uint16 codes,
    whose sums make ContextShift lower the common exponent."""
    rng = np.random.default_rng(7500 + seed)
    lead, b_lead, M, K, N = attention_shapes(rng, seed)
    if seed % 2:
        scores = activation(rng, (*lead, M, K), e_range=(17, 19))
        A = ri.di_clipped_softmax(*scores, clip_q8=0, is_causal=0, obits=16)
    else:
        P = rng.integers(0, 1 << 16, (*lead, M, K))
        P[rng.random(P.shape) < 0.3] = 0
        _, m, e = activation(rng, (*lead, M, 1), full_mantissas=seed % 4 == 0)
        A = (P.astype(np.uint16), m, e)
    B = activation(rng, (*b_lead, K, N), e_range=(-4, 40) if seed % 3 else (-128, 127), saturate=seed % 3 == 0)
    assert_bit_exact(target, "DIBatchMatMul", [*A, *B, None], trans_b=0)


def test_batch_matmul_context_shift_at_the_bound(target):
    """uint16 codes at their limit over K = 65535 keys, with values whose exponents span the whole window: the
    int64 sums would pass 2^62 unshifted; ContextShift lowers Ea by exactly what the bound needs, and the result
    still matches float64 within the rounding of the shifted terms."""
    K, N = ri.MAX_BATCH_K, 67
    P = np.full((1, 1, K), 65535, np.uint16)
    p_m, p_e = np.full((1, 1, 1), ri.M_MAX, np.int32), np.zeros((1, 1, 1), np.int8)
    V = np.full((1, K, N), -128, np.int8)
    v_m = np.full((1, K, 1), ri.M_MAX, np.int32)
    v_e = np.where(np.arange(K) % 2, 0, 16).astype(np.int8).reshape(1, K, 1)
    assert ri.context_shift(K * 65535, 16) == 32 + 16 + 22 - 62
    y, y_m, y_e = assert_bit_exact(target, "DIBatchMatMul", [P, p_m, p_e, V, v_m, v_e, None], trans_b=0)
    want = (65535.0 * ri.M_MAX) * (-128.0 * ri.M_MAX) * (2.0 ** -v_e.astype(np.float64)).sum()
    got = y.astype(np.float64) * y_m * 2.0 ** -y_e.astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_batch_matmul_lm_head_shape(matmul_kernel):
    """One query row against many rows of B (the tied lm_head at decode): the GEMM runs over blocks of B's rows
    in parallel, with a K tail off every SIMD width."""
    rng = np.random.default_rng(6500)
    A = activation(rng, (1, 1, 577), saturate=True)
    B = activation(rng, (1, 1003, 577), e_range=(-4, 40))
    assert_bit_exact(matmul_kernel, "DIBatchMatMul", [*A, *B, None], trans_b=1)


def test_batch_matmul_largest_sums(matmul_kernel):
    """K = 65535 at the int8/uint8 limits with the widest exponent gap the window shifts exactly: the int32 dot
    products and P.V's int64 sums are at their bounds and must come out exact (in the CPU's 64-column SIMD block
    and in its scalar tail)."""
    K = ri.MAX_BATCH_K
    B = np.full((1, 2, K), -128, np.int8)
    b_m, b_e = np.full((1, 2, 1), ri.M_MAX, np.int32), np.array([[[0], [16]]], np.int8)
    A = np.full((1, 1, K), 127, np.int8)
    a_m, a_e = np.full((1, 1, 1), ri.M_MAX, np.int32), np.zeros((1, 1, 1), np.int8)
    assert_bit_exact(matmul_kernel, "DIBatchMatMul", [A, a_m, a_e, B, b_m, b_e, None], trans_b=1)
    P = np.full((1, 1, K), 255, np.uint8)
    V = np.full((1, K, 67), -128, np.int8)  # 64 columns of the SIMD path and 3 after
    v_m = np.full((1, K, 1), ri.M_MAX, np.int32)
    v_e = np.where(np.arange(K) % 2, 0, 16).astype(np.int8).reshape(1, K, 1)
    assert_bit_exact(matmul_kernel, "DIBatchMatMul", [P, a_m, a_e, V, v_m, v_e, None], trans_b=0)


@pytest.mark.parametrize("seed", SEEDS)
def test_requant(target, seed):
    rng = np.random.default_rng(8000 + seed)
    lead = lead_shape(rng, 60)
    G, D = int(rng.integers(1, 9)), odd_size(rng, 70)
    if seed % 2:
        X = activation(rng, (*lead, G, D), e_range=(-4, 40) if seed % 3 else (-128, 127), saturate=True)
    else:
        q = rng.integers(-(2**30), 2**30 + 1, (*lead, G, D))
        q[..., 0] = 2**31 - 1
        _, m, e = activation(rng, (*lead, G, D), e_range=(20, 60), full_mantissas=True)
        X = (q.astype(np.int32), m, e)
    assert_bit_exact(target, "DIRequant", list(X), obits=[8, 6, 4][seed % 3], clip_q15=[ri.CLIP_ONE, 16384, 3][seed % 3])


@pytest.mark.parametrize("seed", range(8))
def test_requant_heads_first(target, seed):
    """heads_first=1: X in attention's layout [B, G, S, D] gives the codes, scales and zero points of its transpose
    [B, S, G, D] without it (a decode step's S = 1, prefill's longer S, odd sizes, wide int32 rows)."""
    rng = np.random.default_rng(8500 + seed)
    B, G, S, D = int(rng.integers(1, 3)), int(rng.integers(1, 10)), [1, 5, 17, 1][seed % 4], odd_size(rng, 70)
    if seed % 2:
        X = activation(rng, (B, G, S, D), e_range=(-4, 40) if seed % 3 else (-128, 127), saturate=True)
    else:
        q = rng.integers(-(2**30), 2**30 + 1, (B, G, S, D))
        _, m, e = activation(rng, (B, G, S, D), e_range=(20, 60), full_mantissas=True)
        X = (q.astype(np.int32), m, e)
    attrs = dict(obits=[8, 6, 4][seed % 3], act_sym=seed % 4 // 2)
    got = assert_bit_exact(target, "DIRequant", list(X), heads_first=1, **attrs)
    transposed = [np.ascontiguousarray(t.transpose(0, 2, 1, 3)) for t in X]
    for g, w in zip(got, ri.di_requant(*transposed, **attrs)):
        np.testing.assert_array_equal(g, w)
    assert got[0].shape == (B, S, G * D)


def one_call(op: str, rng: np.random.Generator):
    """A small valid call of ``op``: (inputs, attributes)."""
    x, x2 = activation(rng, (3, 16)), activation(rng, (3, 16))
    if op == "DIMatMul":
        return [*x, rng.integers(-128, 128, (5, 16)).astype(np.int8), *channel_scales(rng, 5)], \
            dict(K=16, N=5, abits=8, wbits=8, obits=8)
    if op == "DIExp":
        return list(x), dict(obits=8)
    if op == "DIClippedSoftmax":
        return [*activation(rng, (2, 3, 8)), None], dict(clip_q8=3840, is_causal=1, obits=8)
    if op == "DINorm":
        return [*x, *channel_scales(rng, 16)], dict(eps_q60=0, obits=8)
    if op in ("DISwiGLU", "DIAdd"):
        return [*x, *x2], dict(obits=8)
    if op == "DIRotary":
        q, m, e = activation(rng, (1, 3, 2, 8))
        return [q, m, e, np.array([[0, 1, 2]]), *rotary_tables(4, 8)], dict(interleaved=0, obits=8)
    if op == "DIBatchMatMul":
        return [*activation(rng, (2, 3, 16)), *activation(rng, (2, 5, 16)), None], dict(trans_b=1)
    return list(activation(rng, (3, 2, 8))), dict(obits=8)  # DIRequant


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs onnxruntime-gpu with CUDA")
@pytest.mark.parametrize("op", INTEGER_OPS)
def test_cuda_ep_runs_the_cuda_kernel(op, tmp_path):
    """ORT has both the CPU and the CUDA kernel of each op: on the CUDA EP the node must run the CUDA one, and give
    the reference's bits."""
    from edgeq.custom_ops.library import get_library

    arrays, attrs = one_call(op, np.random.default_rng(12))
    library = get_library("cuda")
    feeds = {i.name: a for i, a in zip(OPS[op].inputs, arrays) if a is not None}
    assert providers_that_ran(model(op, arrays, **attrs), library, feeds, "n0", tmp_path) == {"CUDAExecutionProvider"}
    assert_bit_exact(Target(library, CUDA), op, arrays, **attrs)


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("op", ["DIMatMul", "DINorm", "DISwiGLU", "DIAdd", "DIBatchMatMul", "DIRequant"])
def test_long_rows_of_few_tokens(target, op, rows):
    """Decode's shape: a row or three thousands of values long, which the CUDA ops spread over many blocks (each
    block a chunk of the row's min/max, then the codes from every chunk's): the same bits as one block per row.
    Saturated codes and wide channel exponents so the chunks differ."""
    rng = np.random.default_rng(13 + rows)
    n = 4099
    if op == "DIMatMul":
        x = activation(rng, (rows, 64), saturate=True)
        W = rng.integers(-128, 128, (n, 64)).astype(np.int8)
        arrays, attrs = [*x, W, *channel_scales(rng, n, spread=30, signed=True)], dict(K=64, N=n, abits=8, wbits=8,
                                                                                        obits=16)
    elif op == "DINorm":
        arrays, attrs = [*activation(rng, (rows, n), saturate=True), *channel_scales(rng, n, spread=20)], \
            dict(eps_q60=0, obits=8, clip_q15=25000)
    elif op in ("DISwiGLU", "DIAdd"):
        arrays, attrs = [*activation(rng, (rows, n), saturate=True), *activation(rng, (rows, n))], dict(obits=8)
    elif op == "DIBatchMatMul":
        keys = activation(rng, (1, n, 32), e_range=(-4, 40))
        arrays, attrs = [*activation(rng, (1, rows, 32)), *keys, None], dict(trans_b=1, is_causal=1)
    else:  # DIRequant: 33 heads of 125 merged per token
        arrays, attrs = list(activation(rng, (rows, 33, 125), e_range=(-4, 40))), dict(obits=8, clip_q15=12345)
    assert_bit_exact(target, op, arrays, **attrs)


# ---- asymmetric codes (act_sym=0) out of the ops a linear reads, and DIMatMul's x_zero


@pytest.mark.parametrize("seed", range(8))
def test_asymmetric_outputs(target, seed):
    """DINorm, DISwiGLU and DIRequant with act_sym=0: codes, scales and the zero points bit-exact."""
    rng = np.random.default_rng(9000 + seed)
    bits = [4, 6, 8, 2][seed % 4]
    shape = (*lead_shape(rng, 40), odd_size(rng, 300))
    x = activation(rng, shape, 8, e_range=(-128, 127) if seed % 3 == 0 else (0, 30), saturate=seed % 2 == 0)
    if shape[0] > 1:
        x[0][0] = 0  # an all-zero row
    if seed % 2:  # one-sided rows: all codes of one sign
        x[0][-1] = np.abs(x[0][-1]).astype(np.int8)
    g_m, g_e = channel_scales(rng, shape[-1], spread=[0, 4, 16, 30][seed % 4], signed=True)
    assert_bit_exact(target, "DINorm", [*x, g_m, g_e], eps_q60=eps_q60(1e-5), obits=bits, act_sym=0)
    up = activation(rng, shape, 8, e_range=(0, 60))
    assert_bit_exact(target, "DISwiGLU", [*x, *up], obits=bits, act_sym=0)
    heads = activation(rng, (*shape[:-1], 3, 25), 8, e_range=(-4, 40))
    assert_bit_exact(target, "DIRequant", list(heads), obits=bits, act_sym=0)


@pytest.mark.parametrize("rows", [1, 3])
def test_asymmetric_outputs_of_long_rows(target, rows):
    """Decode's shape with act_sym=0: rows thousands of values long (the CUDA ops spread each over many blocks, the
    range from every chunk's) give the same codes, scales and zero points as a row per block; one-sided rows too."""
    rng = np.random.default_rng(77 + rows)
    n = 4099
    x = activation(rng, (rows, n), 8, saturate=True)
    x[0][-1] = np.abs(x[0][-1]).astype(np.int8)
    g_m, g_e = channel_scales(rng, n, spread=20, signed=rows == 3)
    assert_bit_exact(target, "DINorm", [*x, g_m, g_e], eps_q60=0, obits=8, act_sym=0)
    assert_bit_exact(target, "DISwiGLU", [*x, *activation(rng, (rows, n), 8)], obits=4, act_sym=0)
    assert_bit_exact(target, "DIRequant", list(activation(rng, (rows, 33, 125), 8, e_range=(-4, 40))), obits=6,
                     act_sym=0)


@pytest.mark.parametrize("seed", range(8))
def test_matmul_constant_weights(target, seed):
    """Weights, scales, zero points and sums as initializers (as the integer-only graph stores them), checked once at
    session creation: the same bits as the reference, with int8 and int16 X, with and without zero points."""
    rng = np.random.default_rng(9300 + seed)
    K, N, rows = odd_size(rng, 300), odd_size(rng, 200), int(rng.integers(1, 12))
    abits = 12 if seed % 4 == 3 else 8
    x = activation(rng, (rows, K), 8, saturate=True)
    if abits > 8:  # 12-bit codes in int16 (lm_head's input)
        x = (rng.integers(-(1 << (abits - 1)), 1 << (abits - 1), (rows, K)).astype(np.int16), *x[1:])
    W = rng.integers(-128, 128, (N, K)).astype(np.int8)
    w_m, w_e = channel_scales(rng, N, spread=16, signed=seed % 2 == 1)
    arrays, constants = [*x, W, w_m, w_e], (3, 4, 5)
    if seed % 4 >= 2:
        w_zero = rng.integers(-128, 128, N).astype(np.int8) if seed % 2 else None
        x_zero = rng.integers(-(1 << (abits - 1)), 1 << (abits - 1), (rows, 1)).astype(np.int32)
        arrays += [w_zero, x_zero, W.astype(np.int64).sum(1).astype(np.int32)]
        constants += (8,) if w_zero is None else (6, 8)
    assert_bit_exact(target, "DIMatMul", arrays, constants=constants, K=K, N=N, abits=abits, wbits=8,
                     obits=[8, 16, 6][seed % 3])


@pytest.mark.parametrize("seed", range(8))
def test_matmul_x_zero(matmul_kernel, seed):
    """Asymmetric input codes: acc = X.W - w_zero sum(X) - x_zero (sum(W) - K w_zero), with and without w_zero, every
    GEMM kernel, up to the K bound."""
    rng = np.random.default_rng(9100 + seed)
    K = [7, 64, 577, 32767][seed % 4]
    lead = (int(rng.integers(1, 20)),) if K < 32767 else (2,)
    N = int(rng.integers(1, 40))
    x = activation(rng, (*lead, K), 8, saturate=True)
    W = rng.integers(-128, 128, (N, K)).astype(np.int8)
    if K == 32767:
        x[0][...] = -128
        W[...] = -128
    w_m, w_e = channel_scales(rng, N, spread=16)
    w_zero = rng.integers(-128, 128, N).astype(np.int8) if seed % 2 else None
    x_zero = rng.integers(-128, 128, (*lead, 1)).astype(np.int32)
    if K == 32767:
        x_zero[...] = 127
        if w_zero is not None:
            w_zero[...] = 127
    w_sum = W.astype(np.int64).sum(1).astype(np.int32)
    assert_bit_exact(matmul_kernel, "DIMatMul", [*x, W, w_m, w_e, w_zero, x_zero, w_sum], K=K, N=N, abits=8,
                     wbits=8, obits=8)


@pytest.mark.parametrize("seed", range(16))
def test_matmul_split(matmul_kernel, seed):
    """split: two outputs, each bit for bit the DIMatMul of its half of W (the reference runs the halves as two ops),
    on every GEMM kernel: decode rows (one pass over the pool for both parts) and prefill rows, odd N and split
    points, int8 and int16 codes, symmetric and zero-point grids, scales spread so the halves' Ea differ."""
    rng = np.random.default_rng(9700 + seed)
    wbits, abits = WIDTHS[seed % 3]
    rows = [1, 3, 7, 8, 19][seed % 5]
    K, N = odd_size(rng, 577), int(rng.integers(2, 300))
    split = int(rng.integers(1, N))
    x = activation(rng, (rows, K), abits, saturate=seed % 2 == 0)
    W = rng.integers(-(1 << (wbits - 1)), 1 << (wbits - 1), (N, K)).astype(np.int8)
    w_m, w_e = channel_scales(rng, N, spread=[0, 6, 16, 40][seed % 4], signed=seed % 3 == 0)
    w_e[:split] -= np.int8(seed % 5)  # the first half's exponents lower: its own Ea
    arrays = [*x, W, w_m, w_e]
    if seed % 4 == 3:
        arrays += [rng.integers(-128, 128, N).astype(np.int8)]
    got = assert_bit_exact(matmul_kernel, "DIMatMul", arrays, K=K, N=N, abits=abits, wbits=wbits,
                           obits=[8, 16, 6, 12][seed % 4], split=split)
    assert got[0].shape == (rows, split) and got[3].shape == (rows, N - split)


def test_matmul_split_refused(target):
    """A split outside (0, N), or one whose node lacks the second part's outputs (or has them without split), is
    refused at session creation naming the attribute."""
    rng = np.random.default_rng(9800)
    x = activation(rng, (2, 16), 8)
    arrays = [*x, rng.integers(-128, 128, (5, 16)).astype(np.int8), *channel_scales(rng, 5)]
    with pytest.raises(Exception, match=r"attribute split=5 must be in 1\.\.4"):
        run(target, "DIMatMul", arrays, K=16, N=5, abits=8, wbits=8, obits=8, split=5)
    bad = model("DIMatMul", arrays, K=16, N=5, abits=8, wbits=8, obits=8, split=2)
    del bad.graph.node[0].output[3:]
    del bad.graph.output[3:]
    with pytest.raises(Exception, match="split=2 needs 6 outputs"):
        session(bad, target.library, target.providers)
