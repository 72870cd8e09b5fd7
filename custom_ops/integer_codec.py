"""The float side of the integer-only ops: turning float tensors into their inputs and reading their outputs.

Used by the tests and by the graph pass that builds integer graphs (constants: weights, gamma, rotary tables,
attribute values; the model's input quantization) — never inside an op. The ops themselves and their reference
(``reference_integer``) compute in integers only.
"""

from __future__ import annotations

import numpy as np

from edgeq.custom_ops.reference_integer import E_MAX, E_MIN, M_MAX, ROPE_FRAC, SCALE_BITS, ZERO_SCALE, qmax_of


def to_dyadic(scale) -> tuple[np.ndarray, np.ndarray]:
    """``(m int32, e int8)`` with ``m * 2**-e`` the nearest 15-bit dyadic to each ``scale`` (sign kept, |m| in
    [2**14, 2**15); 0 gives (0, 0)). Raises when an exponent does not fit int8."""
    scale = np.asarray(scale, np.float64)
    frac, exp = np.frexp(np.abs(scale))          # |scale| = frac * 2**exp, frac in [0.5, 1)
    m = np.rint(frac * 2.0**SCALE_BITS).astype(np.int64)
    e = SCALE_BITS - exp.astype(np.int64)
    top = m > M_MAX
    m, e = np.where(top, m // 2, m), np.where(top, e - 1, e)
    zero = scale == 0
    m, e = np.where(zero, 0, m), np.where(zero, 0, e)
    if (e < E_MIN).any() or (e > E_MAX).any():
        raise ValueError(f"a scale does not fit an int8 exponent: {scale[(e < E_MIN) | (e > E_MAX)][0]!r}")
    return (np.sign(scale) * m).astype(np.int32), e.astype(np.int8)


def dequantize(q, m, e) -> np.ndarray:
    """The real value ``q * m * 2**-e`` as float64 (scales broadcast against the codes)."""
    return np.asarray(q, np.float64) * np.asarray(m, np.float64) * np.exp2(-np.asarray(e, np.float64))


def quantize(x, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row (last axis) symmetric dynamic quantization of a float tensor into an integer activation
    ``(q int8 [..., C], m int32 [..., 1], e int8 [..., 1])``; an all-zero row gets ``ZERO_SCALE``."""
    x = np.asarray(x, np.float64)
    qmax = qmax_of(bits)
    absmax = np.abs(x).max(axis=-1, keepdims=True)
    zero = absmax == 0
    m, e = to_dyadic(np.where(zero, 1.0, absmax / qmax))
    m, e = np.where(zero, ZERO_SCALE[0], m).astype(np.int32), np.where(zero, ZERO_SCALE[1], e).astype(np.int8)
    q = np.clip(np.rint(x / dequantize(1, m, e)), -qmax, qmax).astype(np.int8)
    return q, m, e


def quantize_weights(w, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-output-channel symmetric quantization of ``w [N, K]``: ``(codes int8 [N, K], w_m int32 [N],
    w_e int8 [N])``; the codes are ``value - 0`` in [-qmax, qmax] of ``bits``."""
    q, m, e = quantize(w, bits)
    return q, m.reshape(-1), e.reshape(-1)


def rotary_tables(max_positions: int, head_dim: int, base: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """``(cos, sin)`` int16 ``[max_positions, head_dim/2]`` in Q14 (1.0 = 16384) for the angles
    ``pos * base**(-2i/head_dim)`` (LLaMA's rotary embedding)."""
    return rotary_tables_for(base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim), max_positions)


def rotary_tables_for(inv_freq, max_positions: int, scaling: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``(cos, sin)`` int16 ``[max_positions, len(inv_freq)]`` in Q14 of the angles ``pos * inv_freq``, times
    ``scaling`` (a rope type's attention scaling; |scaling| < 2)."""
    angles = np.arange(max_positions, dtype=np.float64)[:, None] * np.asarray(inv_freq, np.float64)[None, :]
    one = (1 << ROPE_FRAC) * float(scaling)
    return (np.rint(np.cos(angles) * one).astype(np.int16), np.rint(np.sin(angles) * one).astype(np.int16))


def eps_q60(eps: float) -> int:
    """DINorm's ``eps_q60`` attribute for an epsilon (in [0, 2))."""
    value = int(round(eps * 2.0**60))
    if not 0 <= value < 1 << 61:
        raise ValueError(f"DINorm takes eps in [0, 2), got {eps}")
    return value


def clip_q8(c: float) -> int:
    """DIClippedSoftmax's ``clip_q8`` attribute for a clipping range ``c`` (natural-log units)."""
    return int(round(c * 256))
