"""``SpQRWeight``: SpQR's sparse-quantized representation (Dettmers et al. 2023).

Fields (N = out features, K = in features, β1 = group_size, β2 = stat_group_size, G1 = ceil(K/β1),
R = ceil(N/β2); columns are in quantization order, see perm):
  codes        uint8 [N, K]     dense weight codes, ``bits`` wide
  scale_codes  uint8 [N, G1]    first-level group scales, quantized to ``stat_bits``
  zero_codes   uint8 [N, G1]    first-level group zero points (real-valued before quantization), ``stat_bits``
  stats        float16 [R, G1, 4]  second-level statistics of each β2-row block of a column group:
               (scale of scales, zero of scales, scale of zeros, zero of zeros)
  row_ptr      int32 [N+1]      outliers in compressed-sparse-row form ...
  cols         int32 [nnz]      ... their columns (in quantization order; stored as 16 bits)
  values       float16 [nnz]    ... and their *corrections*: w - dense(w), so W = dense + sparse exactly
  perm         int64 [K] or None  column j holds original input column perm[j]: y = x[..., perm] @ W.T

Dequantization: s = ss·(scale_code − zs), z = sz·(zero_code − zz) per (row, group); w = s·(code − z), plus the
outlier correction. On disk (``to_tensors``) codes are bit-packed per β1 group (the GroupQuantMatMul layout,
[N, G1, β1·bits/8]), the first-level stat codes as one bitstream per row ([N, ceil(G1·stat_bits/8)],
``pack_row_bitstream``: no padding per group), columns and the permutation 16-bit; ``storage_bits`` counts exactly those bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from edgeq.errors import EdgeqError
from edgeq.quantize.formats.group_quant import unpermute_columns

STAT_KEYS = ("scale_scale", "scale_zero", "zero_scale", "zero_zero")


def _pack(codes: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    from edgeq.custom_ops.packing import pack_codes

    return torch.from_numpy(pack_codes(codes.numpy(), bits, group))


def _unpack(packed: torch.Tensor, bits: int, k: int, group: int) -> torch.Tensor:
    from edgeq.custom_ops.packing import unpack_codes

    return torch.from_numpy(unpack_codes(packed.numpy(), bits, group, k).copy())


def _pack_stats(codes: torch.Tensor, bits: int) -> torch.Tensor:
    from edgeq.custom_ops.packing import pack_row_bitstream

    return torch.from_numpy(pack_row_bitstream(codes.numpy(), bits))


def _unpack_stats(packed: torch.Tensor, bits: int, n_codes: int) -> torch.Tensor:
    from edgeq.custom_ops.packing import unpack_row_bitstream

    return torch.from_numpy(unpack_row_bitstream(packed.numpy(), bits, n_codes).copy())


def _as_u16(t: torch.Tensor) -> torch.Tensor:
    if t.numel() and int(t.max()) > 0xFFFF:
        raise EdgeqError("SpQR: an index does not fit in 16 bits (K > 65535)")
    return torch.from_numpy(t.numpy().astype(np.uint16).view(np.int16))


def _from_u16(t: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(t.numpy().view(np.uint16).astype(np.int64))


@dataclass
class SpQRWeight:
    FORMAT: ClassVar[str] = "spqr"

    codes: torch.Tensor
    scale_codes: torch.Tensor
    zero_codes: torch.Tensor
    stats: torch.Tensor
    row_ptr: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    bits: int
    group_size: int
    stat_bits: int
    stat_group_size: int
    perm: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    @property
    def outlier_fraction(self) -> float:
        n, k = self.shape
        return self.nnz / (n * k)

    def group_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """First-level (scale, zero) [N, G1] in float32, decoded from their 3-bit codes."""
        n = self.codes.shape[0]
        st = self.stats.float().repeat_interleave(self.stat_group_size, dim=0)[:n]  # [N, G1, 4]
        scale = st[..., 0] * (self.scale_codes.float() - st[..., 1])
        zero = st[..., 2] * (self.zero_codes.float() - st[..., 3])
        return scale, zero

    def dense_permuted(self) -> torch.Tensor:
        n, k = self.shape
        scale, zero = self.group_stats()
        expand = lambda t: t.repeat_interleave(self.group_size, dim=1)[:, :k]  # noqa: E731
        return expand(scale) * (self.codes.float() - expand(zero))

    def outlier_rows(self) -> torch.Tensor:
        return torch.repeat_interleave(torch.arange(self.codes.shape[0]), torch.diff(self.row_ptr.long()))

    def dequantize_permuted(self) -> torch.Tensor:
        w = self.dense_permuted()
        w[self.outlier_rows(), self.cols.long()] += self.values.float()
        return w

    def dequantize(self) -> torch.Tensor:
        return unpermute_columns(self.dequantize_permuted(), self.perm)

    def storage_bits(self) -> int:
        """Exact bits of the on-disk tensors (``to_tensors``), all statistics, outliers and indices included."""
        return sum(t.numel() * t.element_size() * 8 for t in self.to_tensors("w").values())

    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {
            f"{prefix}.codes": _pack(self.codes, self.bits, self.group_size),  # per β1 group, as kernels read it
            f"{prefix}.scale_codes": _pack_stats(self.scale_codes, self.stat_bits),
            f"{prefix}.zero_codes": _pack_stats(self.zero_codes, self.stat_bits),
            f"{prefix}.stats": self.stats.to(torch.float16).contiguous(),
            f"{prefix}.row_ptr": self.row_ptr.to(torch.int32).contiguous(),
            f"{prefix}.cols": _as_u16(self.cols),
            f"{prefix}.values": self.values.to(torch.float16).contiguous(),
            f"{prefix}.spqr": torch.tensor([self.bits, self.group_size, self.stat_bits, self.stat_group_size,
                                            *self.shape], dtype=torch.int32),
        }
        if self.perm is not None:
            out[f"{prefix}.perm"] = _as_u16(self.perm)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str) -> "SpQRWeight":
        try:
            bits, group, stat_bits, stat_group, n, k = (int(v) for v in tensors[f"{prefix}.spqr"])
            g1 = math.ceil(k / group)
            w = cls(
                codes=_unpack(tensors[f"{prefix}.codes"], bits, k, group),
                scale_codes=_unpack_stats(tensors[f"{prefix}.scale_codes"], stat_bits, g1),
                zero_codes=_unpack_stats(tensors[f"{prefix}.zero_codes"], stat_bits, g1),
                stats=tensors[f"{prefix}.stats"],
                row_ptr=tensors[f"{prefix}.row_ptr"],
                cols=_from_u16(tensors[f"{prefix}.cols"]),
                values=tensors[f"{prefix}.values"],
                bits=bits, group_size=group, stat_bits=stat_bits, stat_group_size=stat_group,
                perm=_from_u16(tensors[f"{prefix}.perm"]) if f"{prefix}.perm" in tensors else None,
            )
        except KeyError as e:
            raise EdgeqError(f"SpQR checkpoint lacks tensor {e.args[0]}") from e
        w.validate(prefix)
        return w

    def validate(self, name: str = "weight") -> None:
        n, k = self.shape
        g1 = math.ceil(k / self.group_size)
        r = math.ceil(n / self.stat_group_size)
        if tuple(self.scale_codes.shape) != (n, g1) or tuple(self.zero_codes.shape) != (n, g1):
            raise EdgeqError(f"{name}: SpQR stat codes must be [{n}, {g1}]")
        if tuple(self.stats.shape) != (r, g1, 4):
            raise EdgeqError(f"{name}: SpQR second-level stats must be [{r}, {g1}, 4], got {tuple(self.stats.shape)}")
        if self.row_ptr.numel() != n + 1 or int(self.row_ptr[-1]) != self.values.numel():
            raise EdgeqError(f"{name}: SpQR outlier row pointers do not match {self.values.numel()} values")
        if self.cols.numel() != self.values.numel() or (self.cols.numel() and int(self.cols.max()) >= k):
            raise EdgeqError(f"{name}: SpQR outlier columns out of range")
