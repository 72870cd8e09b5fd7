"""Lower ``MatMul(x, DequantizeLinear(codes, scales, zeros))`` to ``com.microsoft.MatMulNBits`` (4 and 8 bits).

MatMulNBits (ONNX Runtime contrib op) layout, for W [N, K] in blocks of ``block_size`` along K:
  B            uint8 [N, n_blocks, block_size*bits/8]  codes, little-endian within a byte (low nibble first)
  scales       T [N * n_blocks]
  zero_points  uint8 [N * ceil(n_blocks*bits/8)]        4-bit: two per byte per row, row padded to a byte
and Y = x @ W^T with W[n, k] = scales[n, k//bs] * (code - zero). Widths 5..7 are stored as 8-bit codes (same
values, exact); 2/3-bit weights go to ``edgeq::GroupQuantMatMul`` (``lower_group_quant_matmul``).

``accuracy_level`` is always written: 0 (the default here) makes ORT dequantize to the activation type and
compute exactly what DequantizeLinear+MatMul computes; 4 lets it quantize activations to int8 (faster, not
exact) and is only used when asked for.
"""

from __future__ import annotations

import numpy as np

from edgeq.passes import _quant_weight as qw
from edgeq.passes._rules import RulePass

MS_DOMAIN = "com.microsoft"
NBITS_WIDTHS = (4, 8)
ACCURACY_LEVELS = (0, 1, 2, 3, 4)


def pack_nbits(arrays: qw.QuantArrays, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(B [N, n_blocks, blob], zero_points packed per row) in MatMulNBits' layout."""
    codes, zeros, bs = arrays.codes, arrays.zeros, arrays.block_size
    N, K = codes.shape
    n_blocks = zeros.shape[1]
    padded = np.zeros((N, n_blocks * bs), np.uint8)
    padded[:, :K] = codes
    if bits == 8:
        return padded.reshape(N, n_blocks, bs), zeros.reshape(-1).copy()
    B = (padded[:, 0::2] | (padded[:, 1::2] << 4)).reshape(N, n_blocks, bs // 2)
    zpad = np.zeros((N, n_blocks + n_blocks % 2), np.uint8)
    zpad[:, :n_blocks] = zeros
    return B, (zpad[:, 0::2] | (zpad[:, 1::2] << 4)).reshape(-1)


class MatMulNBitsLowering(qw.DQMatMulLowering):
    """DQ(codes UINT4 | UINT8) -> MatMul  ==>  MatMulNBits(bits=4 | 8)."""

    def __init__(self, accuracy_level: int = 0):
        super().__init__(name=f"MatMulNBitsLowering(accuracy_level={accuracy_level})")
        if accuracy_level not in ACCURACY_LEVELS:
            raise ValueError(f"MatMulNBits accuracy_level must be one of {ACCURACY_LEVELS}, got {accuracy_level}")
        self.accuracy_level = accuracy_level

    def refuse(self, spec: qw.QuantSpec) -> str | None:
        if spec.bits < 4:
            return f"{spec.bits}-bit codes are GroupQuantMatMul's (MatMulNBits takes 4 and 8)"
        if spec.block_size() is None:
            return f"group size {spec.group_size} cannot be cut into blocks of 16..128"
        return None

    def rewrite(self, op, x, w, y, **_):
        dq = w.producer()
        spec = qw.describe(dq)
        bits = 4 if spec.bits == 4 else 8  # 5..7-bit codes are exact as 8-bit codes
        arrays = qw.load(dq, spec, spec.block_size())
        B, zero_points = pack_nbits(arrays, bits)
        return op.MatMulNBits(
            x,
            qw.initializer(op, dq, B, "nbits_B"),
            qw.initializer(op, dq, arrays.scales.reshape(-1), "nbits_scales"),
            qw.initializer(op, dq, zero_points, "nbits_zeros"),
            K=spec.K,
            N=spec.N,
            bits=bits,
            block_size=arrays.block_size,
            accuracy_level=self.accuracy_level,
            _domain=MS_DOMAIN,
            _name=qw.lowered_node_name(y, dq, "MatMulNBits"),
        )


class LowerMatMulNBitsPass(RulePass):
    """Every 4..8-bit DQ+MatMul with blocks of 16..128 becomes one MatMulNBits with packed initializers."""

    def __init__(self, accuracy_level: int = 0):
        super().__init__([MatMulNBitsLowering.rule(accuracy_level=accuracy_level)])
