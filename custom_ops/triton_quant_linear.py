"""QuantLinear's fused int8 GEMM for Hopper, written in Triton and compiled ahead of time into the CUDA library.

The kernel takes the per-token int8 codes q [M, Kp] (Kp = K rounded up to 64; written by the library's quantize
kernel) and weights B [N, ldb] in QuantLinear's layout, accumulates q . B^T in int32 with wgmma, and finishes in
the same kernel what the cuBLAS route needs an int32 round trip and a second kernel for: the zero-point
corrections and Y = T(float32(acc) * (s_x * w_scale)), bit for bit the contract of
``reference.quant_linear_rounded``.

Packed 4-bit weights (the "packed" tiles) are unpacked in registers: four bytes at a time, the even-k
values as (w << 4) & 0xF0F0F0F0 and the odd ones as w & 0xF0F0F0F0, i.e. 16x the value in an int8, fed to wgmma
as its register operand (the weight tile is the left operand, so the kernel computes the transposed tile); the
int32 sums of 16x values are shifted right by 4 (exact). The library's quantize kernel writes the codes in
``K_ORDER``, the k order in which those unpacked words are wgmma's operand registers as they are (PERMUTED_K;
in k order a lane gathered its bytes with sixteen 2-byte loads and shuffled them: 22.3 vs 17.1 us, H200, M = 512,
4096x4096).

The library never imports this module at run time: ``library.build("cuda")`` calls ``compile_cubins`` (sm_90a
machine code, no GPU needed) and links the cubins into the library, which loads and launches them through the
CUDA runtime (``csrc/cuda/triton_gemm.cu``). Triton is a build-time dependency of the CUDA library only; without
it the library builds without this kernel and QuantLinear takes cuBLAS.
"""

from __future__ import annotations

from dataclasses import dataclass

BK = 128  # K per main-loop step: the launcher requires K % BK == 0, so no load is masked


@dataclass(frozen=True)
class Tile:
    bm: int
    bn: int
    warps: int
    stages: int
    # With zero points the 128x128 epilogue (the accumulator plus each thread's column offsets) took 148-169
    # registers, one block per SM instead of two: 1.5x slower at M = 2048 (H200). Capped, the excess spills to
    # the stack in the epilogue only. The packed 128x64 tile's took 168 (no spill at 136): its GEMM ran 1.3x
    # slower (H200, M = 512, 4096x4096: 21.7 vs 17.3 us capped).
    zero_point_regs: int | None = None
    packed: bool = False  # B holds two 4-bit values per byte, unpacked in registers
    permuted_k: bool = False  # packed: q's codes come in K_ORDER within each BK block


# H200, LLaMA-7B shapes (BENCHMARKS.md): 64x128 tiles (4 warps, 4 stages) were the fastest or within 3% up to
# M = 512; 128x128 (8 warps, 3 stages) at M = 2048 by 13-25%.
# Packed 4-bit weights in K_ORDER: 128 tokens x 64 weight rows (4 warps, 4 stages) up to M = 512 (fastest or within
# 4% of five tiles on the three shapes), 128 x 128 (8 warps, 3 stages) above (fastest at M = 1024 and 2048, where it
# also beats widening + the 8-bit kernel).
TILES = {"small": Tile(64, 128, 4, 4), "large": Tile(128, 128, 8, 3, zero_point_regs=128),
         "packed": Tile(128, 64, 4, 4, zero_point_regs=136, packed=True, permuted_k=True),
         "packed_large": Tile(128, 128, 8, 3, zero_point_regs=128, packed=True, permuted_k=True)}
GROUP_M = 8


def k_order() -> list[int]:
    """K_ORDER[i]: which k of a BK block the packed path's wgmma sees at position i (PERMUTED_K).

    Weight byte p of a row holds k = 2p (low nibble) and 2p + 1. The kernel unpacks each 4-byte word w of the
    block into its even-k and odd-k values (4 each: position 8w + 4n + c holds k = 8w + 2c + n) and then regroups
    4-value runs so that position 32j + 16h + 4q + r (wgmma j, half h, lane q of a quad) holds run 8q + 2j + h.
    The quantize kernel writes the codes in this order, so q . W^T is unchanged."""
    word_order = [8 * (i // 8) + 2 * (i % 4) + (i // 4) % 2 for i in range(BK)]
    return [word_order[32 * ((i % 16) // 4) + 8 * (i // 32) + 4 * ((i // 16) % 2) + i % 4] for i in range(BK)]


K_ORDER = k_order()


@dataclass(frozen=True)
class Variant:
    tile: str
    half: bool      # Y and w_scales float16 (else float32)
    w_zero: bool    # per-channel weight zero offsets
    act_zero: bool  # asymmetric per-token activation codes

    @property
    def symbol(self) -> str:
        return (f"edgeq_triton_ql_{self.tile}_{'f16' if self.half else 'f32'}"
                f"_wz{int(self.w_zero)}_az{int(self.act_zero)}")


VARIANTS = [Variant(tile, half, wz, az) for tile in TILES for half in (True, False)
            for wz in (False, True) for az in (False, True)]


def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def quant_linear_gemm(q_ptr, b_ptr, y_ptr, s_x_ptr, w_scale_ptr, w_zero_ptr, q_sum_ptr, act_zero_ptr, w_sum_ptr,
                          M, N, K, Kp, ldb,
                          PACKED: tl.constexpr, PERMUTED_K: tl.constexpr, HAS_W_ZERO: tl.constexpr,
                          HAS_ACT_ZERO: tl.constexpr,
                          OUT_F16: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                          GROUP_M: tl.constexpr):
        # Launched as an ordinary kernel, not a programmatic dependent: waiting at griddepcontrol.wait its blocks
        # would hold shared memory the quantize and widening kernels still need (28.0 vs 26.2 us, H200).
        pid = tl.program_id(0)
        tiles_m = tl.cdiv(M, BM)
        tiles_n = tl.cdiv(N, BN)
        # Tiles that share a column block of B run together, so B is read from DRAM about once.
        per_group = GROUP_M * tiles_n
        first_m = (pid // per_group) * GROUP_M
        rows_in_group = tl.minimum(tiles_m - first_m, GROUP_M)
        pid_m = first_m + (pid % per_group) % rows_in_group
        pid_n = (pid % per_group) // rows_in_group

        offs_m = pid_m * BM + tl.arange(0, BM)
        offs_n = pid_n * BN + tl.arange(0, BN)
        m_ok = offs_m < M
        n_ok = offs_n < N
        # Rows past M or N read row 0 (always there) instead of masking every load; their results are not stored.
        rows_q = tl.where(m_ok, offs_m, 0).to(tl.int64) * Kp
        rows_b = tl.where(n_ok, offs_n, 0).to(tl.int64) * ldb
        ks = tl.arange(0, BK)
        if PACKED:
            half = tl.arange(0, BK // 2)
            acc_t = tl.zeros((BN, BM), dtype=tl.int32)
            for k0 in tl.range(0, K, BK):
                a = tl.load(q_ptr + rows_q[:, None] + k0 + ks[None, :])
                b = tl.load(b_ptr + rows_b[:, None] + k0 // 2 + half[None, :])
                even = tl.inline_asm_elementwise("{ .reg .b32 t; shl.b32 t, $1, 4; and.b32 $0, t, 0xF0F0F0F0; }",
                                                 "=r,r", [b], dtype=tl.int8, is_pure=True, pack=4)
                odd = tl.inline_asm_elementwise("and.b32 $0, $1, 0xF0F0F0F0;", "=r,r", [b], dtype=tl.int8,
                                                is_pure=True, pack=4)
                if PERMUTED_K:
                    # The codes in q follow K_ORDER within each BK block, so wgmma's k order is the one in which
                    # each lane's weight bytes come as two 16-byte loads and each unpacked word is one register
                    # operand as it is: no byte shuffles (see K_ORDER).
                    joined = tl.join(tl.reshape(even, (BN, BK // 8, 4)), tl.reshape(odd, (BN, BK // 8, 4)))
                    by_word = tl.reshape(tl.permute(joined, (0, 1, 3, 2)), (BN, BK // 32, 4, 2, 4))
                    w16 = tl.reshape(tl.permute(by_word, (0, 2, 3, 1, 4)), (BN, BK))
                else:
                    w16 = tl.reshape(tl.join(even, odd), (BN, BK))
                acc_t = tl.dot(w16, tl.trans(a), acc_t, out_dtype=tl.int32)
            # The epilogue works in this transposed orientation and transposes the output values, not the int32
            # sums: for float16 outputs half the bytes go through the layout change (not timed on its own).
            acc = acc_t >> 4
        else:
            acc = tl.zeros((BM, BN), dtype=tl.int32)
            for k0 in tl.range(0, K, BK):
                a = tl.load(q_ptr + rows_q[:, None] + k0 + ks[None, :])
                b = tl.load(b_ptr + rows_b[:, None] + k0 + ks[None, :])
                acc = tl.dot(a, tl.trans(b), acc, out_dtype=tl.int32)

        # acc - w_zero * q_sum - act_zero * (w_sum - K * w_zero): exact in int32 (the launcher keeps K < 2^15).
        # Products of a per-token vector (offs_m) and a per-channel one (offs_n) in acc's orientation.
        if HAS_W_ZERO:
            w_zero = tl.load(w_zero_ptr + offs_n, mask=n_ok, other=0).to(tl.int32)
            q_sum = tl.load(q_sum_ptr + offs_m, mask=m_ok, other=0)
            if PACKED:
                acc = acc - w_zero[:, None] * q_sum[None, :]
            else:
                acc = acc - q_sum[:, None] * w_zero[None, :]
        if HAS_ACT_ZERO:
            w_sum = tl.load(w_sum_ptr + offs_n, mask=n_ok, other=0)
            if HAS_W_ZERO:
                w_sum = w_sum - K * w_zero
            act_zero = tl.load(act_zero_ptr + offs_m, mask=m_ok, other=0)
            if PACKED:
                acc = acc - w_sum[:, None] * act_zero[None, :]
            else:
                acc = acc - act_zero[:, None] * w_sum[None, :]
        s_x = tl.load(s_x_ptr + offs_m, mask=m_ok, other=0.0)
        w_scale = tl.load(w_scale_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        if PACKED:
            y = acc.to(tl.float32) * (w_scale[:, None] * s_x[None, :])
        else:
            y = acc.to(tl.float32) * (s_x[:, None] * w_scale[None, :])
        if OUT_F16:
            y = y.to(tl.float16)
        if PACKED:
            y = tl.trans(y)
        y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
        tl.store(y_ptrs, y, mask=m_ok[:, None] & n_ok[None, :])

    return quant_linear_gemm


KERNEL_NAME = "quant_linear_gemm"
# The launcher's argument order (csrc/cuda/triton_gemm.cu); Triton appends two scratch pointers of its own.
PARAMS = ["q_ptr", "b_ptr", "y_ptr", "s_x_ptr", "w_scale_ptr", "w_zero_ptr", "q_sum_ptr", "act_zero_ptr", "w_sum_ptr",
          "M", "N", "K", "Kp", "ldb"]
# 16-byte aligned or divisible by 16, as the launcher checks: what lets the loads and stores be vectors. The
# epilogue's row and column arrays are left out: q_sum sits at s_x + M floats, aligned only to 4 bytes.
ALIGNED = ["q_ptr", "b_ptr", "y_ptr", "N", "K", "Kp", "ldb"]


def triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def compile_variant(variant: Variant) -> tuple[bytes, int]:
    """(cubin, dynamic shared-memory bytes) of one variant for sm_90a."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    tile = TILES[variant.tile]
    scale = "*fp16" if variant.half else "*fp32"
    signature = {"q_ptr": "*i8", "b_ptr": "*i8", "y_ptr": scale, "s_x_ptr": "*fp32", "w_scale_ptr": scale,
                 "w_zero_ptr": "*i8", "q_sum_ptr": "*i32", "act_zero_ptr": "*i32", "w_sum_ptr": "*i32",
                 "M": "i32", "N": "i32", "K": "i32", "Kp": "i32", "ldb": "i32"}
    constants = {"PACKED": tile.packed, "PERMUTED_K": tile.packed and tile.permuted_k, "HAS_W_ZERO": variant.w_zero,
                 "HAS_ACT_ZERO": variant.act_zero, "OUT_F16": variant.half, "BM": tile.bm, "BN": tile.bn, "BK": BK,
                 "GROUP_M": GROUP_M}
    signature.update({name: "constexpr" for name in constants})
    attrs = {(PARAMS.index(name),): [["tt.divisibility", 16]] for name in ALIGNED}
    options = {"num_warps": tile.warps, "num_stages": tile.stages}
    if tile.zero_point_regs and (variant.w_zero or variant.act_zero):
        options["maxnreg"] = tile.zero_point_regs
    compiled = triton.compile(ASTSource(_kernel(), signature, constants, attrs), target=GPUTarget("cuda", 90, 32),
                              options=options)
    meta = compiled.metadata
    entry = compiled.asm["ptx"].split(".entry", 1)[1].split(")", 1)[0]
    # The launcher passes PARAMS plus Triton's two scratch pointers (null: this kernel asks for no scratch).
    if (meta.name != KERNEL_NAME or meta.num_warps != tile.warps or entry.count(".param") != len(PARAMS) + 2
            or getattr(meta, "global_scratch_size", 0) or getattr(meta, "profile_scratch_size", 0)):
        raise RuntimeError(f"Triton {triton.__version__} compiled {variant.symbol} with an interface the launcher "
                           f"does not expect ({entry.count('.param')} parameters): {meta}")
    return compiled.asm["cubin"], int(meta.shared)
