"""``GroupQuantWeight``: k-bit integer codes with one (scale, zero) per group of input columns.

Fields (N = out features, K = in features, G = ceil(K / group_size)):
  codes  uint8 [N, K]   integer codes in [0, 2^bits - 1], columns in *quantization order* (see perm)
  scales float32 [N, G] group scale
  zeros  uint8 [N, G]   integer zero point
  act_bits  0, or the width of the per-token dynamic quantization applied to the input activations
         (weight-activation configs; lowers to ``edgeq::QuantLinear``)
  act_sym   those activation codes are symmetric (else a zero point per token)
  perm   int64 [K] or None: quantization order. Column j of ``codes`` holds original input column perm[j], so
         y = x[..., perm] @ dequant(codes).T. Groups are contiguous in that order (GPTQ act-order).
The last group is shorter when K is not a multiple of group_size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from edgeq.errors import EdgeqError


def unpermute_columns(w: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    """Columns stored in quantization order (column j is original column perm[j]) back in original order."""
    if perm is None:
        return w
    out = torch.empty_like(w)
    out[:, perm] = w
    return out


@dataclass
class GroupQuantWeight:
    FORMAT: ClassVar[str] = "group_quant"

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    bits: int
    group_size: int
    perm: torch.Tensor | None = None
    act_bits: int = 0
    act_sym: bool = True

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    @property
    def num_groups(self) -> int:
        return math.ceil(self.codes.shape[1] / self.group_size)

    def dequantize_permuted(self) -> torch.Tensor:
        """[N, K] float weights in quantization order (columns permuted by perm)."""
        n, k = self.codes.shape
        expand = lambda t: t.float().repeat_interleave(self.group_size, dim=1)[:, :k]  # noqa: E731
        return (self.codes.float() - expand(self.zeros)) * expand(self.scales)

    def dequantize(self) -> torch.Tensor:
        """[N, K] float weights in the original column order."""
        return unpermute_columns(self.dequantize_permuted(), self.perm)

    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {
            f"{prefix}.codes": self.codes.contiguous(),
            f"{prefix}.scales": self.scales.contiguous(),
            f"{prefix}.zeros": self.zeros.contiguous(),
            f"{prefix}.grid": torch.tensor([self.bits, self.group_size, self.act_bits, int(self.act_sym)],
                                           dtype=torch.int32),
        }
        if self.perm is not None:
            out[f"{prefix}.perm"] = self.perm.contiguous()
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str) -> "GroupQuantWeight":
        try:
            grid = [int(v) for v in tensors[f"{prefix}.grid"].reshape(-1)]
            if len(grid) not in (3, 4):
                raise EdgeqError(f"{prefix}.grid has {len(grid)} entries, expected bits, group_size, act_bits[, act_sym]")
            # three entries before act_sym existed: symmetric activations
            bits, group_size, act_bits, act_sym = [*grid, 1][:4]
            w = cls(
                codes=tensors[f"{prefix}.codes"],
                scales=tensors[f"{prefix}.scales"],
                zeros=tensors[f"{prefix}.zeros"],
                bits=bits,
                group_size=group_size,
                perm=tensors.get(f"{prefix}.perm"),
                act_bits=act_bits,
                act_sym=bool(act_sym),
            )
        except KeyError as e:
            raise EdgeqError(f"quantized checkpoint lacks tensor {e.args[0]}") from e
        w.validate(prefix)
        return w

    def validate(self, name: str = "weight") -> None:
        n, k = self.codes.shape
        if self.codes.dtype != torch.uint8 or self.zeros.dtype != torch.uint8:
            raise EdgeqError(f"{name}: codes and zeros must be uint8")
        if tuple(self.scales.shape) != (n, self.num_groups) or tuple(self.zeros.shape) != (n, self.num_groups):
            raise EdgeqError(f"{name}: scales/zeros must be [{n}, {self.num_groups}], got {tuple(self.scales.shape)}")
        if int(self.codes.max()) >= 2**self.bits:
            raise EdgeqError(f"{name}: a code exceeds {self.bits} bits")
        if self.perm is not None and not torch.equal(torch.sort(self.perm).values, torch.arange(k)):
            raise EdgeqError(f"{name}: perm is not a permutation of {k} columns")
