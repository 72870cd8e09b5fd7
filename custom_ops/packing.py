"""Bit packing for ``edgeq::GroupQuantMatMul``'s ``B`` input (layout in ``schema.GROUP_QUANT_MATMUL.doc``).

Per (row n, group j) the group's codes form one little-endian bitstream: code i occupies bits
[i*bits, (i+1)*bits) of the group's ``group_size*bits/8`` bytes. For 4 bits that is two codes per byte, low
nibble first (the com.microsoft.MatMulNBits order); 3-bit codes straddle byte boundaries. When K is not a
multiple of group_size the last group is padded with code 0; kernels never read the padded codes' values.
"""

from __future__ import annotations

import numpy as np

from edgeq.custom_ops.schema import GQMM_BITS, GQMM_GROUP_SIZES, gqmm_group_bytes, gqmm_n_groups
from edgeq.errors import EdgeqError


def _check_format(bits: int, group_size: int) -> None:
    if bits not in GQMM_BITS:
        raise EdgeqError(f"GroupQuantMatMul packing: bits={bits} not one of {GQMM_BITS}")
    if group_size not in GQMM_GROUP_SIZES:
        raise EdgeqError(f"GroupQuantMatMul packing: group_size={group_size} not one of {GQMM_GROUP_SIZES}")


def pack_codes(codes: np.ndarray, bits: int, group_size: int) -> np.ndarray:
    """uint8 codes [N, K] (each < 2**bits) -> packed uint8 [N, n_groups, group_size*bits//8]."""
    _check_format(bits, group_size)
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise EdgeqError(f"GroupQuantMatMul packing: codes must be [N, K], got shape {codes.shape}")
    if codes.dtype != np.uint8:
        raise EdgeqError(f"GroupQuantMatMul packing: codes must be uint8, got {codes.dtype}")
    if codes.size and int(codes.max()) >= (1 << bits):
        raise EdgeqError(f"GroupQuantMatMul packing: code {int(codes.max())} does not fit in {bits} bits")
    N, K = codes.shape
    n_groups = gqmm_n_groups(K, group_size)
    padded = np.zeros((N, n_groups * group_size), np.uint8)
    padded[:, :K] = codes
    # Each code's bits, least significant first; concatenated per group they are the little-endian stream.
    code_bits = np.unpackbits(padded[..., None], axis=-1, bitorder="little")[..., :bits]
    stream = code_bits.reshape(N, n_groups, group_size * bits)
    return np.packbits(stream, axis=-1, bitorder="little")


def unpack_codes(packed: np.ndarray, bits: int, group_size: int, K: int | None = None) -> np.ndarray:
    """Inverse of ``pack_codes``: packed uint8 [N, n_groups, group_size*bits//8] -> codes uint8 [N, K].

    K defaults to n_groups*group_size (padded codes included).
    """
    _check_format(bits, group_size)
    packed = np.asarray(packed)
    group_bytes = gqmm_group_bytes(bits, group_size)
    if packed.ndim != 3 or packed.shape[2] != group_bytes or packed.dtype != np.uint8:
        raise EdgeqError(
            f"GroupQuantMatMul packing: packed must be uint8 [N, n_groups, {group_bytes}], "
            f"got {packed.dtype} {packed.shape}")
    N, n_groups, _ = packed.shape
    if K is None:
        K = n_groups * group_size
    if gqmm_n_groups(K, group_size) != n_groups:
        raise EdgeqError(f"GroupQuantMatMul packing: K={K} needs {gqmm_n_groups(K, group_size)} groups, packed has {n_groups}")
    stream = np.unpackbits(packed, axis=-1, bitorder="little").reshape(N, n_groups, group_size, bits)
    weights = (1 << np.arange(bits, dtype=np.uint16)).astype(np.uint16)
    codes = (stream.astype(np.uint16) * weights).sum(axis=-1).astype(np.uint8)
    return codes.reshape(N, n_groups * group_size)[:, :K]


def pack_row_bitstream(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes [N, L] (each < 2**bits, bits 1..8) -> uint8 [N, ceil(L*bits/8)]: per row one little-endian
    bitstream, code j in bits [j*bits, (j+1)*bits); the last byte's unused high bits are 0.

    Used where a row holds few codes of an odd width (SpQR's 3-bit group statistics), so that no per-group
    padding is stored.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.dtype != np.uint8:
        raise EdgeqError(f"row bitstream packing: codes must be uint8 [N, L], got {codes.dtype} {codes.shape}")
    if not 1 <= bits <= 8:
        raise EdgeqError(f"row bitstream packing: bits={bits} not in 1..8")
    if codes.size and int(codes.max()) >= (1 << bits):
        raise EdgeqError(f"row bitstream packing: code {int(codes.max())} does not fit in {bits} bits")
    N, L = codes.shape
    stream = np.unpackbits(codes[..., None], axis=-1, bitorder="little")[..., :bits].reshape(N, L * bits)
    return np.packbits(stream, axis=-1, bitorder="little")  # pads the last byte with zero bits


def unpack_row_bitstream(packed: np.ndarray, bits: int, L: int) -> np.ndarray:
    """Inverse of ``pack_row_bitstream``: uint8 [N, ceil(L*bits/8)] -> codes uint8 [N, L]."""
    packed = np.asarray(packed)
    row_bytes = (L * bits + 7) // 8
    if packed.ndim != 2 or packed.dtype != np.uint8 or packed.shape[1] != row_bytes:
        raise EdgeqError(f"row bitstream packing: packed must be uint8 [N, {row_bytes}], got {packed.dtype} {packed.shape}")
    N = packed.shape[0]
    stream = np.unpackbits(packed, axis=-1, bitorder="little")[:, :L * bits].reshape(N, L, bits)
    weights = (1 << np.arange(bits, dtype=np.uint16)).astype(np.uint16)
    return (stream.astype(np.uint16) * weights).sum(axis=-1).astype(np.uint8)
