"""SpQR (Dettmers et al., "SpQR: A Sparse-Quantized Representation for Near-Lossless LLM Weight Compression").

GPTQ's column-by-column solve with three changes: tiny groups (β1 = 16) whose scale and zero are themselves
quantized to 3 bits in blocks of β2 rows ("bilevel"); outliers, i.e. weights whose Hessian-weighted quantization
error exceeds τ times the layer's typical error, kept exact in a sparse matrix; and group statistics fitted
without the weights that leaving out of the group would help most (leave-one-out, as in the paper's
Algorithm 1). Names follow the paper: H, Hinv (upper Cholesky factor of H⁻¹), β1, β2, τ.
"""

from __future__ import annotations

import math

import torch

from edgeq.quantize.formats.spqr import SpQRWeight
from edgeq.quantize.gptq import GPTQ


def minmax_grid(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row min-max grid with a real-valued zero point (SpQR keeps zeros unrounded, then quantizes them)."""
    maxq = 2**bits - 1
    lo, hi = x.min(dim=-1).values, x.max(dim=-1).values
    scale = (hi - lo) / maxq
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant row: any scale reproduces it
    return scale, -lo / scale


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    q = torch.clamp(torch.round(x / scale[..., None] + zero[..., None]), 0, 2**bits - 1)
    return scale[..., None] * (q - zero[..., None])


def quantize_stat(values: torch.Tensor, bits: int, block: int):
    """Second level: quantize a statistic [N] in blocks of ``block`` rows. Returns codes, (scale, zero) per block
    rounded to fp16 (as stored), and the decoded values."""
    n = values.numel()
    rows = math.ceil(n / block)
    padded = torch.cat([values, values[-1:].expand(rows * block - n)]).view(rows, block)
    scale, zero = minmax_grid(padded, bits)
    scale, zero = scale.half().float(), zero.half().float()
    codes = torch.clamp(torch.round(padded / scale[:, None] + zero[:, None]), 0, 2**bits - 1)
    decoded = scale[:, None] * (codes - zero[:, None])
    return codes.view(-1)[:n], scale, zero, decoded.view(-1)[:n]


def leave_one_out_gain(group: torch.Tensor, d: torch.Tensor, bits: int) -> torch.Tensor:
    """For each weight of a group [N, β1], how much the Hessian-weighted error of quantizing the group drops
    when that weight is left out (the paper's outlier criterion). d: diag of Hinv for the group's columns."""
    n, b = group.shape
    idx = torch.arange(b, device=group.device)
    loo = torch.stack([torch.cat([idx[:i], idx[i + 1 :]]) for i in range(b)])  # [β1, β1-1]
    data = group[:, loo]  # [N, β1, β1-1]
    scale, zero = minmax_grid(data, bits)
    loo_err = ((fake_quant(data, scale, zero, bits) - data) / d[loo]).square().sum(-1)
    scale, zero = minmax_grid(group, bits)
    base_err = ((fake_quant(group, scale, zero, bits) - group) / d).square().sum(-1, keepdim=True)
    return base_err - loo_err


class SpQR(GPTQ):
    @torch.no_grad()
    def quantize(self, bits: int, group_size: int, stat_bits: int, stat_group_size: int, tau: float,
                 act_order: bool, damp: float, block_size: int) -> SpQRWeight:
        W, Hinv, perm = self.prepare(act_order, damp)
        n, k = W.shape
        d_all = torch.diag(Hinv)
        # τ is relative to the layer's typical error scale, so one τ serves every layer
        threshold = tau * (W.var(dim=0) / d_all.square()).mean().item()
        maxq = 2**bits - 1
        codes = torch.zeros(n, k, device=W.device)
        outlier = torch.zeros(n, k, dtype=torch.bool, device=W.device)
        delta = torch.zeros(n, k, device=W.device)
        scale_codes, zero_codes, stats = [], [], []
        s = z = None
        for i1 in range(0, k, block_size):
            i2 = min(i1 + block_size, k)
            Err1 = torch.zeros(n, i2 - i1, device=W.device)
            for col in range(i1, i2):
                if col % group_size == 0:
                    group = W[:, col : col + group_size]
                    d = d_all[col : col + group_size]
                    likely = leave_one_out_gain(group, d, bits) > threshold
                    keep = (~likely).float()
                    mean = (group * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp_min(1)
                    s0, z0 = minmax_grid(group * keep + mean * (1 - keep), bits)
                    sc, ss, sz, s = quantize_stat(s0, stat_bits, stat_group_size)
                    zc, zs, zz, z = quantize_stat(z0, stat_bits, stat_group_size)
                    scale_codes.append(sc)
                    zero_codes.append(zc)
                    stats.append(torch.stack([ss, sz, zs, zz], dim=-1))
                w = W[:, col]
                safe_s = torch.where(s != 0, s, torch.ones_like(s))
                q = torch.clamp(torch.round(w / safe_s + z), 0, maxq)
                err = (w - s * (q - z)) / Hinv[col, col]
                is_out = err.square() > threshold
                if is_out.any():
                    # an outlier is coded as if it were 0 and corrected exactly by the sparse part
                    q = torch.where(is_out, torch.clamp(torch.round(z), 0, maxq), q)
                    dense = s * (q - z)
                    fix = torch.where(is_out, (w - dense).half().float(), torch.zeros_like(w))
                    w_hat = dense + fix
                    delta[:, col] = fix
                    outlier[:, col] = is_out
                else:
                    w_hat = s * (q - z)
                codes[:, col] = q
                err = (w - w_hat) / Hinv[col, col]
                W[:, col + 1 : i2] -= err[:, None] * Hinv[col, col + 1 : i2][None, :]
                Err1[:, col - i1] = err
            # groups never straddle blocks (block_size is a multiple of β1), so the lazy update is exact
            W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
        rows, cols = outlier.nonzero(as_tuple=True)
        row_ptr = torch.zeros(n + 1, dtype=torch.int32, device=W.device)
        row_ptr[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
        return SpQRWeight(
            codes=codes.to(torch.uint8),
            scale_codes=torch.stack(scale_codes, 1).to(torch.uint8),
            zero_codes=torch.stack(zero_codes, 1).to(torch.uint8),
            stats=torch.stack(stats, 1).half(),
            row_ptr=row_ptr,
            cols=cols.to(torch.int64),
            values=delta[rows, cols].half(),
            bits=bits, group_size=group_size, stat_bits=stat_bits, stat_group_size=stat_group_size,
            perm=perm,
        )
