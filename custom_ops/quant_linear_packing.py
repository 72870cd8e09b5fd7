"""The weight format of ``edgeq::QuantLinear``'s ``B`` input (layout in ``schema.QUANT_LINEAR.doc``).

B holds W = code - zero point as signed integers, one row per output channel:
  wbits <= 4: int8 [N, ceil(K/2)], value 2j in the low nibble and 2j+1 in the high nibble of byte j (two's
              complement nibbles; an odd K leaves the last high nibble 0);
  wbits >  4: int8 [N, K], one value per byte.
Codes 0..2^wbits-1 become values code - 2^(wbits-1); a per-channel zero point z other than 2^(wbits-1) (an
asymmetric grid) goes into the op's ``w_zero`` input as z - 2^(wbits-1), so B and w_zero both fit int8 and the
op subtracts w_zero * sum(q) from the integer sums (``from_codes``).
"""

from __future__ import annotations

import numpy as np

from edgeq.custom_ops.schema import QL_BITS, ql_b_shape
from edgeq.errors import EdgeqError


def _check_bits(wbits: int) -> None:
    if wbits not in QL_BITS:
        raise EdgeqError(f"QuantLinear packing: wbits={wbits} not in {QL_BITS[0]}..{QL_BITS[-1]}")


def value_range(wbits: int) -> tuple[int, int]:
    return -(1 << (wbits - 1)), (1 << (wbits - 1)) - 1


def pack_weights(values: np.ndarray, wbits: int) -> np.ndarray:
    """Signed values [N, K] (each in the wbits range) -> B int8 in QuantLinear's layout."""
    _check_bits(wbits)
    values = np.asarray(values)
    if values.ndim != 2:
        raise EdgeqError(f"QuantLinear packing: values must be [N, K], got shape {values.shape}")
    if not np.issubdtype(values.dtype, np.integer):
        raise EdgeqError(f"QuantLinear packing: values must be integers, got {values.dtype}")
    lo, hi = value_range(wbits)
    if values.size and (int(values.min()) < lo or int(values.max()) > hi):
        raise EdgeqError(f"QuantLinear packing: values span [{int(values.min())}, {int(values.max())}], "
                         f"outside the {wbits}-bit range [{lo}, {hi}]")
    v = values.astype(np.int8)
    if wbits > 4:
        return np.ascontiguousarray(v)
    N, K = v.shape
    if K % 2:
        v = np.concatenate([v, np.zeros((N, 1), np.int8)], axis=1)
    nibbles = v.view(np.uint8) & 0x0F
    return np.ascontiguousarray(nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).view(np.int8)


def unpack_weights(B: np.ndarray, K: int, wbits: int) -> np.ndarray:
    """Inverse of ``pack_weights``: B -> signed values int8 [N, K]."""
    _check_bits(wbits)
    B = np.asarray(B)
    if B.ndim != 2 or B.dtype != np.int8:
        raise EdgeqError(f"QuantLinear packing: B must be int8 [N, bytes per row], got {B.dtype} {B.shape}")
    expected = ql_b_shape(K, B.shape[0], wbits)
    if list(B.shape) != expected:
        raise EdgeqError(f"QuantLinear packing: B has shape {list(B.shape)}, K={K} wbits={wbits} needs {expected}")
    if wbits > 4:
        return B.copy()
    u = B.view(np.uint8)
    # Shifting a nibble into the high half of a byte and back arithmetically sign-extends it.
    low = ((u << 4).view(np.int8) >> 4).astype(np.int8)
    high = (u.view(np.int8) >> 4).astype(np.int8)
    out = np.empty((B.shape[0], 2 * B.shape[1]), np.int8)
    out[:, 0::2], out[:, 1::2] = low, high
    return out[:, :K]


def from_codes(codes: np.ndarray, zeros: np.ndarray, wbits: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Unsigned codes [N, K] with per-channel zero points [N] -> (B, w_zero) for QuantLinear; w_zero is None when
    every zero point is the symmetric 2^(wbits-1) (the op's input then stays absent)."""
    _check_bits(wbits)
    codes, zeros = np.asarray(codes), np.asarray(zeros).reshape(-1)
    if codes.ndim != 2 or zeros.shape != (codes.shape[0],):
        raise EdgeqError(f"QuantLinear packing: zero points {list(zeros.shape)} do not match codes {list(codes.shape)} "
                         "(one per output channel)")
    mid = 1 << (wbits - 1)
    top = (1 << wbits) - 1
    if zeros.size and (int(zeros.min()) < 0 or int(zeros.max()) > top):
        raise EdgeqError(f"QuantLinear packing: zero points span [{int(zeros.min())}, {int(zeros.max())}], outside "
                         f"the {wbits}-bit codes [0, {top}]")
    B = pack_weights(codes.astype(np.int16) - mid, wbits)
    if np.all(zeros == mid):
        return B, None
    return B, (zeros.astype(np.int16) - mid).astype(np.int8)
