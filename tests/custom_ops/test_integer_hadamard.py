"""DISwiGLU's ``hadamard``: the SwiGLU row rotated by an unnormalized block Walsh-Hadamard transform (integer additions
only) before its codes, for a down_proj that reads the rotated input. The reference against the float rotation, the
CPU and CUDA kernels bit-exact against the reference (random shapes, blocks 2..4096, int8 and int16 inputs, symmetric
and asymmetric codes, rows large enough to need the pre-shift), and the errors for what the op refuses."""

import numpy as np
import pytest

from edgeq.custom_ops import reference_integer as ri
from edgeq.custom_ops.integer_codec import dequantize

from .integer_problems import activation, activation16, assert_bit_exact, run
from .integer_problems import target  # noqa: F401 (fixture)
from .test_integer_ops import lead_shape


def sylvester(block: int) -> np.ndarray:
    h = np.ones((1, 1))
    while h.shape[0] < block:
        h = np.block([[h, h], [h, -h]])
    return h


@pytest.mark.parametrize("block", [2, 8, 64, 512])
def test_hadamard_blocks_is_the_block_diagonal_product(block):
    v = np.random.default_rng(block).integers(-(1 << 40), 1 << 40, 3 * block)
    want = np.concatenate([v[i:i + block].astype(object) @ sylvester(block).astype(np.int64).astype(object)
                           for i in range(0, 3 * block, block)])
    np.testing.assert_array_equal(ri.hadamard_blocks(v, block), want.astype(np.int64))


@pytest.mark.parametrize("block", [4, 64, 512])
@pytest.mark.parametrize("act_sym", [1, 0])
def test_rotated_swiglu_is_the_float_rotation(block, act_sym):
    """Codes of silu(gate) * up times the unnormalized block Hadamard matrix: the output rounding and the integer
    sigmoid's (as unrotated DISwiGLU), in units of the rotated row's step."""
    rng = np.random.default_rng(block + act_sym)
    g, u = activation16(rng, (9, 1536), e_range=(22, 26)), activation16(rng, (9, 1536), e_range=(22, 26))
    gf, uf = dequantize(*g), dequantize(*u)
    exact = (gf / (1 + np.exp(-gf)) * uf) @ np.kron(np.eye(1536 // block), sylvester(block))
    y = ri.di_swiglu(*g, *u, 8, act_sym=act_sym, hadamard=block)
    q = y[0].astype(np.int64) - (0 if act_sym else y[3])
    assert float((np.abs(dequantize(q, y[1], y[2]) - exact) / dequantize(1, y[1], y[2])).max()) <= 0.52


def test_rotation_spreads_an_outlier_channel():
    """Why: one large channel sets the step of the whole unrotated row; rotated, it spreads over its block and the
    other channels' relative error falls."""
    rng = np.random.default_rng(3)
    g, u = activation(rng, (16, 512), e_range=(18, 18)), activation(rng, (16, 512), e_range=(18, 18))
    for codes in (g[0], u[0]):
        codes[...] = rng.integers(-12, 13, codes.shape)
        codes[:, 5] = 127  # the outlier channel
    gf, uf = dequantize(*g), dequantize(*u)
    x = gf / (1 + np.exp(-gf)) * uf
    H = sylvester(512) / np.sqrt(512)
    plain = dequantize(*ri.di_swiglu(*g, *u, 6))
    rotated = dequantize(*ri.di_swiglu(*g, *u, 6, hadamard=512)) / np.sqrt(512) @ H.T  # back to the channels
    rest = np.arange(512) != 5
    err = lambda y: np.abs(y - x)[:, rest].mean()  # noqa: E731
    assert err(rotated) < err(plain) / 2, (err(rotated), err(plain))  # seen: 3.3x smaller


@pytest.mark.parametrize("seed", range(12))
def test_rotated_swiglu_bit_exact(target, seed):
    """The CPU and CUDA kernels against the reference: random rows (one token or many), blocks 2..4096, int8 or int16 codes,
    symmetric (with a learned clip every third case) or asymmetric outputs, 2..8 bits."""
    rng = np.random.default_rng(9600 + seed)
    block = int(rng.choice([2, 16, 64, 512, 4096]))
    C = block * int(rng.integers(1, 4)) if block < 4096 else 4096
    lead = (1,) if seed % 3 == 0 else lead_shape(rng, 40)
    make = activation16 if seed % 2 else activation
    g, u = make(rng, (*lead, C), saturate=seed % 4 == 0), make(rng, (*lead, C), e_range=(0, 60))
    act_sym = int(seed % 4 != 1)
    clip = {"clip_q15": int(rng.integers(1 << 13, 1 << 15))} if act_sym and seed % 3 == 2 else {}
    assert_bit_exact(target, "DISwiGLU", [*g, *u], obits=[8, 6, 4, 2][seed % 4], act_sym=act_sym, hadamard=block,
                     **clip)


def test_rotated_swiglu_of_the_largest_products(target):
    """int16 codes at +-32767 give products near 2^60: the pre-shift keeps the 4096-block sums below 2^61."""
    g = (np.full((2, 4096), 32767, np.int16), np.full((2, 1), ri.M_MAX, np.int32), np.full((2, 1), -20, np.int8))
    g[0][1, ::2] = -32767
    y = assert_bit_exact(target, "DISwiGLU", [*g, *g], obits=8, hadamard=4096)
    assert np.abs(y[0].astype(np.int64)).max() == 127


@pytest.mark.parametrize("hadamard, match", [
    (3, "attribute hadamard=3 must be 0 or a power of two in 2..4096"),
    (8192, "attribute hadamard=8192 must be 0 or a power of two in 2..4096"),
    (32, "hadamard=32 does not divide the row of 48 values"),
])
def test_rotated_swiglu_refuses(cpu_library, hadamard, match):
    rng = np.random.default_rng(0)
    x = activation(rng, (2, 48))
    with pytest.raises(Exception, match=f"edgeq::DISwiGLU node 'n0': {match}"):
        run(cpu_library, "DISwiGLU", [*x, *x], obits=8, hadamard=hadamard)
    if hadamard == 32:
        with pytest.raises(ValueError, match="hadamard=32 must be a power of two dividing C=48"):
            ri.di_swiglu(*x, *x, 8, hadamard=32)
