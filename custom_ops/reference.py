"""NumPy float64 references for the edgeq ops: the ground truth the C++/CUDA kernels are tested against."""

from __future__ import annotations

import numpy as np

from edgeq.custom_ops.packing import unpack_codes
from edgeq.custom_ops.schema import gqmm_n_groups


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
