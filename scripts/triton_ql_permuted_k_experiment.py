"""GPU experiment: QuantLinear's packed triton path (4-bit weights unpacked in registers) with the activation codes
in ``K_ORDER`` (``Tile.permuted_k``: two 16-byte weight loads and no byte shuffles per lane and step) against the
natural k order it shipped with, the 8-bit path and torch's fp16 matmul, at LLaMA-7B shapes and M = 256..1024; first
a bit-exactness check of the permuted path against the exact integer product. Needs torch and triton on a CUDA
machine:

    python3 scripts/triton_ql_permuted_k_experiment.py      # prints a table, writes $OUT/permuted_k.json
    MS=512,2048 NCFG=1 python3 scripts/triton_ql_permuted_k_experiment.py     # fewer M and tiles

It replaces scripts/triton_ql_unpack_experiment.py (stop 16: the packed path in k order over eight tiles; removed).
"""
import json
import os

import torch
import triton

from edgeq.custom_ops.triton_quant_linear import BK, GROUP_M, K_ORDER, _kernel

kernel = _kernel()
dev = "cuda"
order = torch.tensor(K_ORDER)


def pack(W):
    lo = W[:, 0::2].to(torch.int16) & 0xF
    hi = W[:, 1::2].to(torch.int16) & 0xF
    return (lo | (hi << 4)).to(torch.uint8).view(torch.int8)


def in_k_order(q):
    """q's codes rearranged within each BK block as the quantize kernel writes them for the permuted path."""
    M, K = q.shape
    return q.view(M, K // BK, BK)[:, :, order.to(q.device)].reshape(M, K).contiguous()


def run(q, B, y, s_x, ws, M, N, K, cfg, packed, permuted, zeros=None, maxnreg=None):
    """zeros: (w_zero int8 [N], q_sum int32 [M], act_zero int32 [M], w_sum int32 [N]) for both zero-point terms."""
    BM, BN, warps, stages = cfg
    grid = (triton.cdiv(M, BM) * triton.cdiv(N, BN),)
    wz, qs, az, wsum = zeros if zeros is not None else (s_x, s_x, s_x, s_x)
    kernel[grid](q, B, y, s_x, ws, wz, qs, az, wsum, M, N, K, q.shape[1], B.shape[1], PACKED=packed,
                 PERMUTED_K=permuted, HAS_W_ZERO=zeros is not None, HAS_ACT_ZERO=zeros is not None, OUT_F16=True,
                 BM=BM, BN=BN, BK=BK, GROUP_M=GROUP_M, num_warps=warps, num_stages=stages,
                 **({"maxnreg": maxnreg or 128} if zeros is not None and warps == 8 else
                    {"maxnreg": maxnreg} if zeros is not None and maxnreg else {}))


def bench(fn):
    return triton.testing.do_bench_cudagraph(fn, rep=60) * 1000.0


g = torch.Generator().manual_seed(0)
M, N, K = 200, 272, 1024
W = torch.randint(-8, 8, (N, K), generator=g, dtype=torch.int8)
q = torch.randint(-128, 128, (M, K), generator=g, dtype=torch.int8)
s_x = torch.rand(M, generator=g) * 1e-3 + 1e-4
ws = (torch.rand(N, generator=g) * 1e-2 + 1e-3).half()
ref = ((q.double() @ W.double().T).float() * (s_x[:, None] * ws.float()[None, :])).half()
for permuted in (False, True):
    y = torch.empty(M, N, dtype=torch.float16, device=dev)
    qq = in_k_order(q) if permuted else q
    run(qq.to(dev), pack(W).to(dev), y, s_x.to(dev), ws.to(dev), M, N, K, (128, 64, 4, 4), True, permuted)
    print(f"packed path, permuted_k={permuted}: bits differing from the reference:",
          (y.cpu().view(torch.int16) != ref.view(torch.int16)).sum().item(), flush=True)

CFGS = [(128, 64, 4, 4), (64, 64, 4, 4), (128, 128, 8, 3), (64, 128, 4, 4), (128, 256, 8, 3)]
CFGS = CFGS[:int(os.environ.get("NCFG", len(CFGS)))]
out = {}
print("K x N, M | fp16 | w8 64x128 | w8 128x128 | packed natural (128x64) | packed permuted per tile", flush=True)
for K, N in [(4096, 4096), (4096, 11008), (11008, 4096)]:
    for M in [int(m) for m in os.environ.get("MS", "256,512,1024,2048").split(",")]:
        qi = torch.randint(-128, 128, (M, K), device=dev, dtype=torch.int8)
        bt = torch.randint(-8, 8, (N, K), device=dev, dtype=torch.int8)
        B4 = pack(bt)
        s_x = torch.rand(M, device=dev) * 1e-3
        ws = (torch.rand(N, device=dev) * 1e-3).half()
        y = torch.empty(M, N, device=dev, dtype=torch.float16)
        x, w = torch.randn(M, K, device=dev, dtype=torch.float16), torch.randn(K, N, device=dev, dtype=torch.float16)
        row = {"fp16": bench(lambda: x @ w),
               "w8": bench(lambda: run(qi, bt, y, s_x, ws, M, N, K, (64, 128, 4, 4), False, False)),
               "w8 large": bench(lambda: run(qi, bt, y, s_x, ws, M, N, K, (128, 128, 8, 3), False, False)),
               "natural": bench(lambda: run(qi, B4, y, s_x, ws, M, N, K, (128, 64, 4, 4), True, False))}
        zeros = (torch.randint(-8, 8, (N,), device=dev, dtype=torch.int8),
                 torch.randint(-1000, 1000, (M,), device=dev, dtype=torch.int32),
                 torch.randint(-8, 8, (M,), device=dev, dtype=torch.int32),
                 torch.randint(-1000, 1000, (N,), device=dev, dtype=torch.int32))
        row["w8 zeros"] = bench(lambda: run(qi, bt, y, s_x, ws, M, N, K, (64, 128, 4, 4), False, False, zeros))
        for cfg in ((128, 64, 4, 4), (128, 128, 8, 3)):
            row[f"zeros {cfg}"] = bench(lambda: run(qi, B4, y, s_x, ws, M, N, K, cfg, True, True, zeros))
        cfg = (128, 64, 4, 4)
        row[f"zeros {cfg} maxnreg 136"] = bench(lambda: run(qi, B4, y, s_x, ws, M, N, K, cfg, True, True, zeros, 136))
        for cfg in CFGS:
            try:
                row[f"permuted {cfg}"] = bench(lambda: run(qi, B4, y, s_x, ws, M, N, K, cfg, True, True))
            except Exception as e:  # noqa: BLE001 - a tile that does not fit is reported and skipped
                print("fail", cfg, type(e).__name__, str(e)[:200], flush=True)
        out[f"{K}x{N} M={M}"] = row
        print(f"{K}x{N} M={M} | {row['fp16']:.1f} | {row['w8']:.1f} | {row['w8 large']:.1f} | {row['natural']:.1f} | " +
              " ".join(f"{k[9:]}: {v:.1f}" for k, v in row.items() if k.startswith("permuted")) +
              " | with both zero points: w8 {:.1f}, ".format(row["w8 zeros"]) +
              " ".join(f"{k[6:]}: {v:.1f}" for k, v in row.items() if k.startswith("zeros")), flush=True)
json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "permuted_k.json"), "w"), indent=1)
