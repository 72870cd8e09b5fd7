"""GPU experiment behind QuantLinear's triton kernel (BENCHMARKS.md, "Triton GEMM with the epilogue fused"): 4-bit
weights unpacked inside the GEMM (word-level inline asm, values x16, the unpacked tile as wgmma's register operand;
ASM=0: Triton's own int8 shifts) against the 8-bit kernel the library ships (which takes packed weights widened by
a separate pass), and torch's fp16 matmul, at LLaMA-7B shapes. Needs torch and triton on a CUDA machine:

    python3 scripts/triton_ql_unpack_experiment.py        # writes $OUT/tri_w4.json (or /tmp)
"""
import json
import os

import torch
import triton
import triton.language as tl

from edgeq.custom_ops.triton_quant_linear import _kernel

ql8 = _kernel()

@triton.jit
def ql4(q_ptr, b_ptr, y_ptr, s_x_ptr, w_scale_ptr, M, N, K, Kp, ldb,
        ASM: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BM)
    tiles_n = tl.cdiv(N, BN)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    rows_in_group = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % rows_in_group
    pid_n = (pid % per_group) // rows_in_group
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    m_ok = offs_m < M
    n_ok = offs_n < N
    rows_q = tl.where(m_ok, offs_m, 0).to(tl.int64) * Kp
    rows_b = tl.where(n_ok, offs_n, 0).to(tl.int64) * ldb
    ks = tl.arange(0, BK)
    half = tl.arange(0, BK // 2)
    acc_t = tl.zeros((BN, BM), dtype=tl.int32)
    for k0 in tl.range(0, K, BK):
        a = tl.load(q_ptr + rows_q[:, None] + k0 + ks[None, :])
        b = tl.load(b_ptr + rows_b[:, None] + k0 // 2 + half[None, :])
        if ASM:
            ev = tl.inline_asm_elementwise("{ .reg .b32 t; shl.b32 t, $1, 4; and.b32 $0, t, 0xF0F0F0F0; }", "=r,r", [b],
                                           dtype=tl.int8, is_pure=True, pack=4)
            od = tl.inline_asm_elementwise("and.b32 $0, $1, 0xF0F0F0F0;", "=r,r", [b], dtype=tl.int8, is_pure=True, pack=4)
        else:
            ev = b << 4
            od = b & -16
        w = tl.reshape(tl.join(ev, od), (BN, BK))
        acc_t = tl.dot(w, tl.trans(a), acc_t, out_dtype=tl.int32)
    acc = tl.trans(acc_t) >> 4
    s_x = tl.load(s_x_ptr + offs_m, mask=m_ok, other=0.0)
    w_scale = tl.load(w_scale_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    y = acc.to(tl.float32) * (s_x[:, None] * w_scale[None, :])
    tl.store(y_ptr + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :], y.to(tl.float16), mask=m_ok[:, None] & n_ok[None, :])

def pack(W):
    lo = W[:, 0::2].to(torch.int16) & 0xF
    hi = W[:, 1::2].to(torch.int16) & 0xF
    return (lo | (hi << 4)).to(torch.uint8).view(torch.int8)

dev = "cuda"
def bench(fn):
    return triton.testing.do_bench_cudagraph(fn, rep=60) * 1000.0

def run4(q, B, y, s_x, ws, M, N, K, cfg, asm):
    BM, BN, warps, stages = cfg
    grid = (triton.cdiv(M, BM) * triton.cdiv(N, BN),)
    ql4[grid](q, B, y, s_x, ws, M, N, K, q.shape[1], B.shape[1], ASM=asm, BM=BM, BN=BN, BK=128, GROUP_M=8,
              num_warps=warps, num_stages=stages)

def run8(q, B, y, s_x, ws, M, N, K, cfg):
    BM, BN, warps, stages = cfg
    grid = (triton.cdiv(M, BM) * triton.cdiv(N, BN),)
    ql8[grid](q, B, y, s_x, ws, s_x, s_x, s_x, s_x, M, N, K, q.shape[1], B.shape[1], PACKED=False, HAS_W_ZERO=False,
              HAS_ACT_ZERO=False, OUT_F16=True, BM=BM, BN=BN, BK=128, GROUP_M=8, num_warps=warps, num_stages=stages)

# correctness
g = torch.Generator().manual_seed(0)
M, N, K = 200, 272, 1024
W = torch.randint(-8, 8, (N, K), generator=g, dtype=torch.int8)
q = torch.randint(-128, 128, (M, K), generator=g, dtype=torch.int8)
s_x = torch.rand(M, generator=g) * 1e-3 + 1e-4; ws = (torch.rand(N, generator=g) * 1e-2 + 1e-3).half()
ref = ((q.double() @ W.double().T).float() * (s_x[:, None] * ws.float()[None, :])).half()
for asm in (False, True):
    y = torch.empty(M, N, dtype=torch.float16, device=dev)
    run4(q.to(dev), pack(W).to(dev), y, s_x.to(dev), ws.to(dev), M, N, K, (64, 128, 4, 4), asm)
    print("asm", asm, "bad", (y.cpu().view(torch.int16) != ref.view(torch.int16)).sum().item(), flush=True)

CFG4 = [(64, 128, 4, 4), (128, 128, 8, 3), (64, 128, 8, 4), (128, 64, 4, 4), (64, 256, 8, 3), (128, 128, 4, 3), (128, 256, 8, 3), (256, 128, 8, 3)]
out = {}
for K, N in [(4096, 4096), (4096, 11008), (11008, 4096)]:
    for M in (512, 2048):
        qi = torch.randint(-128, 128, (M, K), device=dev, dtype=torch.int8)
        bt = torch.randint(-8, 8, (N, K), device=dev, dtype=torch.int8)
        B4 = pack(bt)
        s_x = torch.rand(M, device=dev) * 1e-3; ws = (torch.rand(N, device=dev) * 1e-3).half()
        y = torch.empty(M, N, device=dev, dtype=torch.float16)
        x = torch.randn(M, K, device=dev, dtype=torch.float16); w = torch.randn(K, N, device=dev, dtype=torch.float16)
        row = {"fp16": bench(lambda: x @ w), "w8 small": bench(lambda: run8(qi, bt, y, s_x, ws, M, N, K, (64, 128, 4, 4))),
               "w8 large": bench(lambda: run8(qi, bt, y, s_x, ws, M, N, K, (128, 128, 8, 3)))}
        for asm in (True, False):
            for cfg in CFG4:
                try:
                    row[f"w4 asm={int(asm)} {cfg}"] = bench(lambda: run4(qi, B4, y, s_x, ws, M, N, K, cfg, asm))
                except Exception as e:
                    print("fail", cfg, asm, type(e).__name__, str(e)[:300], flush=True)
        best = min((v, k) for k, v in row.items() if k.startswith("w4"))
        out[f"{K}x{N} M={M}"] = row
        print(f"{K}x{N} M={M}: fp16 {row['fp16']:.1f} w8 {row['w8 small']:.1f}/{row['w8 large']:.1f} | w4 best {best[0]:.1f} {best[1]}", flush=True)
json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "tri_w4.json"), "w"), indent=1)
