"""Integer-only NumPy references of the I-LLM ops (``DIMatMul``, ``DIExp``, ``DIClippedSoftmax``, ``DINorm``,
``DISwiGLU``, ``DIRotary``, ``DIAdd``, ``DIBatchMatMul``, ``DIRequant``): the ground truth the C++ (and later
CUDA) kernels must reproduce bit for bit.

There is no float anywhere in this module: element-wise math is int64 NumPy, per-row scalars (one maximum, one
scale, one square root per row) are Python ints. Every intermediate is bounded so that int64 never overflows;
the bounds are stated where the values are made. The representation and every rounding are documented in
``custom_ops/README.md`` ("Integer-only ops") and in each op's ``schema.py`` doc.

Conventions: an integer activation is ``(q, m, e)``: codes ``q`` (int8, or uint8/uint16 for probabilities) ``[..., C]``
and a per-row dyadic scale ``m`` int32 ``[..., 1]``, ``e`` int8 ``[..., 1]``, real value ``q * m * 2**-e``.
Input mantissas lie in [1, 2**15); every output mantissa lies in [2**14, 2**15) except where the int8 exponent
saturates (see ``finish``). "Rounding" is round half up, ``floor(x + 1/2)``, everywhere.
"""

from __future__ import annotations

import math

import numpy as np

SCALE_BITS = 15                    # activation mantissas m lie in [1, 2**15); outputs are normalized to [2**14, 2**15)
M_MAX = (1 << SCALE_BITS) - 1
E_MIN, E_MAX = -128, 127           # the int8 exponent
ZERO_SCALE = (1 << (SCALE_BITS - 1), E_MAX)  # the scale given to an all-zero output row
LOG2E_Q30 = 1549082005             # round(log2(e) * 2**30)
EXP_FRAC = 24                      # fractional bits of exponents in the base-2 domain (Q24)
EXP_CAP = 1 << 30                  # largest base-2 exponent magnitude kept (64.0 in Q24): 2**-64 is 0 in Q30
ONE_Q30 = 1 << 30
# 2**-f ~ 1 + c1 f + c2 f**2 + c3 f**3 on f in [0, 1), coefficients in Q30: a minimax fit of the relative error
# (8.9e-5) with the constant term pinned to 1, so that the row maximum maps to exactly 2**30.
EXP2_POLY = (-742586372, 248204643, -42537209)
ROPE_FRAC = 14                     # rotary tables hold cos and sin in Q14 (int16, 1.0 = 16384)
CLIP_ONE = 1 << 15                 # clip_q15 of no clipping: a row's range is max|v| * clip_q15 / 2**15
ALIGN_WINDOW = 16                  # per-channel exponents within this of the smallest one are aligned exactly
ADD_WINDOW = 39                    # DIAdd aligns two row exponents exactly when they differ by at most this
ADD_WINDOW16 = 31                  # ... when either side holds int16 codes (|q m| < 2**30, shifted < 2**61)
CODE_BITS = tuple(range(2, 9))
WIDE_CODE_BITS = tuple(range(2, 17))  # DIMatMul's and DIAdd's output codes: int8 up to 8 bits, int16 above
MAX_K = (1 << 17) - 1              # DIMatMul: K * 128 * 128 < 2**31, so the int32 accumulator is exact
MAX_K_ZERO = (1 << 16) - 1         # DIMatMul with w_zero: K * 128 * 255 < 2**31 (W - w_zero spans 9 bits)
MAX_K_X_ZERO = (1 << 15) - 1       # DIMatMul with x_zero: K * 255 * 255 < 2**31 (X - x_zero spans 9 bits too)


def qmax_of(bits: int, allowed: tuple[int, ...] = CODE_BITS) -> int:
    """Largest signed code of a ``bits``-wide activation: codes lie in [-qmax, qmax]."""
    if bits not in allowed:
        raise ValueError(f"bits must be in {allowed[0]}..{allowed[-1]}, got {bits}")
    return (1 << (bits - 1)) - 1


def di_matmul_max_k(abits: int, w_zero: bool, x_zero: bool) -> int:
    """DIMatMul's largest K: every ``sum_k (x - xz)(w - wz)`` below 2**31 (the int32 accumulator exact, ``acc * w_m``
    below 2**46). X's codes span 2**(b-1) per side, ``b = max(abits, 8)`` (int8 codes are bounded by their type, int16
    codes must lie in abits), one bit more with x_zero; W's span 2**7, a bit more with either zero point. At 8 bits
    this is MAX_K, MAX_K_ZERO or MAX_K_X_ZERO."""
    x_bits = max(abits, 8) - 1 + int(x_zero)
    w_bits = 7 + int(w_zero or x_zero)
    return (1 << (31 - x_bits - w_bits)) - 1


def code_type(bits: int):
    """The element type of ``bits``-wide signed codes: int8 up to 8 bits, int16 above."""
    return np.int8 if bits <= 8 else np.int16


def rshr(v, s: int):
    """``floor(v / 2**s + 1/2)`` for ``s >= 0`` (round half up), elementwise; ``|v| <= 2**62`` so ``s >= 63``
    gives 0. Works on Python ints and int64 arrays."""
    if s < 0:
        raise ValueError("rshr: negative shift")
    if s == 0:
        return v
    if s >= 63:
        return v * 0
    return (v + (1 << (s - 1))) >> s


def rshr_each(v: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``rshr`` with one shift per element (``s >= 0``, broadcast against ``v``)."""
    s = np.asarray(s, np.int64)
    sc = np.minimum(s, 62)
    half = np.where(sc > 0, np.left_shift(np.int64(1), np.maximum(sc - 1, 0)), 0)
    return np.where(s >= 63, 0, (v + half) >> sc)


def shift_each(v: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``v * 2**s`` per element: a left shift where ``s >= 0`` (the caller bounds the result below 2**62), a
    rounding right shift (``rshr``) where ``s < 0``."""
    s = np.asarray(s, np.int64)
    return np.where(s >= 0, v << np.maximum(s, 0), rshr_each(v, np.maximum(-s, 0)))


def ratio(num: int, den: int) -> tuple[int, int]:
    """A normalized dyadic ``(m, k)``, ``m * 2**-k ~ num / den``: ``k`` is the largest integer with
    ``round(num * 2**k / den) < 2**15`` and ``m`` that rounding, so ``m`` lies in [2**14, 2**15)."""
    if num <= 0 or den <= 0:
        raise ValueError("ratio: num and den must be positive")
    k = SCALE_BITS - num.bit_length() + den.bit_length()
    while True:
        if k >= 0:
            m = (2 * (num << k) + den) // (2 * den)
        else:
            d = den << -k
            m = (2 * num + d) // (2 * d)
        if m <= M_MAX:
            return m, k
        k -= 1


def finish(q: np.ndarray, m: int, e: int) -> tuple[np.ndarray, int, int]:
    """Fit a computed exponent into int8. Above 127 (a row below ~2**-100) the mantissa is shifted down, and a
    mantissa that reaches 0 turns the row into zeros with ``ZERO_SCALE``; below -128 (beyond ~2**150) the scale
    saturates at ``(2**15 - 1, -128)`` and the codes are kept."""
    if e > E_MAX:
        m = rshr(m, e - E_MAX)
        e = E_MAX
        if m == 0:
            return np.zeros_like(q), *ZERO_SCALE
    elif e < E_MIN:
        m, e = M_MAX, E_MIN
    return q, m, e


def dyn_quant_asym(v: np.ndarray, mult: int, E: int, bits: int) -> tuple[np.ndarray, int, int, int]:
    """Per-row asymmetric dynamic quantization of ``v * mult * 2**-E`` over the range [lo, hi] = [min(v, 0), max(v, 0)]
    (OmniQuant's per-token rule): codes ``u = clamp(round(v / s) + zp, 0, L)``, ``L = 2**bits - 1``,
    ``s = (hi - lo) / L``, ``zp = round(-lo / s)``, returned as int8 codes ``u - 2**(bits-1)``, the dyadic scale of s
    and the zero point ``zp - 2**(bits-1)`` (the real value is ``(code - zero) * m * 2**-e``); int16 codes above 8 bits.

    As in ``dyn_quant``: v is first rounded to 31 bits (``sh``, from the span), ``v / s`` is a multiply by
    ``R = round(L * 2**S / span)`` and a rounding shift by S, ``S = bitlen(span) + 23 - max(0, bitlen(L) - 7)``
    (``R < 2**31``, ``|v * R| <= 2**62``), the scale is ``ratio(span * mult, L) * 2**-(E - sh)``. An all-zero row,
    or one whose scale underflows (``finish``), is codes 0 and zero point 0 with ``ZERO_SCALE``."""
    levels, mid = (1 << bits) - 1, 1 << (bits - 1)
    zero_row = (np.zeros(v.shape, code_type(bits)), *ZERO_SCALE, 0)
    if not v.size:
        return zero_row
    span = max(int(v.max()), 0) - min(int(v.min()), 0)
    if span == 0:
        return zero_row
    sh = max(0, span.bit_length() - 31)
    v = rshr(v, sh)
    hi, lo = max(int(v.max()), 0), min(int(v.min()), 0)
    span = hi - lo
    if span == 0:
        return zero_row
    S = span.bit_length() + 23 - max(0, levels.bit_length() - 7)
    R = ((levels << S) + (span >> 1)) // span
    zp = ((-lo) * R + (1 << (S - 1))) >> S
    u = np.clip(((v * R + (1 << (S - 1))) >> S) + zp, 0, levels)
    m, k = ratio(span * mult, levels)
    e = k + E - sh
    if e > E_MAX and rshr(m, e - E_MAX) == 0:  # the scale underflows: finish would zero the row
        return zero_row
    q, m, e = finish((u - mid).astype(code_type(bits)), m, e)
    return q, m, e, zp - mid


def dyn_quant(v: np.ndarray, mult: int, E: int, qmax: int, clip_q15: int = CLIP_ONE) -> tuple[np.ndarray, int, int]:
    """Per-row dynamic quantization of ``v * mult * 2**-E`` (v int64 ``[C]``, ``|v| <= 2**62``, mult in
    [1, 2**32)): codes in [-qmax, qmax] (int8, or int16 for qmax > 127, qmax < 2**15) and a dyadic scale
    ``(m, e)`` with max |v| mapped to qmax.

    v is first rounded to at most 31 bits (``sh``); codes are ``round(v' * qmax / A')`` computed as a
    multiply by the reciprocal ``R = round(qmax * 2**S / A')`` and a rounding shift by S,
    ``S = bitlen(A') + 23 - max(0, bitlen(qmax) - 7)``; the scale is ``ratio(A' * mult, qmax) * 2**-(E - sh)``.
    ``clip_q15`` < 2**15 (DINorm, DISwiGLU, DIRequant: the activations a linear reads): A' becomes
    ``max(1, rshr(A' * clip_q15, 15))`` and codes beyond it saturate at +-qmax (|v'| stays below 2**31)."""
    codes = np.int8 if qmax < 1 << 7 else np.int16
    A = int(np.abs(v).max()) if v.size else 0
    if A == 0:
        return np.zeros(v.shape, codes), *ZERO_SCALE
    sh = max(0, A.bit_length() - 31)
    v = rshr(v, sh)
    A = int(np.abs(v).max())                      # in [1, 2**31]
    if clip_q15 < CLIP_ONE:  # a learned clip: the range shrinks to A * clip (>= 1), the codes beyond saturate
        A = max(1, rshr(A * clip_q15, 15))
    # S loses a bit per code bit above 7, so R < qmax * 2**(S + 1 - bitlen(A)) <= 2**31 for any qmax < 2**15
    S = A.bit_length() + 23 - max(0, qmax.bit_length() - 7)
    R = ((qmax << S) + (A >> 1)) // A
    q = np.clip((v * R + (1 << (S - 1))) >> S, -qmax, qmax).astype(codes)  # |v * R| <= 2**31 * 2**31
    m, k = ratio(A * mult, qmax)
    return finish(q, m, k + E - sh)


def exp2_neg(t: np.ndarray) -> np.ndarray:
    """``2**-(t / 2**24)`` in Q30 for Q24 exponents ``0 <= t <= EXP_CAP``: ``t = I + f``, the fraction by the
    cubic ``EXP2_POLY`` (Horner, a rounding shift after each product), the integer part by a rounding right
    shift of I bits."""
    t = np.asarray(t, np.int64)
    f = t & ((1 << EXP_FRAC) - 1)
    c1, c2, c3 = EXP2_POLY
    p = rshr(c3 * f, EXP_FRAC) + c2               # |c * f| < 2**30 * 2**24
    p = rshr(p * f, EXP_FRAC) + c1
    p = rshr(p * f, EXP_FRAC) + ONE_Q30
    return rshr_each(p, t >> EXP_FRAC)


def shift_capped(v: np.ndarray, s: int, cap: int) -> np.ndarray:
    """``min(cap, round(v * 2**-s))`` for ``v >= 0``, ``cap`` a power of two, any integer ``s``."""
    if s >= 0:
        return np.minimum(rshr(v, s), cap)
    ls = -s
    if ls >= cap.bit_length():
        return np.where(v > 0, cap, 0)
    return np.where(v > (cap >> ls), cap, v << ls)


def exp_arg(a: np.ndarray, e: int) -> np.ndarray:
    """Q24 base-2 exponent magnitude of a real value ``a * 2**-e`` (a >= 0, ``a < 2**31``): ``a * log2(e)``,
    i.e. ``min(EXP_CAP, round(a * LOG2E_Q30 * 2**-(30 + e - 24)))``."""
    return shift_capped(np.asarray(a, np.int64) * LOG2E_Q30, 30 + e - EXP_FRAC, EXP_CAP)


def align_exponents(e: np.ndarray) -> tuple[int, np.ndarray]:
    """Per-channel exponents ``e`` [N] -> a common exponent ``Ea`` and shifts ``Ea - e`` (<= ALIGN_WINDOW):
    ``Ea = min(max e, min e + ALIGN_WINDOW)``, so channels within the window are aligned exactly by left shifts
    and finer ones lose low bits to a rounding right shift."""
    e = np.asarray(e, np.int64)
    Ea = int(min(e.max(), e.min() + ALIGN_WINDOW))
    return Ea, Ea - e


def _check_mantissas(m: np.ndarray, what: str, lo: int) -> np.ndarray:
    m = np.asarray(m, np.int64)
    bad = (m < lo) | (m > M_MAX)
    if bad.any():
        raise ValueError(f"{what} has a mantissa outside [{lo}, {M_MAX}]: {int(m[bad][0])}")
    return m


def _rows(q: np.ndarray, m: np.ndarray, e: np.ndarray, what: str):
    q = np.asarray(q)
    lead = q.shape[:-1]
    if np.shape(m) != (*lead, 1) or np.shape(e) != (*lead, 1):
        raise ValueError(f"{what}: scales must have shape {(*lead, 1)}, got {np.shape(m)} and {np.shape(e)}")
    m = _check_mantissas(m, what, 1).reshape(-1)
    return q.reshape(-1, q.shape[-1]).astype(np.int64), m, np.asarray(e, np.int64).reshape(-1)


def _check_codes(q, what: str):
    """The code type of ``q`` (int8 or int16; anything else is refused)."""
    dtype = np.asarray(q).dtype
    if dtype not in (np.int8, np.int16):
        raise ValueError(f"{what} must hold int8 or int16 codes, got {dtype}")
    return dtype.type


def _check_in_bits(q, bits: int, what: str) -> None:
    """Refuse codes outside the signed ``bits``-wide range [-2**(bits-1), 2**(bits-1))."""
    q = np.asarray(q, np.int64)
    bad = (q < -(1 << (bits - 1))) | (q >= 1 << (bits - 1))
    if bad.any():
        raise ValueError(f"{what} has a code outside the {bits}-bit range: {int(q[bad][0])}")


def _outputs(rows, shape, code_type=np.int8):
    q = np.stack([r[0] for r in rows]).astype(code_type).reshape(shape)
    m = np.array([r[1] for r in rows], np.int32).reshape(*shape[:-1], 1)
    e = np.array([r[2] for r in rows], np.int8).reshape(*shape[:-1], 1)
    if rows and len(rows[0]) == 4:  # asymmetric codes: the zero points too
        return q, m, e, np.array([r[3] for r in rows], np.int32).reshape(*shape[:-1], 1)
    return q, m, e


def _quantizer(obits: int, clip_q15: int, act_sym: int, allowed: tuple[int, ...] = CODE_BITS):
    """The per-row requantization of the ops whose output a linear reads: symmetric ``dyn_quant`` (with the learned
    clip), or (act_sym=0) ``dyn_quant_asym``, which returns a zero point per row as well. obits in ``allowed``."""
    if act_sym:
        qmax = qmax_of(obits, allowed)
        return lambda v, mult, E: dyn_quant(v, mult, E, qmax, clip_q15)
    if clip_q15 != CLIP_ONE:
        raise ValueError("a learned clip (clip_q15) needs symmetric codes (act_sym=1)")
    qmax_of(obits, allowed)
    return lambda v, mult, E: dyn_quant_asym(v, mult, E, obits)


# ---------------------------------------------------------------------------------------------------------
# Ops


def di_matmul(X, x_m, x_e, W, w_m, w_e, obits: int, w_zero=None, x_zero=None, abits: int = 8, split: int = 0):
    """``Y = (X - x_zero) @ (W - w_zero)^T`` requantized per row; ``split`` (0 < split < N): two outputs, channels
    [0, split) and [split, N) each requantized on its own, exactly as two DIMatMuls of the two halves of W (q and k
    of one input in one op, so a decode step passes over its threads once for both). ``acc`` int32 exact (K <= 131071; with ``w_zero``, an
    asymmetric per-channel weight grid as int8 offsets [N], K <= 65535: ``acc = X @ W^T - w_zero * sum(X)``; with
    ``x_zero``, asymmetric per-row codes' zero points int32 [..., 1] (DINorm's, DISwiGLU's, DIRequant's act_sym=0
    output), K <= 32767: ``acc = X.W - w_zero sum(X) - x_zero sum(W) + K x_zero w_zero``; ``di_matmul_max_k``). X holds
    int8 codes for abits <= 8, int16 codes in [-2**(abits-1), 2**(abits-1)) above (x_zero in the same range), which
    narrows K by a bit per bit of abits above 8 (a final norm's 12-bit codes into lm_head: K <= 2047 with x_zero);
    channel n's ``acc * w_m[n]`` (< 2**46) is aligned to the common exponent of ``align_exponents(w_e)``; then
    ``dyn_quant`` with the row's ``x_m`` as multiplier and ``x_e + Ea`` as exponent. W holds int8 codes; obits
    2..16, int8 output codes up to 8 bits, int16 above.

    int64 bounds for 16-bit codes: the aligned P < 2**46 * 2**16 = 2**62 whatever obits; dyn_quant rounds P to
    31 bits, its reciprocal ``R < 2**31`` for every qmax < 2**15 (S loses a bit per code bit above 7), so
    ``|P' * R| <= 2**62``; the scale's ``ratio(A * x_m, qmax)`` has ``A * x_m < 2**46``."""
    if split:
        N = np.shape(W)[0]
        if not 0 < split < N:
            raise ValueError(f"split={split} must lie in (0, N={N})")
        halves = [slice(0, split), slice(split, N)]
        return sum((di_matmul(X, x_m, x_e, np.asarray(W)[h], np.asarray(w_m)[h], np.asarray(w_e)[h], obits,
                              None if w_zero is None else np.asarray(w_zero)[h], x_zero, abits) for h in halves), ())
    qmax = qmax_of(obits, WIDE_CODE_BITS)
    qmax_of(abits, WIDE_CODE_BITS)
    if _check_codes(X, "X") != code_type(abits):
        raise ValueError(f"X holds {np.asarray(X).dtype} codes, abits={abits} gives {np.dtype(code_type(abits))}")
    if abits > 8:
        _check_in_bits(X, abits, "X")
        if x_zero is not None:
            _check_in_bits(x_zero, abits, "x_zero")
    W = np.asarray(W).astype(np.int64)
    limit = di_matmul_max_k(abits, w_zero is not None, x_zero is not None)
    if W.shape[1] > limit:
        raise ValueError(f"K={W.shape[1]} exceeds {limit} (the int32 accumulator)")
    if w_zero is not None:
        W = W - np.asarray(w_zero, np.int64).reshape(-1, 1)
    w_m = _check_mantissas(w_m, "w_m", -M_MAX)
    Ea, shifts = align_exponents(w_e)
    Xr, xm, xe = _rows(X, x_m, x_e, "X")
    if x_zero is not None:
        if np.shape(x_zero) != (*np.shape(X)[:-1], 1):
            raise ValueError(f"x_zero must have shape {(*np.shape(X)[:-1], 1)}, got {np.shape(x_zero)}")
        Xr = Xr - np.asarray(x_zero, np.int64).reshape(-1, 1)
    P = shift_each((Xr @ W.T) * w_m, shifts)
    rows = [dyn_quant(P[r], int(xm[r]), int(xe[r]) + Ea, qmax) for r in range(len(Xr))]
    return _outputs(rows, (*np.shape(X)[:-1], W.shape[0]), code_type(obits))


def di_exp(X, x_m, x_e, obits: int):
    """``exp(x)`` per row: codes ``round(qmax * exp(x - max x))`` in [0, qmax], scale ``exp(max x) / qmax``."""
    qmax = qmax_of(obits)
    Xr, xm, xe = _rows(X, x_m, x_e, "X")
    rows = []
    for q, m, e in zip(Xr, xm.tolist(), xe.tolist()):
        top = int(q.max())
        codes = rshr(exp2_neg(exp_arg((top - q) * m, e)) * qmax, 30)
        w = top * m * LOG2E_Q30                   # max x * log2(e), in Q(30 + e); |w| < 2**54
        s = 30 + e - EXP_FRAC
        if s >= 0:
            z = rshr(w, s)
        else:                                     # a coarse scale: saturate at +-2**62
            z = w << -s if abs(w).bit_length() - s <= 62 else (1 << 62) * (1 if w > 0 else -1)
        whole, frac = z >> EXP_FRAC, z & ((1 << EXP_FRAC) - 1)
        p2 = ONE_Q30 if frac == 0 else 2 * int(exp2_neg(np.int64((1 << EXP_FRAC) - frac)))  # 2**frac, Q30
        mm, k = ratio(p2, qmax)
        rows.append(finish(codes, mm, k + 30 - whole))
    return _outputs(rows, np.shape(X))


def causal_allowed(shape: tuple[int, ...]) -> np.ndarray:
    """bool [..., Sq, Skv]: key j is visible to query i when ``j <= i + Skv - Sq`` (the last query sees all)."""
    sq, skv = shape[-2], shape[-1]
    allowed = np.arange(skv)[None, :] <= np.arange(sq)[:, None] + (skv - sq)
    return np.broadcast_to(allowed, shape)


def di_clipped_softmax(X, x_m, x_e, mask=None, *, clip_q8: int, is_causal: int, obits: int):
    """Softmax over the last axis of ``x`` clipped to ``[max - c, max]``, ``c = clip_q8 / 256`` (0: no clip),
    restricted to the keys ``mask`` (bool, broadcast) and the causal rule allow. Per row: base-2 exponents
    ``t = min(TC, (max - x) * log2(e))`` in Q24 (the products rounded once to 31 bits per row first, ``pre``),
    ``E = exp2_neg(t)`` in Q30 (0 where masked), ``S = sum E``; codes ``round(E * qmax / 2**30)`` in
    [0, qmax = 2**obits - 1] (uint8; uint16 above 8 bits); scale ``2**30 / (S * qmax)``. A row with no visible key
    is all zeros."""
    if obits not in WIDE_CODE_BITS:
        raise ValueError(f"obits must be in 2..16, got {obits}")
    qmax = (1 << obits) - 1
    shape = np.shape(X)
    if shape[-1] >= softmax_max_keys(obits):
        raise ValueError(f"X has {shape[-1]} keys, more than {softmax_max_keys(obits) - 1} at obits={obits}")
    allowed = np.ones(shape, bool)
    if mask is not None:
        allowed &= np.broadcast_to(np.asarray(mask, bool), shape)
    if is_causal:
        allowed &= causal_allowed(shape)
    tc = rshr(clip_q8 * LOG2E_Q30, 30 + 8 - EXP_FRAC) if clip_q8 else EXP_CAP
    Xr, xm, xe = _rows(X, x_m, x_e, "X")
    rows = []
    for q, m, e, ok in zip(Xr, xm.tolist(), xe.tolist(), allowed.reshape(Xr.shape)):
        if not ok.any():
            rows.append((np.zeros(q.shape, np.int64), *ZERO_SCALE))
            continue
        a = (int(q[ok].max()) - q) * m            # >= 0 where visible; < 2**47 for int32 scores
        a = np.where(ok, a, 0)
        pre = max(0, int(a.max()).bit_length() - 31)
        t = np.minimum(shift_capped(rshr(a, pre) * LOG2E_Q30, 30 + e - EXP_FRAC - pre, EXP_CAP), tc)
        E = np.where(ok, exp2_neg(t), 0)
        S = int(E.sum())                          # >= 2**30: the maximum maps to exactly 2**30
        mm, k = ratio(ONE_Q30, S * qmax)
        rows.append(finish(rshr(E * qmax, 30), mm, k))
    return _outputs(rows, shape, prob_type(obits))


def softmax_max_keys(obits: int) -> int:
    """Keys a DIClippedSoftmax row may hold: 2**24 (its exp sum S < 2**54), and S * qmax < 2**64 above 8 bits."""
    return min(1 << 24, 1 << (34 - obits))


def prob_type(obits: int):
    """The element type of DIClippedSoftmax's codes: uint8 up to 8 bits, uint16 above."""
    return np.uint8 if obits <= 8 else np.uint16


def add_positive(a: int, ea: int, b: int, eb: int) -> tuple[int, int]:
    """``a * 2**-ea + b * 2**-eb`` (a, b in [0, 2**61)) as ``(v, ev)`` with ``v < 2**62``: the coarser term is
    shifted left as far as it stays below 2**61, the finer one right (rounded) by whatever is left."""
    if b == 0:
        return a, ea
    if a == 0:
        return b, eb
    (x, ex), (y, ey) = sorted(((a, ea), (b, eb)), key=lambda p: -p[1])
    d, room = ex - ey, 61 - y.bit_length()
    if d <= room:
        return x + (y << d), ex
    return int(rshr(x, d - room)) + (y << room), ex - (d - room)


def rms_scale(q: np.ndarray, m: int, e: int, eps_q60: int) -> tuple[int, int] | None:
    """``(r, er)`` with ``r * 2**-er ~ sqrt(mean((q m 2**-e)**2) + eps_q60 * 2**-60)``, r in [2**30, 2**31);
    None for an all-zero row."""
    ss = int((q * q).sum())                       # int8: <= 2**14 * C <= 2**31; int16: <= 2**30 * C < 2**47
    if ss == 0:
        return None
    p = max(0, ss.bit_length() - 31)              # int16 sums rounded to 31 bits (int8 ones are never shifted)
    T = int(rshr(ss, p)) * m * m                  # <= 2**31 * (2**15 - 1)**2 < 2**61
    s1 = 61 - T.bit_length()
    V, ev = add_positive((T << s1) // q.size, 2 * e + s1 - p, eps_q60, 60)
    s2 = 62 - V.bit_length()
    if (ev + s2) % 2:
        s2 -= 1
    V = V << s2 if s2 >= 0 else int(rshr(V, -s2))
    return math.isqrt(V), (ev + s2) // 2


def di_norm(X, x_m, x_e, g_m, g_e, *, eps_q60: int, obits: int, clip_q15: int = CLIP_ONE, act_sym: int = 1):
    """RMSNorm ``x / sqrt(mean(x**2) + eps) * gamma`` with gamma ``g_m * 2**-g_e`` per channel: the mean square
    normalized to 61 bits, divided by C, plus eps (``add_positive``), an exact integer square root (``isqrt``
    of a 60..62-bit value), ``ratio(m, r)`` for the row factor, then ``dyn_quant`` of the aligned ``q * g_m``
    (< 2**15 * 2**15 * 2**16 for int16 codes), or ``dyn_quant_asym`` (act_sym=0: a zero point per row, the fourth
    output). X holds int8 or int16 codes; obits 2..16, int8 output codes up to 8 bits, int16 above (a final norm
    whose codes lm_head reads at 12 bits)."""
    quant = _quantizer(obits, clip_q15, act_sym, WIDE_CODE_BITS)
    if not 0 <= eps_q60 < 1 << 61:
        raise ValueError(f"eps_q60 must be in [0, 2**61), got {eps_q60}")
    g_m = _check_mantissas(g_m, "g_m", -M_MAX)
    Ea, shifts = align_exponents(g_e)
    _check_codes(X, "X")
    Xr, xm, xe = _rows(X, x_m, x_e, "X")
    if Xr.shape[1] > MAX_K:
        raise ValueError(f"X has {Xr.shape[1]} channels, more than {MAX_K} (the sum of squares)")
    rows = []
    for q, m, e in zip(Xr, xm.tolist(), xe.tolist()):
        rms = rms_scale(q, m, e, eps_q60)
        if rms is None:
            rows.append((np.zeros(q.shape, np.int64), *ZERO_SCALE, *(() if act_sym else (0,))))
            continue
        mr, k = ratio(m, rms[0])
        rows.append(quant(shift_each(q * g_m, shifts), mr, Ea + k + e - rms[1]))
    return _outputs(rows, np.shape(X), code_type(obits))


def sigmoid_q30(q: np.ndarray, m: int, e: int) -> np.ndarray:
    """``sigmoid(q m 2**-e)`` in Q30: ``E = exp(-|x|)`` by ``exp2_neg``, ``round(2**60 / (2**30 + E))`` for
    x >= 0 and its complement to 2**30 below."""
    E = exp2_neg(exp_arg(np.abs(q) * m, e))
    D = ONE_Q30 + E
    R = ((1 << 61) + D) // (2 * D)
    return np.where(q >= 0, R, ONE_Q30 - R)


def hadamard_blocks(v: np.ndarray, block: int) -> np.ndarray:
    """The unnormalized Walsh-Hadamard transform of each ``block`` consecutive values of v [C] (Sylvester order,
    ``[[H, H], [H, -H]]``), exact in int64 while ``|v| * block < 2**63``."""
    v = np.asarray(v, np.int64).reshape(-1, block)
    h = 1
    while h < block:
        pairs = v.reshape(v.shape[0], block // (2 * h), 2, h)
        v = np.stack([pairs[:, :, 0] + pairs[:, :, 1], pairs[:, :, 0] - pairs[:, :, 1]], axis=2).reshape(-1, block)
        h *= 2
    return v.reshape(-1)


def hadamard_shift(A: int, block: int) -> int:
    """Bits a row of max |v| = A loses before ``hadamard_blocks`` so that the transform stays below 2**61."""
    return max(0, A.bit_length() + block.bit_length() - 1 - 61)


def di_swiglu(G, g_m, g_e, U, u_m, u_e, obits: int, clip_q15: int = CLIP_ONE, act_sym: int = 1, hadamard: int = 0):
    """``silu(gate) * up`` per row: ``v = q_g * sigmoid_q30(q_g) * q_u`` (< 2**44 with int8 codes, < 2**60 with
    int16), ``dyn_quant`` (act_sym=0: ``dyn_quant_asym``) with multiplier ``m_g * m_u`` and exponent
    ``e_g + e_u + 30``. gate and up hold int8 or int16 codes, both the same. ``hadamard`` (a power of two dividing C,
    0: none): the row is first rounded by ``hadamard_shift`` bits and rotated by ``hadamard_blocks`` (the codes then
    hold ``silu(gate) * up`` times the unnormalized block Hadamard matrix: the reader takes the 1/sqrt(block))."""
    if _check_codes(G, "gate") != _check_codes(U, "up"):
        raise ValueError("gate and up must hold the same code type, got "
                         f"{np.asarray(G).dtype} and {np.asarray(U).dtype}")
    quant = _quantizer(obits, clip_q15, act_sym)
    Gr, gm, ge = _rows(G, g_m, g_e, "gate")
    Ur, um, ue = _rows(U, u_m, u_e, "up")
    if Gr.shape != Ur.shape:
        raise ValueError(f"gate and up differ in shape: {np.shape(G)} vs {np.shape(U)}")
    if hadamard and (hadamard & (hadamard - 1) or Gr.shape[1] % hadamard):
        raise ValueError(f"hadamard={hadamard} must be a power of two dividing C={Gr.shape[1]}")

    def rotated(v, mult, E):
        if not hadamard:
            return quant(v, mult, E)
        sh = hadamard_shift(int(np.abs(v).max()), hadamard)
        return quant(hadamard_blocks(rshr(v, sh), hadamard), mult, E - sh)

    rows = [rotated(g * sigmoid_q30(g, a, b) * u, a * c, b + d + 30)
            for g, a, b, u, c, d in zip(Gr, gm.tolist(), ge.tolist(), Ur, um.tolist(), ue.tolist())]
    return _outputs(rows, np.shape(G))


def di_rotary(X, x_m, x_e, position_ids, cos, sin, past=None, past_m=None, past_e=None, *, interleaved: int,
              obits: int, heads_first: int = 0, rotate: int = 1):
    """Rotary embedding of ``x [B, S, H, D]`` with Q14 tables ``cos, sin [P, D/2]`` at ``position_ids [B, S]``:
    pairs (i, i + D/2) (or (2i, 2i+1) when interleaved) become ``(a c - b s, b c + a s)`` (< 2**23), then
    ``dyn_quant`` per (token, head) with exponent ``e + 14``. Scales ``[B, S, H, 1]`` or ``[B, S, 1, 1]``.
    heads_first=1: the outputs in attention's layout, codes ``[B, H, S, D]`` and scales ``[B, H, S, 1]`` (the same
    rows, transposed). X may be ``[B, S, H*D]`` with scales ``[B, S, 1]``: read as ``[B, S, H, D]``, D = 2 x the
    tables' last dim. rotate=0: no rotation and no requantization (the codes as they are, each row with its
    token's scale): the same layouts for values that are not rotated (V into attention's layout). X holds int8
    or int16 codes (a projection's 16-bit output: pairs < 2**30); rotate=0 copies codes, so int8 only.
    past, past_m, past_e (heads_first only, all or none): a cache ``[B, H, P, D]`` / ``[B, H, P, 1]`` the outputs
    are appended to along P (the present cache)."""
    if (past is None) != (past_m is None) or (past is None) != (past_e is None):
        raise ValueError("past, past_m and past_e come together")
    if past is not None:
        if not heads_first:
            raise ValueError("a past cache needs heads_first=1")
        new = di_rotary(X, x_m, x_e, position_ids, cos, sin, interleaved=interleaved, obits=obits, heads_first=1,
                        rotate=rotate)
        B, H, _, D = new[0].shape
        shape = np.shape(past)
        if np.asarray(past).dtype != np.int8 or len(shape) != 4 or (shape[0], shape[1], shape[3]) != (B, H, D):
            raise ValueError(f"past must be int8 [B, H, P, D] = [{B}, {H}, P, {D}], got {np.asarray(past).dtype} "
                             f"{np.shape(past)}")
        cache = (past, np.asarray(past_m, np.int32), np.asarray(past_e, np.int8))
        return tuple(np.concatenate([c, n], axis=2) for c, n in zip(cache, new))
    if _check_codes(X, "X") != np.int8 and not rotate:
        raise ValueError("rotate=0 copies the codes into int8: X must be int8")
    qmax = qmax_of(obits)
    X = np.asarray(X).astype(np.int64)
    if X.ndim == 3:
        D = 2 * np.shape(cos)[1]
        if np.shape(x_m) != (*X.shape[:2], 1) or X.shape[2] % D:
            raise ValueError(f"X [B, S, H*D] {X.shape} needs a multiple of D={D} and scales [B, S, 1], got {np.shape(x_m)}")
        X = X.reshape(X.shape[0], X.shape[1], X.shape[2] // D, D)
        x_m, x_e = np.asarray(x_m)[..., None], np.asarray(x_e)[..., None]
    B, S, H, D = X.shape
    m = np.broadcast_to(_check_mantissas(x_m, "x_m", 1), (B, S, H, 1)).reshape(-1)
    e = np.broadcast_to(np.asarray(x_e, np.int64), (B, S, H, 1)).reshape(-1)
    pos = np.asarray(position_ids, np.int64)
    if pos.min() < 0 or pos.max() >= np.shape(cos)[0]:
        raise ValueError(f"position_ids must lie in [0, {np.shape(cos)[0]})")
    if not rotate:
        out = (X.astype(np.int8), m.astype(np.int32).reshape(B, S, H, 1), e.astype(np.int8).reshape(B, S, H, 1))
        return tuple(np.ascontiguousarray(t.transpose(0, 2, 1, 3)) for t in out) if heads_first else out
    c = np.asarray(cos, np.int64)[pos][:, :, None, :]     # [B, S, 1, D/2]
    s = np.asarray(sin, np.int64)[pos][:, :, None, :]
    a, b = (X[..., 0::2], X[..., 1::2]) if interleaved else (X[..., : D // 2], X[..., D // 2:])
    first, second = a * c - b * s, b * c + a * s
    if interleaved:
        v = np.stack([first, second], -1).reshape(B, S, H, D)
    else:
        v = np.concatenate([first, second], -1)
    v = v.reshape(-1, D)
    rows = [dyn_quant(v[r], int(m[r]), int(e[r]) + ROPE_FRAC, qmax) for r in range(len(v))]
    out = _outputs(rows, (B, S, H, D))
    return tuple(np.ascontiguousarray(t.transpose(0, 2, 1, 3)) for t in out) if heads_first else out


def di_add(A, a_m, a_e, B, b_m, b_e, obits: int):
    """``a + b`` per row: ``q * m`` of each side (< 2**22 for int8 codes, < 2**30 for int16) brought to the
    exponent ``E = min(max(ea, eb), min(ea, eb) + W)``, W = ADD_WINDOW (39) when both sides are int8 and
    ADD_WINDOW16 (31) when either is int16 (left shifts of at most W bits, so each term < 2**61 and the sum
    < 2**62; a finer side beyond the window is shifted right, rounded), summed, then ``dyn_quant`` with exponent
    E. A and B hold int8 or int16 codes each; obits 2..16, int8 output codes up to 8 bits, int16 above."""
    qmax = qmax_of(obits, WIDE_CODE_BITS)
    window = ADD_WINDOW if _check_codes(A, "A") == _check_codes(B, "B") == np.int8 else ADD_WINDOW16
    Ar, am, ae = _rows(A, a_m, a_e, "A")
    Br, bm, be = _rows(B, b_m, b_e, "B")
    if Ar.shape != Br.shape:
        raise ValueError(f"A and B differ in shape: {np.shape(A)} vs {np.shape(B)}")
    rows = []
    for qa, ma, ea, qb, mb, eb in zip(Ar, am.tolist(), ae.tolist(), Br, bm.tolist(), be.tolist()):
        E = min(max(ea, eb), min(ea, eb) + window)
        v = shift_each(qa * ma, E - ea) + shift_each(qb * mb, E - eb)
        rows.append(dyn_quant(v, 1, E, qmax))
    return _outputs(rows, np.shape(A), code_type(obits))


# ---------------------------------------------------------------------------------------------------------
# Attention between two integer activations, and merging rows (the integer-only graph's attention)

MAX_BATCH_K = (1 << 16) - 1        # DIBatchMatMul: 255 * 128 * K < 2**31 and 2**23 * 2**16 * 2**7 * K < 2**62
WIDE_BITS = 30                     # DIBatchMatMul's int32 outputs have |y| <= 2**30


def wide_quant(v: np.ndarray, mult: int, E: int) -> tuple[np.ndarray, int, int]:
    """A row of int64 values ``v * mult * 2**-E`` (|v| < 2**62, mult in [1, 2**15)) as int32 values of at most
    ``WIDE_BITS`` bits (``y = rshr(v, sh)``, ``sh = max(0, bitlen(max|v|) - 30)``) and a normalized dyadic scale
    (``mult`` shifted into [2**14, 2**15), exact); an all-zero row gets ``ZERO_SCALE``."""
    A = int(np.abs(v).max()) if v.size else 0
    if A == 0:
        return np.zeros(v.shape, np.int64), *ZERO_SCALE
    sh = max(0, A.bit_length() - WIDE_BITS)
    m, k = ratio(mult, 1)
    return finish(rshr(v, sh), m, k + E - sh)


def _batch_offsets(a_lead: tuple, b_lead: tuple) -> np.ndarray:
    """For each batch index of A (row-major over ``a_lead``), the flat batch index of B. Each B dim equals A's, is
    1, or divides it (grouped-query attention: A's index i takes B's i // (A's dim / B's dim))."""
    if len(a_lead) != len(b_lead) or any(b < 1 or a % b for a, b in zip(a_lead, b_lead)):
        raise ValueError(f"B's batch dims {b_lead} must equal A's {a_lead}, be 1 or divide them")
    index = np.indices(a_lead).reshape(len(a_lead), -1) if a_lead else np.zeros((0, 1), np.int64)
    b_index = [i // (a // b) for i, a, b in zip(index, a_lead, b_lead)]
    return np.ravel_multi_index(b_index, b_lead) if a_lead else np.zeros(1, np.int64)


def context_shift(a_abs_sum: int, max_shift: int) -> int:
    """How far P.V lowers its common exponent so that ``sum_k u[k] * B[k, n]`` stays below 2**62: the sum is below
    ``sum_k |A[m, k]| * 2**15 * 2**max_shift * 2**7`` (max_shift: the largest left shift of a kept key). Int8 and
    uint8 A never need it (``255 * K < 2**24``, shifts <= 16); uint16 probabilities summing to ~2**16 neither."""
    return max(0, a_abs_sum.bit_length() + max(max_shift, 0) + 22 - 62)


def di_batch_matmul(A, a_m, a_e, B, b_m, b_e, mask=None, *, trans_b: int, is_causal: int = 0):
    """Matmul of two integer activations with per-row scales on both sides, wide (int32) output.

    A ``[..., M, K]`` (int8, or uint8/uint16 probabilities) with scales ``[..., M, 1]``; B holds per-row scales
    ``[..., R, 1]`` (a KV cache: one scale per token) and batch dims equal to A's, 1, or a divisor of A's
    (grouped-query attention: A's head h reads B's head h // (A's heads / B's)).
    trans_b=1 (Q.K^T): B ``[..., N, K]``, ``Y = A @ B^T``: exact int32 dot products, ``acc[n] * b_m[n]``
    aligned over the visible keys (``mask`` broadcast to ``[..., M, N]``, and the causal rule
    ``n <= m + N - M``; hidden ones give 0 and take no part) by ``align_exponents``.
    trans_b=0 (P.V): B ``[..., K, N]``, ``Y = A @ B``: the contraction axis carries B's scales, so per row
    ``u[k] = A[m, k] * b_m[k]`` aligned over the k with ``A[m, k] != 0``, then ``sum_k u[k] * B[k, n]``, kept
    below 2**62 by ``context_shift`` (which lowers Ea only for uint16 probabilities). Either way ``wide_quant``
    with the row's ``a_m`` and exponent ``a_e + Ea``."""
    a_type = np.asarray(A).dtype
    A = np.asarray(A).astype(np.int64)
    B = np.asarray(B).astype(np.int64)
    M, K = A.shape[-2:]
    N = B.shape[-2] if trans_b else B.shape[-1]
    if (B.shape[-1] if trans_b else B.shape[-2]) != K:
        raise ValueError(f"A {A.shape} and B {B.shape} do not share K (trans_b={trans_b})")
    if K > MAX_BATCH_K:
        raise ValueError(f"K={K} exceeds {MAX_BATCH_K}")
    if not trans_b and (mask is not None or is_causal):
        raise ValueError("mask and is_causal apply to trans_b=1 (scores) only")
    if trans_b and a_type == np.uint16:
        raise ValueError("uint16 A (probabilities) is for trans_b=0 (P.V) only")
    lead = A.shape[:-2]
    offsets = _batch_offsets(lead, B.shape[:-2])
    Ar, am, ae = _rows(A, a_m, a_e, "A")
    Bq = B.reshape(-1, *B.shape[-2:])
    bm = _check_mantissas(b_m, "b_m", 1).reshape(len(Bq), -1)
    be = np.asarray(b_e, np.int64).reshape(len(Bq), -1)
    allowed = np.ones((*lead, M, N), bool)
    if mask is not None:
        allowed &= np.broadcast_to(np.asarray(mask, bool), allowed.shape)
    if is_causal:
        allowed &= causal_allowed(allowed.shape)
    allowed = allowed.reshape(-1, N)
    rows = []
    for r in range(len(Ar)):
        bq, m_b, e_b = Bq[offsets[r // M]], bm[offsets[r // M]], be[offsets[r // M]]
        if trans_b:
            keep = allowed[r]
            acc = bq @ Ar[r]                                     # exact: |acc| < 2**31
        else:
            keep = Ar[r] != 0
        if not keep.any():
            rows.append((np.zeros(N, np.int64), *ZERO_SCALE))
            continue
        Ea = int(min(e_b[keep].max(), e_b[keep].min() + ALIGN_WINDOW))
        if trans_b:
            v = np.where(keep, shift_each(acc * m_b, Ea - e_b), 0)
        else:
            Ea -= context_shift(int(np.abs(Ar[r]).sum()), Ea - int(e_b[keep].min()))
            v = np.where(keep, shift_each(Ar[r] * m_b, Ea - e_b), 0) @ bq
        rows.append(wide_quant(v, int(am[r]), int(ae[r]) + Ea))
    return _outputs(rows, (*lead, M, N), np.int32)


def di_requant(X, x_m, x_e, obits: int, clip_q15: int = CLIP_ONE, act_sym: int = 1, heads_first: int = 0):
    """Merge the last two axes of ``X [..., G, D]`` (int8 or int32, per-row scales ``[..., G, 1]``) into rows of
    ``G * D`` int8 codes with one scale each (e.g. attention heads into a token): ``q * m`` (< 2**46) aligned over
    the G exponents (``align_exponents``), then ``dyn_quant`` (act_sym=0: ``dyn_quant_asym``). heads_first=1 reads
    attention's layout ``X [B, G, S, D]`` (scales ``[B, G, S, 1]``) as its transpose ``[B, S, G, D]``."""
    quant = _quantizer(obits, clip_q15, act_sym)
    X = np.asarray(X).astype(np.int64)
    if heads_first:
        if X.ndim != 4:
            raise ValueError("heads_first=1: X must be [B, G, S, D]")
        X, x_m, x_e = (np.asarray(t).transpose(0, 2, 1, 3) for t in (X, x_m, x_e))
    if X.ndim < 2:
        raise ValueError("X must have rank >= 2 ([..., G, D])")
    *lead, G, D = X.shape
    m = _check_mantissas(x_m, "x_m", 1).reshape(-1, G)
    e = np.asarray(x_e, np.int64).reshape(-1, G)
    Xr = X.reshape(-1, G, D)
    rows = []
    for q, mm, ee in zip(Xr, m, e):
        Ea, shifts = align_exponents(ee)
        rows.append(quant(shift_each(q * mm[:, None], shifts[:, None]).reshape(-1), 1, Ea))
    return _outputs(rows, (*lead, G * D))
