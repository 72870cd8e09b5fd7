"""``FloatWeight``: an FP tensor a method rewrote (e.g. an RMSNorm weight with OmniQuant's scales folded in).

Carried beside the packed linears in checkpoints so that loading a quantized model restores every tensor the
method changed, not only the quantized ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from edgeq.errors import EdgeqError


@dataclass
class FloatWeight:
    FORMAT: ClassVar[str] = "fp"

    tensor: torch.Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)

    def dequantize(self) -> torch.Tensor:
        return self.tensor

    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.fp": self.tensor.contiguous()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str) -> "FloatWeight":
        if f"{prefix}.fp" not in tensors:
            raise EdgeqError(f"checkpoint lacks tensor {prefix}.fp")
        return cls(tensors[f"{prefix}.fp"])
