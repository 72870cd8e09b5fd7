"""Round-to-nearest: fit each group's grid by min-max and round. The baseline every method must beat."""

from __future__ import annotations

import torch

from edgeq.quantize.config import RTNConfig
from edgeq.quantize.formats.group_quant import GroupQuantWeight
from edgeq.quantize.grid import fit_grid, quantize_codes


@torch.no_grad()
def rtn_quantize(weight: torch.Tensor, config: RTNConfig) -> GroupQuantWeight:
    w = weight.detach().float()
    n, k = w.shape
    group = k if config.group_size == -1 else config.group_size
    codes, scales, zeros = [], [], []
    for start in range(0, k, group):
        block = w[:, start : start + group]
        scale, zero = fit_grid(block, config.bits, config.sym)
        codes.append(quantize_codes(block, scale, zero, config.bits))
        scales.append(scale)
        zeros.append(zero)
    return GroupQuantWeight(
        codes=torch.cat(codes, 1).to(torch.uint8),
        scales=torch.stack(scales, 1),
        zeros=torch.stack(zeros, 1).to(torch.uint8),
        bits=config.bits,
        group_size=group,
        act_bits=config.abits if config.abits < 16 else 0,
        act_sym=config.act_sym,
    )
