"""GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers").

Names follow the paper: H is the Hessian 2·X·Xᵀ/n of the layer's inputs, Hinv the upper Cholesky factor of its
inverse, Err1 the scaled quantization error of the current block that is propagated to the remaining columns.
Lifecycle: ``add_batch`` per calibration batch, ``quantize`` once, ``free``.
"""

from __future__ import annotations

import math

import torch

from edgeq.errors import EdgeqError
from edgeq.quantize.formats.group_quant import GroupQuantWeight
from edgeq.quantize.grid import fit_grid, quantize_codes


class GPTQ:
    def __init__(self, weight: torch.Tensor):
        self.W = weight.detach().float().clone()
        self.rows, self.columns = self.W.shape
        self.H = torch.zeros(self.columns, self.columns, device=self.W.device)
        self.nsamples = 0

    def add_batch(self, inp: torch.Tensor) -> None:
        x = inp.detach().reshape(-1, inp.shape[-1]).float()
        n = x.shape[0]
        # Running mean keeps H on the same scale whatever the number of batches.
        self.H *= self.nsamples / (self.nsamples + n)
        self.nsamples += n
        x = math.sqrt(2 / self.nsamples) * x
        self.H += x.T @ x

    def share_statistics(self, other: "GPTQ") -> None:
        """Use another solver's Hessian: linears that read the same input (q/k/v, gate/up) have the same H."""
        if other is not self:
            self.H, self.nsamples = other.H, other.nsamples

    @torch.no_grad()
    def prepare(self, act_order: bool, damp: float):
        """(W, Hinv, perm): weights in solve order, the upper Cholesky factor of the damped inverse Hessian."""
        if self.nsamples == 0:
            raise EdgeqError("GPTQ: no calibration batch was added before quantizing")
        W = self.W.clone()
        H = self.H.clone()
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0

        perm = None
        if act_order:
            perm = torch.argsort(torch.diag(H), descending=True)
            W = W[:, perm]
            H = H[perm][:, perm]

        H += damp * torch.mean(torch.diag(H)) * torch.eye(self.columns, dtype=H.dtype, device=H.device)
        try:
            L = torch.linalg.cholesky(H.double())
            Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True).float()
        except torch.linalg.LinAlgError as e:
            raise EdgeqError(f"GPTQ: Hessian not positive definite even with damp={damp}; raise --damp") from e
        return W, Hinv, perm

    @torch.no_grad()
    def quantize(
        self, bits: int, group_size: int, sym: bool, act_order: bool, damp: float, block_size: int
    ) -> GroupQuantWeight:
        W, Hinv, perm = self.prepare(act_order, damp)
        group = self.columns if group_size == -1 else group_size
        Q = torch.zeros_like(W)
        scales, zeros = [], []
        scale = zero = None
        for i1 in range(0, self.columns, block_size):
            i2 = min(i1 + block_size, self.columns)
            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]
            for i in range(i2 - i1):
                col = i1 + i
                if col % group == 0:
                    # Fit the group on the weights as updated so far (this block's updates live in W1).
                    ahead = torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, :group]
                    scale, zero = fit_grid(ahead, bits, sym)
                    scales.append(scale)
                    zeros.append(zero)
                w = W1[:, i]
                d = Hinv1[i, i]
                q = quantize_codes(w[:, None], scale, zero, bits)[:, 0]
                Q1[:, i] = q
                err1 = (w - scale * (q - zero)) / d
                W1[:, i:] -= err1[:, None] @ Hinv1[i, i:][None, :]
                Err1[:, i] = err1
            Q[:, i1:i2] = Q1
            W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

        return GroupQuantWeight(
            codes=Q.to(torch.uint8),
            scales=torch.stack(scales, 1),
            zeros=torch.stack(zeros, 1).to(torch.uint8),
            bits=bits,
            group_size=group,
            perm=perm,
        )

    def free(self) -> None:
        self.H = None
        self.W = None
