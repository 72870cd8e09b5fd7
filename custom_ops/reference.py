"""NumPy float64 references for the edgeq ops: the ground truth the C++/CUDA kernels are tested against."""

from __future__ import annotations

import numpy as np

from edgeq.custom_ops.packing import unpack_codes, unpack_row_bitstream
from edgeq.custom_ops.schema import gqmm_n_groups, spqr_weight_shapes


def dequantize(B: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, K: int, N: int, bits: int,
               group_size: int) -> np.ndarray:
    """W [N, K] float64 with W[n, k] = scales[n, k // g] * (code[n, k] - zp[n, k // g])."""
    n_groups = gqmm_n_groups(K, group_size)
    codes = unpack_codes(B, bits, group_size, K).astype(np.float64)
    if codes.shape[0] != N:
        raise ValueError(f"GroupQuantMatMul reference: B has {codes.shape[0]} rows, N is {N}")
    scales = np.asarray(scales, np.float64).reshape(N, n_groups)
    if zero_points is None:
        zp = np.full((N, n_groups), float(1 << (bits - 1)))
    else:
        zp = np.asarray(zero_points, np.float64).reshape(N, n_groups)
    group_of_k = np.arange(K) // group_size
    return scales[:, group_of_k] * (codes - zp[:, group_of_k])


def group_quant_matmul(A: np.ndarray, B: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, K: int,
                       N: int, bits: int, group_size: int) -> np.ndarray:
    """Y [..., N] float64 = A @ W^T (see ``schema.GROUP_QUANT_MATMUL``)."""
    A = np.asarray(A, np.float64)
    if A.shape[-1] != K:
        raise ValueError(f"GroupQuantMatMul reference: A's last dim is {A.shape[-1]}, K is {K}")
    W = dequantize(B, scales, zero_points, K, N, bits, group_size)
    return A @ W.T


def quantize_tokens(A: np.ndarray, abits: int) -> tuple[np.ndarray, np.ndarray]:
    """QuantLinear's per-token activation quantization: (q int8 [..., K], s_x [..., 1] of A's type).

    Every scalar step is rounded to A's type as the exporter's stock-op chain computes it: float16 division is
    done in float32 and rounded once to float16, which is the correctly rounded float16 quotient.
    """
    from edgeq.custom_ops.schema import QL_SCALE_FLOOR, ql_qmax

    A = np.asarray(A)
    if A.dtype not in (np.float32, np.float16):
        raise ValueError(f"QuantLinear reference: A must be float32 or float16, got {A.dtype}")
    T, qmax = A.dtype.type, ql_qmax(abits)
    absmax = np.abs(A).max(axis=-1, keepdims=True)
    s = np.maximum((absmax.astype(np.float32) / np.float32(qmax)).astype(T), T(QL_SCALE_FLOOR))
    r = (A.astype(np.float32) / s.astype(np.float32)).astype(T)
    return np.clip(np.rint(r), -qmax - 1, qmax).astype(np.int8), s


def quantize_tokens_asym(A: np.ndarray, abits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """QuantLinear's asymmetric per-token quantization (act_sym=0): (q int8 [..., K], s_x [..., 1] of A's type,
    z int32 [..., 1]), x ~ s_x * (q - z); q and z are the unsigned codes and zero point minus 2^(abits-1). Every
    scalar step rounded to A's type (``schema.QUANT_LINEAR``)."""
    from edgeq.custom_ops.schema import QL_SCALE_FLOOR, ql_act_levels

    A = np.asarray(A)
    if A.dtype not in (np.float32, np.float16):
        raise ValueError(f"QuantLinear reference: A must be float32 or float16, got {A.dtype}")
    T, levels, mid = A.dtype.type, ql_act_levels(abits), 1 << (abits - 1)
    f32 = lambda v: np.asarray(v).astype(np.float32)  # noqa: E731
    hi = np.maximum(A.max(axis=-1, keepdims=True), T(0))
    lo = np.minimum(A.min(axis=-1, keepdims=True), T(0))
    span = (f32(hi) - f32(lo)).astype(T)
    s = np.maximum((f32(span) / np.float32(levels)).astype(T), T(QL_SCALE_FLOOR))
    zp = np.rint((-f32(lo) / f32(s)).astype(T)).astype(np.int32)
    u = np.clip(np.rint((f32(A) / f32(s)).astype(T)).astype(np.int32) + zp, 0, levels)
    return (u - mid).astype(np.int8), s, zp - mid


def quant_linear_accumulator(A: np.ndarray, B: np.ndarray, K: int, N: int, wbits: int, abits: int,
                             w_zero: np.ndarray | None = None, act_sym: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(acc int64 [..., N], s_x [..., 1]): the exact integer dot products of QuantLinear."""
    from edgeq.custom_ops.quant_linear_packing import unpack_weights

    A = np.asarray(A)
    if A.shape[-1] != K:
        raise ValueError(f"QuantLinear reference: A's last dim is {A.shape[-1]}, K is {K}")
    W = unpack_weights(B, K, wbits)
    if W.shape[0] != N:
        raise ValueError(f"QuantLinear reference: B has {W.shape[0]} rows, N is {N}")
    W = W.astype(np.int64)
    if w_zero is not None:
        w_zero = np.asarray(w_zero)
        if w_zero.shape != (N,) or w_zero.dtype != np.int8:
            raise ValueError(f"QuantLinear reference: w_zero must be int8 [{N}], got {w_zero.dtype} {list(w_zero.shape)}")
        W = W - w_zero.astype(np.int64)[:, None]
    if act_sym:
        q, s = quantize_tokens(A, abits)
        return q.astype(np.int64) @ W.T, s
    q, s, z = quantize_tokens_asym(A, abits)
    return (q.astype(np.int64) - z) @ W.T, s


def quant_linear(A: np.ndarray, B: np.ndarray, w_scales: np.ndarray, K: int, N: int, wbits: int, abits: int,
                 w_zero: np.ndarray | None = None, act_sym: bool = True) -> np.ndarray:
    """Y [..., N] float64 = acc * s_x * w_scales (see ``schema.QUANT_LINEAR``)."""
    acc, s = quant_linear_accumulator(A, B, K, N, wbits, abits, w_zero, act_sym)
    return acc * s.astype(np.float64) * np.asarray(w_scales, np.float64).reshape(N)


def quant_linear_rounded(A: np.ndarray, B: np.ndarray, w_scales: np.ndarray, K: int, N: int, wbits: int,
                         abits: int, w_zero: np.ndarray | None = None, act_sym: bool = True) -> np.ndarray:
    """Y exactly as the kernels round it: T(float32(acc) * (s_x * w_scales) in float32). A kernel whose integer
    accumulator differs from ``quant_linear_accumulator`` anywhere cannot reproduce these bits (for |acc| <
    2^24, where float32(acc) is exact)."""
    acc, s = quant_linear_accumulator(A, B, K, N, wbits, abits, w_zero, act_sym)
    scale = s.astype(np.float32) * np.asarray(w_scales, np.float32).reshape(N)
    with np.errstate(over="ignore"):  # a float16 result past 65504 is inf, as the kernels' conversion gives
        return (acc.astype(np.float32) * scale).astype(np.asarray(A).dtype)


def spqr_weight(codes: np.ndarray, scale_codes: np.ndarray, zero_codes: np.ndarray, stats: np.ndarray,
                row_ptr: np.ndarray, cols: np.ndarray, values: np.ndarray, K: int, N: int, bits: int, group_size: int,
                stat_bits: int, stat_group_size: int) -> np.ndarray:
    """W [N, K] float64 of a SpQR weight's on-disk tensors (``SpQRWeight.to_tensors``), with ``SpQRWeight``'s
    semantics: s = ss*(scale_code - zs), z = sz*(zero_code - zz) per (row, group), W = s*(code - z), plus the
    outlier corrections (duplicates add up). See ``schema.SPQR_MATMUL``."""
    op = "SpQR reference"
    shapes = spqr_weight_shapes(K, N, bits, group_size, stat_bits, stat_group_size)
    arrays = {"codes": codes, "scale_codes": scale_codes, "zero_codes": zero_codes, "stats": stats, "row_ptr": row_ptr}
    for name, shape in shapes.items():
        if list(np.shape(arrays[name])) != shape:
            raise ValueError(f"{op}: {name} has shape {list(np.shape(arrays[name]))}, expected {shape}")
    n_groups = gqmm_n_groups(K, group_size)
    dense = unpack_codes(codes, bits, group_size, K).astype(np.float64)
    st = np.asarray(stats, np.float64)[np.arange(N) // stat_group_size]  # [N, G1, 4]
    s = st[..., 0] * (unpack_row_bitstream(scale_codes, stat_bits, n_groups) - st[..., 1])
    z = st[..., 2] * (unpack_row_bitstream(zero_codes, stat_bits, n_groups) - st[..., 3])
    group_of_k = np.arange(K) // group_size
    W = s[:, group_of_k] * (dense - z[:, group_of_k])

    row_ptr = np.asarray(row_ptr, np.int64)
    cols = np.asarray(cols)
    cols = (cols.view(np.uint16) if cols.dtype == np.int16 else cols).astype(np.int64)  # int16 holds uint16
    if row_ptr[0] != 0 or np.any(np.diff(row_ptr) < 0) or row_ptr[-1] != len(cols) or len(values) != len(cols):
        raise ValueError(f"{op}: row_ptr {row_ptr.tolist()[:8]}... does not index {len(cols)} outliers")
    if len(cols) and cols.max() >= K:
        raise ValueError(f"{op}: outlier column {int(cols.max())} >= K={K}")
    rows = np.repeat(np.arange(N), np.diff(row_ptr))
    np.add.at(W, (rows, cols), np.asarray(values, np.float64))
    return W


def spqr_dequantize(*weights, **attrs) -> np.ndarray:
    """SpQRDequantize's output: W^T [K, N] float64 (arguments as ``spqr_weight``)."""
    return spqr_weight(*weights, **attrs).T


def spqr_matmul(A: np.ndarray, *weights, **attrs) -> np.ndarray:
    """Y [..., N] float64 = A @ W^T (see ``schema.SPQR_MATMUL``; weights and attributes as ``spqr_weight``)."""
    A = np.asarray(A, np.float64)
    if A.shape[-1] != attrs["K"]:
        raise ValueError(f"SpQR reference: A's last dim is {A.shape[-1]}, K is {attrs['K']}")
    return A @ spqr_weight(*weights, **attrs).T
