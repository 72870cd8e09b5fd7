"""GPU experiment behind QuantLinear's triton kernel (BENCHMARKS.md, "Triton GEMM with the epilogue fused"): the
shipped kernel's packed path (4-bit weights unpacked in registers, ``triton_quant_linear.PACKED``) over eight tiles,
against its 8-bit path (which takes packed weights after the library's widening pass) and torch's fp16 matmul, at
LLaMA-7B shapes, plus a bit-exactness check of the packed path. Needs torch and triton on a CUDA machine:

    python3 scripts/triton_ql_unpack_experiment.py        # writes $OUT/tri_w4.json (or /tmp)

The figures in BENCHMARKS.md came from this script at commit 3dae6b0, when it carried its own copy of the packed
kernel with a second variant (``ASM=0``: Triton's int8 shifts instead of the inline asm the kernel kept).
"""
import json
import os

import torch
import triton

from edgeq.custom_ops.triton_quant_linear import _kernel

kernel = _kernel()
dev = "cuda"


def pack(W):
    lo = W[:, 0::2].to(torch.int16) & 0xF
    hi = W[:, 1::2].to(torch.int16) & 0xF
    return (lo | (hi << 4)).to(torch.uint8).view(torch.int8)


def bench(fn):
    return triton.testing.do_bench_cudagraph(fn, rep=60) * 1000.0


def run(q, B, y, s_x, ws, M, N, K, cfg, packed):
    BM, BN, warps, stages = cfg
    grid = (triton.cdiv(M, BM) * triton.cdiv(N, BN),)
    kernel[grid](q, B, y, s_x, ws, s_x, s_x, s_x, s_x, M, N, K, q.shape[1], B.shape[1], PACKED=packed, PERMUTED_K=False,
                 HAS_W_ZERO=False, HAS_ACT_ZERO=False, OUT_F16=True, BM=BM, BN=BN, BK=128, GROUP_M=8,
                 num_warps=warps, num_stages=stages)


# correctness of the packed path against the exact integer product
g = torch.Generator().manual_seed(0)
M, N, K = 200, 272, 1024
W = torch.randint(-8, 8, (N, K), generator=g, dtype=torch.int8)
q = torch.randint(-128, 128, (M, K), generator=g, dtype=torch.int8)
s_x = torch.rand(M, generator=g) * 1e-3 + 1e-4
ws = (torch.rand(N, generator=g) * 1e-2 + 1e-3).half()
ref = ((q.double() @ W.double().T).float() * (s_x[:, None] * ws.float()[None, :])).half()
y = torch.empty(M, N, dtype=torch.float16, device=dev)
run(q.to(dev), pack(W).to(dev), y, s_x.to(dev), ws.to(dev), M, N, K, (128, 64, 4, 4), True)
print("packed path: bits differing from the reference:", (y.cpu().view(torch.int16) != ref.view(torch.int16)).sum().item(),
      flush=True)

CFG4 = [(64, 128, 4, 4), (128, 128, 8, 3), (64, 128, 8, 4), (128, 64, 4, 4), (64, 256, 8, 3), (128, 128, 4, 3),
        (128, 256, 8, 3), (256, 128, 8, 3)]
out = {}
for K, N in [(4096, 4096), (4096, 11008), (11008, 4096)]:
    for M in (512, 2048):
        qi = torch.randint(-128, 128, (M, K), device=dev, dtype=torch.int8)
        bt = torch.randint(-8, 8, (N, K), device=dev, dtype=torch.int8)
        B4 = pack(bt)
        s_x = torch.rand(M, device=dev) * 1e-3
        ws = (torch.rand(N, device=dev) * 1e-3).half()
        y = torch.empty(M, N, device=dev, dtype=torch.float16)
        x, w = torch.randn(M, K, device=dev, dtype=torch.float16), torch.randn(K, N, device=dev, dtype=torch.float16)
        row = {"fp16": bench(lambda: x @ w),
               "w8 small": bench(lambda: run(qi, bt, y, s_x, ws, M, N, K, (64, 128, 4, 4), False)),
               "w8 large": bench(lambda: run(qi, bt, y, s_x, ws, M, N, K, (128, 128, 8, 3), False))}
        for cfg in CFG4:
            try:
                row[f"w4 {cfg}"] = bench(lambda: run(qi, B4, y, s_x, ws, M, N, K, cfg, True))
            except Exception as e:  # noqa: BLE001 - a tile that does not fit is reported and skipped
                print("fail", cfg, type(e).__name__, str(e)[:300], flush=True)
        best = min((v, k) for k, v in row.items() if k.startswith("w4"))
        out[f"{K}x{N} M={M}"] = row
        print(f"{K}x{N} M={M}: fp16 {row['fp16']:.1f} w8 {row['w8 small']:.1f}/{row['w8 large']:.1f} | "
              f"w4 best {best[0]:.1f} {best[1]}", flush=True)
json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "tri_w4.json"), "w"), indent=1)
