// CUDA kernels of edgeq::QuantLinear (contract: custom_ops/schema.py).
//
// quantize  one block per row of A: absmax, s_x, and the int8 codes into a scratch q [M, Kp] (Kp = K rounded up
//           to 64, zero-filled), every step rounded as the exporter's chain rounds it. For packed (<= 4-bit)
//           weights each aligned group of 8 codes is stored evens first (k = 0,2,4,6,1,3,5,7): see below.
// decode    (M <= 8; 8-bit-stored weights only up to M = 2 when cublas takes them): one warp per output channel
//           streams its row of B in 16-byte vectors and takes dp4a dot products with the (cache-resident) codes of
//           every row of A.
// mma       (M > 8): int8 tensor cores, mma.sync m16n8k32 s8*s8->s32, a 4-stage cp.async pipeline of 64-byte K
//           slices; tiles 128x256 (8 warps), 128x128, 128x64 or 64x64 (4 warps) by problem size.
// wgmma     (pinned only, sm_90a builds): Hopper warpgroup MMAs, s8*s8->s32, 128x128 tiles; correct but slower
//           than mma.sync as it stands (no TMA/mbarrier pipeline, one wgmma group at a time); see its section.
// generic   any layout (rows of B that are not whole 16-byte vectors): scalar loads, one block per channel.
// cublas    (M > 8 where it fits) cuBLASLt's int8 GEMM into int32 scratch, then SumsEpilogueKernel.
// triton    (M > 8 where it fits, auto's first choice) a Triton-compiled wgmma GEMM with the epilogue fused
//           (triton_gemm.h), unpacking packed weights itself (its codes in the run order below); cublas takes
//           packed 4-bit weights widened to int8 by WidenPackedKernel.
//
// The mma operands. In m16n8k32 a thread with tig = lane % 4 supplies, for each of its rows and columns, the
// K slots 4*tig..4*tig+3 (first register) and 16+4*tig.. (second). A dot product does not depend on the order
// of K, only on A and B using the same one, so here a thread loads the 8 consecutive bytes at 8*tig of both
// operands and hands the first 4 to the first register and the next 4 to the second: one 8-byte shared load
// per row and no ldmatrix. For 4-bit weights the thread loads 4 packed bytes (8 values) instead and splits
// them without shifts across bytes: (w << 4) & 0xF0F0F0F0 holds the even-indexed values and w & 0xF0F0F0F0 the
// odd ones, each as 16 * value in an int8 (the nibble in the high half keeps its sign). That is why q is
// stored evens-first for packed weights, and why their int32 sums are shifted right by 4 (exact: every term is
// a multiple of 16; |16 * value| <= 128, so the int32 bound is the 8-bit one).
//
// The triton kernel's packed path (custom_ops/triton_quant_linear.py, K_ORDER) unpacks each 4-byte word of
// weights into its even-k and odd-k values and hands each half to wgmma as it is, so its codes are evens-first too,
// and the 4-code runs of each 128-code block are moved besides: word w = 4 * i + j of the block (i, j < 4) puts
// its evens at run 8 * j + i and its odds at run 8 * j + 4 + i. Then every lane's weights for a whole K step come
// as two 16-byte loads with no byte shuffles (H200, M = 512, 4096x4096: 17.1 vs 22.3 us for the natural order).
//
// Shared-memory pitches: an A/B8 row is 64 + 32 bytes, so the four rows a half-warp reads with 8-byte loads
// fall in distinct 32-byte bank windows; a packed row is 32 + 16 bytes, so the eight rows a warp reads with
// 4-byte loads fall in distinct 16-byte windows.
#include <cuda_fp16.h>

#include <cstdint>

#include "cublas_gemm.h"
#include "pdl.cuh"
#include "quant_linear_kernels.h"
#include "triton_gemm.h"

namespace edgeq {
namespace cuda {
namespace {

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ float FromFloat<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half FromFloat<__half>(float v) { return __float2half_rn(v); }

// The exporter rounds each step to T: a float16 quotient is the float32 one rounded once (exact for division).
template <typename T>
__device__ __forceinline__ float RoundToT(float v) {
  if constexpr (sizeof(T) == 2) return __half2float(__float2half_rn(v));
  else return v;
}

constexpr int kAlignK = 64;  // Kp: one mma K slice
constexpr size_t kScratchAlign = 256;

int64_t PaddedK(int64_t K) { return (K + kAlignK - 1) / kAlignK * kAlignK; }
size_t AlignScratch(size_t bytes) { return (bytes + kScratchAlign - 1) / kScratchAlign * kScratchAlign; }
size_t CodesBytes(const QlArgs& a) { return AlignScratch(static_cast<size_t>(a.M * PaddedK(a.K))); }
// The codes, then the three row arrays: s_x [M], the code sums [M] and the tokens' zero points [M].
size_t RowArraysEnd(const QlArgs& a) {
  return CodesBytes(a) + static_cast<size_t>(a.M) * (sizeof(float) + 2 * sizeof(int));
}
bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// ------------------------------------------------------------------------------------------- quantize

constexpr int kQuantThreads = 256;

// Where q's codes go (see the top of the file): k in order (kNatural); each 8-group evens-first, 0,2,4,6,1,3,5,7
// (kEvensFirst: the mma kernels' packed weights); evens-first with the 4-code runs of each 128-code block moved
// (kTritonRuns: the triton kernel's packed path).
enum class CodeOrder { kNatural, kEvensFirst, kTritonRuns };

template <CodeOrder ORDER>
__device__ __forceinline__ int GroupOffset(int j) {
  return ORDER != CodeOrder::kNatural ? (j < 4 ? 2 * j : 2 * (j - 4) + 1) : j;
}

// Stores the codes of 8-group `group` (its two 4-code runs, v.x and v.y) into the row's codes.
template <CodeOrder ORDER>
__device__ __forceinline__ void StoreGroup(int8_t* row_q, int group, uint2 v) {
  if constexpr (ORDER == CodeOrder::kTritonRuns) {
    uint32_t* runs = reinterpret_cast<uint32_t*>(row_q) + 32 * (group / 16);
    const int i = (group % 16) / 4, j = group % 4;
    runs[8 * j + i] = v.x;
    runs[8 * j + 4 + i] = v.y;
  } else {
    reinterpret_cast<uint2*>(row_q)[group] = v;
  }
}

// Eight consecutive elements of A as floats; p is 16-byte aligned.
__device__ __forceinline__ void Load8(const float* p, float (&out)[8]) {
  const float4 a = __ldg(reinterpret_cast<const float4*>(p));
  const float4 b = __ldg(reinterpret_cast<const float4*>(p) + 1);
  out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w;
  out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
}

__device__ __forceinline__ void Load8(const __half* p, float (&out)[8]) {
  const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    __half2 h;
    memcpy(&h, &words[i], 4);
    const float2 f = __half22float2(h);
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}

// hi = max(max x, 0) and nlo = max(max -x, 0) over the block's row, from each thread's part.
__device__ __forceinline__ void BlockRange(float& hi, float& nlo) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, offset));
    nlo = fmaxf(nlo, __shfl_xor_sync(0xffffffffu, nlo, offset));
  }
  __shared__ float warp_hi[kQuantThreads / 32], warp_nlo[kQuantThreads / 32];
  if ((threadIdx.x & 31) == 0) {
    warp_hi[threadIdx.x >> 5] = hi;
    warp_nlo[threadIdx.x >> 5] = nlo;
  }
  __syncthreads();
  hi = warp_hi[0];
  nlo = warp_nlo[0];
#pragma unroll
  for (int w = 1; w < kQuantThreads / 32; ++w) {
    hi = fmaxf(hi, warp_hi[w]);
    nlo = fmaxf(nlo, warp_nlo[w]);
  }
}

// One token's grid: symmetric max|x| / qmax, or (asym) the range [-nlo, hi] over 2^abits - 1 levels with codes u in
// [0, L] stored as u - 2^(abits-1) and the zero point likewise.
struct TokenGrid {
  float s, zp, cmin, cmax;
  int mid;
};

template <typename T>
__device__ __forceinline__ TokenGrid MakeGrid(float hi, float nlo, bool asym, int abits, float floor_value) {
  TokenGrid g;
  if (asym) {
    const int levels = (1 << abits) - 1;
    g.s = fmaxf(RoundToT<T>(__fdiv_rn(RoundToT<T>(__fadd_rn(hi, nlo)), static_cast<float>(levels))), floor_value);
    g.zp = rintf(RoundToT<T>(__fdiv_rn(nlo, g.s)));
    g.cmin = 0.f;
    g.cmax = static_cast<float>(levels);
    g.mid = 1 << (abits - 1);
  } else {
    const int qmax = (1 << (abits - 1)) - 1;
    g.s = fmaxf(RoundToT<T>(__fdiv_rn(fmaxf(hi, nlo), static_cast<float>(qmax))), floor_value);
    g.zp = 0.f;
    g.cmin = static_cast<float>(-qmax - 1);
    g.cmax = static_cast<float>(qmax);
    g.mid = 0;
  }
  return g;
}

// The codes of the 8-group at k0 (in the group order ORDER gives), code 0 past K, which the GEMMs and the
// corrections rely on; their sum is added to `sum`.
template <typename T, CodeOrder ORDER>
__device__ __forceinline__ uint2 QuantizeGroup(const float (&x)[8], int k0, int K, const TokenGrid& g, int& sum) {
  uint32_t word[2] = {0u, 0u};
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const int k = k0 + GroupOffset<ORDER>(j);
    const float r = rintf(RoundToT<T>(__fdiv_rn(x[GroupOffset<ORDER>(j)], g.s))) + g.zp;
    const int v = k < K ? static_cast<int>(fminf(fmaxf(r, g.cmin), g.cmax)) - g.mid : 0;
    word[j >> 2] |= (static_cast<uint32_t>(v) & 0xffu) << (8 * (j & 3));
    sum += v;
  }
  return make_uint2(word[0], word[1]);
}

// VEC: K % 8 == 0 and A 16-byte aligned, so each thread reads its 8-element groups as vectors. CACHED > 0 (VEC
// only, Kp <= 8 * CACHED * kQuantThreads): each thread loads its CACHED groups at once and keeps them in registers
// for the second pass; the streaming loop (CACHED = 0) waits out one load latency per group, twice (H200,
// M = 512: 13.0 us at K = 11008). One pass finds hi = max(max x, 0) and nlo = max(max -x, 0): max|x| for the
// symmetric rule, the range [-nlo, hi] for the asymmetric one (act_zero != nullptr), whose zero point goes to
// act_zero[m]. Code sums go to q_sum when it is set.
template <typename T, CodeOrder ORDER, bool VEC, int CACHED>
__global__ void __launch_bounds__(kQuantThreads)
    QuantizeKernel(const T* __restrict__ A, int8_t* __restrict__ q, float* __restrict__ s_x, int* __restrict__ q_sum,
                   int* __restrict__ act_zero, int K, int Kp, int abits, float floor_value) {
  static_assert(CACHED == 0 || VEC, "cached groups are read as vectors");
  PdlWait();
  PdlRelease();
  const int m = blockIdx.x;
  const T* row = A + static_cast<size_t>(m) * K;
  float hi = 0.f, nlo = 0.f;
  float cache[CACHED > 0 ? CACHED : 1][8];
  if constexpr (CACHED > 0) {
#pragma unroll
    for (int i = 0; i < CACHED; ++i) {
      const int group = threadIdx.x + i * kQuantThreads;
      if (group < K / 8) {
        Load8(row + 8 * group, cache[i]);
      } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) cache[i][j] = 0.f;
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        hi = fmaxf(hi, cache[i][j]);
        nlo = fmaxf(nlo, -cache[i][j]);
      }
    }
  } else if constexpr (VEC) {
    for (int group = threadIdx.x; group < K / 8; group += kQuantThreads) {
      float x[8];
      Load8(row + 8 * group, x);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        hi = fmaxf(hi, x[j]);
        nlo = fmaxf(nlo, -x[j]);
      }
    }
  } else {
    for (int k = threadIdx.x; k < K; k += kQuantThreads) {
      const float v = ToFloat(row[k]);
      hi = fmaxf(hi, v);
      nlo = fmaxf(nlo, -v);
    }
  }
  BlockRange(hi, nlo);
  const bool asym = act_zero != nullptr;
  const TokenGrid g = MakeGrid<T>(hi, nlo, asym, abits, floor_value);
  if (threadIdx.x == 0) {
    s_x[m] = g.s;
    if (asym) act_zero[m] = static_cast<int>(g.zp) - g.mid;
  }
  int8_t* out = q + static_cast<size_t>(m) * Kp;
  int sum = 0;
  if constexpr (CACHED > 0) {
#pragma unroll
    for (int i = 0; i < CACHED; ++i) {
      const int group = threadIdx.x + i * kQuantThreads;
      if (group < Kp / 8) StoreGroup<ORDER>(out, group, QuantizeGroup<T, ORDER>(cache[i], 8 * group, K, g, sum));
    }
  } else {
    for (int group = threadIdx.x; group < Kp / 8; group += kQuantThreads) {
      float x[8];
      if (VEC && 8 * group < K) {
        Load8(row + 8 * group, x);
      } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) x[j] = 8 * group + j < K ? ToFloat(row[8 * group + j]) : 0.f;
      }
      StoreGroup<ORDER>(out, group, QuantizeGroup<T, ORDER>(x, 8 * group, K, g, sum));
    }
  }
  if (q_sum == nullptr) return;  // uniform across the block
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  __shared__ int warp_sum[kQuantThreads / 32];
  if ((threadIdx.x & 31) == 0) warp_sum[threadIdx.x >> 5] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kQuantThreads / 32; ++w) sum += warp_sum[w];
    q_sum[m] = sum;
  }
}

// The cached variant with the fewest register groups that hold a row (Kp / 8 groups over kQuantThreads threads),
// the streaming one for longer rows or unaligned ones.
template <typename T, CodeOrder ORDER>
auto PickQuantize(bool vec, int Kp) {
  const int per_thread = (Kp / 8 + kQuantThreads - 1) / kQuantThreads;
  if (!vec) return QuantizeKernel<T, ORDER, false, 0>;
  if (per_thread <= 2) return QuantizeKernel<T, ORDER, true, 2>;
  if (per_thread <= 4) return QuantizeKernel<T, ORDER, true, 4>;
  if (per_thread <= 6) return QuantizeKernel<T, ORDER, true, 6>;
  if (per_thread <= 8) return QuantizeKernel<T, ORDER, true, 8>;
  return QuantizeKernel<T, ORDER, true, 0>;
}

template <typename T>
auto PickQuantize(CodeOrder order, bool vec, int Kp) {
  switch (order) {
    case CodeOrder::kEvensFirst: return PickQuantize<T, CodeOrder::kEvensFirst>(vec, Kp);
    case CodeOrder::kTritonRuns: return PickQuantize<T, CodeOrder::kTritonRuns>(vec, Kp);
    default: return PickQuantize<T, CodeOrder::kNatural>(vec, Kp);
  }
}

// sum_k (q - z[m]) * (W - w_zero[n]) from the int32 sums, as float: acc - w_zero * q_sum - z * (w_sum - K * w_zero),
// rounded once (QlCorrected in quant_linear.h). All null: symmetric on both sides, the sum itself. The terms stay
// within int32 while K < 2^15 (each is at most 2^16 K); `wide` takes int64 beyond. A thread reads its row's
// q_sum and z once (Row) and the column's w_zero and w_sum through the read-only cache.
struct ZeroOffset {
  const int8_t* w_zero;  // [N] or null
  const int* q_sum;      // [M], set with w_zero
  const int* act_zero;   // [M] or null (act_sym)
  const int* w_sum;      // [N], set with act_zero
  int K;
  bool wide;
  __device__ __forceinline__ bool None() const { return w_zero == nullptr && act_zero == nullptr; }
  __device__ __forceinline__ int2 Row(int m) const {
    if (None()) return make_int2(0, 0);
    return make_int2(w_zero != nullptr ? q_sum[m] : 0, act_zero != nullptr ? act_zero[m] : 0);
  }
  __device__ __forceinline__ float Sum(int acc, int2 row, int n) const {
    if (None()) return __int2float_rn(acc);
    const int wz = w_zero != nullptr ? static_cast<int>(__ldg(w_zero + n)) : 0;
    const int wse = act_zero != nullptr ? __ldg(w_sum + n) - K * wz : 0;  // |.| <= 2^8 K
    if (!wide) return __int2float_rn(acc - wz * row.x - row.y * wse);
    return __ll2float_rn(static_cast<long long>(acc) - static_cast<long long>(wz) * row.x -
                         static_cast<long long>(row.y) * wse);
  }
};

// Y = T(float(acc) * (s_x * w_scale)): the scale product first, as the op's contract and the CPU kernel do.
template <typename T>
__device__ __forceinline__ T Epilogue(float acc, float sx, float ws) {
  return FromFloat<T>(__fmul_rn(acc, __fmul_rn(sx, ws)));
}

// --------------------------------------------------------------------------------------------- decode

constexpr int kDecodeWarps = 8;
constexpr int kDecodeMaxM = 8;
constexpr int kDecodeUnroll = 4;  // 16-byte vectors of B in flight per lane

__device__ __forceinline__ uint4 LoadStreaming(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

template <typename T, bool PACKED, int MAXM>
__global__ void __launch_bounds__(kDecodeWarps * 32)
    DecodeKernel(const int8_t* __restrict__ q, const float* __restrict__ s_x, const int8_t* __restrict__ B,
                 const T* __restrict__ w_scales, ZeroOffset zero, T* __restrict__ Y, int M, int N, int Kp, int row_bytes) {
  PdlWait();
  PdlRelease();
  const int lane = threadIdx.x & 31;
  const int n = blockIdx.x * kDecodeWarps + (threadIdx.x >> 5);
  if (n >= N) return;  // the whole warp: nothing below synchronizes across warps
  const uint4* row = reinterpret_cast<const uint4*>(B + static_cast<size_t>(n) * row_bytes);
  const int chunks = row_bytes / 16;
  int acc[MAXM];
#pragma unroll
  for (int m = 0; m < MAXM; ++m) acc[m] = 0;

  for (int c0 = lane; c0 < chunks; c0 += 32 * kDecodeUnroll) {
    uint4 w[kDecodeUnroll];
#pragma unroll
    for (int u = 0; u < kDecodeUnroll; ++u) {
      const int c = c0 + 32 * u;
      w[u] = c < chunks ? LoadStreaming(row + c) : make_uint4(0u, 0u, 0u, 0u);
    }
#pragma unroll
    for (int u = 0; u < kDecodeUnroll; ++u) {
      const int c = c0 + 32 * u;
      if (c >= chunks) break;
      const int words[4] = {static_cast<int>(w[u].x), static_cast<int>(w[u].y), static_cast<int>(w[u].z),
                            static_cast<int>(w[u].w)};
#pragma unroll
      for (int m = 0; m < MAXM; ++m) {
        if (m >= M) break;
        const int8_t* qm = q + static_cast<size_t>(m) * Kp;
        if constexpr (PACKED) {
          const int4 x0 = __ldg(reinterpret_cast<const int4*>(qm + 32 * c));
          const int4 x1 = __ldg(reinterpret_cast<const int4*>(qm + 32 * c + 16));
          const int xs[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            acc[m] = __dp4a(static_cast<int>((static_cast<uint32_t>(words[i]) << 4) & 0xF0F0F0F0u), xs[2 * i], acc[m]);
            acc[m] = __dp4a(static_cast<int>(static_cast<uint32_t>(words[i]) & 0xF0F0F0F0u), xs[2 * i + 1], acc[m]);
          }
        } else {
          const int4 x = __ldg(reinterpret_cast<const int4*>(qm + 16 * c));
          acc[m] = __dp4a(words[0], x.x, acc[m]);
          acc[m] = __dp4a(words[1], x.y, acc[m]);
          acc[m] = __dp4a(words[2], x.z, acc[m]);
          acc[m] = __dp4a(words[3], x.w, acc[m]);
        }
      }
    }
  }
  int mine = 0;  // lane m ends up holding row m's sum
#pragma unroll
  for (int m = 0; m < MAXM; ++m) {
    int v = acc[m];
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == m) mine = v;
  }
  if (lane < M) {
    if (PACKED) mine >>= 4;
    Y[static_cast<size_t>(lane) * N + n] = Epilogue<T>(zero.Sum(mine, zero.Row(lane), n), s_x[lane],
                                                       ToFloat(w_scales[n]));
  }
}

// ------------------------------------------------------------------------------------------------ mma

constexpr int kBK = 64;
constexpr int kStages = 4;
constexpr int kPitchA = kBK + 32;

template <bool PACKED>
struct BLayout {
  static constexpr int kBytes = PACKED ? kBK / 2 : kBK;  // bytes of a B row per K slice
  static constexpr int kPitch = PACKED ? kBytes + 16 : kBytes + 32;
};

template <int BM, int BN, bool PACKED>
struct StageLayout {
  static constexpr int kABytes = BM * kPitchA;
  static constexpr int kBytes = kABytes + BN * BLayout<PACKED>::kPitch;
};

__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem, bool valid) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int src_bytes = valid ? 16 : 0;  // 0: fill the 16 bytes with zeros, read nothing
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void CpAsyncWait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

__device__ __forceinline__ void MmaS8(int (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <int BM, int BN, int WM, int WN>
struct Tile {
  static constexpr int kWarpsN = BN / WN;
  static constexpr int kThreads = (BM / WM) * kWarpsN * 32;
  static constexpr int kMT = WM / 16, kNT = WN / 8;
};

template <int BM, int BN, int THREADS, bool PACKED>
__device__ __forceinline__ void LoadSlice(uint8_t* stage, const int8_t* __restrict__ q, const int8_t* __restrict__ B,
                                          int m0, int n0, int k0, int M, int N, int Kp, int row_bytes, int tid) {
  using BL = BLayout<PACKED>;
  uint8_t* As = stage;
  uint8_t* Bs = stage + StageLayout<BM, BN, PACKED>::kABytes;
  constexpr int kAChunks = BM * (kBK / 16);
#pragma unroll
  for (int c = tid; c < kAChunks; c += THREADS) {
    const int r = c / (kBK / 16), col = (c % (kBK / 16)) * 16;
    const int m = m0 + r;
    const bool ok = m < M;
    CpAsync16(As + r * kPitchA + col, q + static_cast<size_t>(ok ? m : 0) * Kp + k0 + col, ok);
  }
  constexpr int kBRowChunks = BL::kBytes / 16;
#pragma unroll
  for (int c = tid; c < BN * kBRowChunks; c += THREADS) {
    const int r = c / kBRowChunks, col = (c % kBRowChunks) * 16;
    const int n = n0 + r;
    const int byte = (PACKED ? k0 / 2 : k0) + col;
    const bool ok = n < N && byte < row_bytes;  // row_bytes % 16 == 0: a vector is wholly in or out
    CpAsync16(Bs + r * BL::kPitch + col, ok ? B + static_cast<size_t>(n) * row_bytes + byte : B, ok);
  }
}

template <typename T, int BM, int BN, int WM, int WN, bool PACKED>
__global__ void __launch_bounds__(Tile<BM, BN, WM, WN>::kThreads)
    MmaKernel(const int8_t* __restrict__ q, const float* __restrict__ s_x, const int8_t* __restrict__ B,
              const T* __restrict__ w_scales, ZeroOffset zero, T* __restrict__ Y, int M, int N, int Kp, int row_bytes,
              bool pair_store) {
  using TL = Tile<BM, BN, WM, WN>;
  using SL = StageLayout<BM, BN, PACKED>;
  using BL = BLayout<PACKED>;
  constexpr int MT = TL::kMT, NT = TL::kNT;
  extern __shared__ __align__(128) uint8_t smem[];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int wm0 = (warp / TL::kWarpsN) * WM, wn0 = (warp % TL::kWarpsN) * WN;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int slices = Kp / kBK;

  int acc[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < slices)
      LoadSlice<BM, BN, TL::kThreads, PACKED>(smem + s * SL::kBytes, q, B, m0, n0, s * kBK, M, N, Kp, row_bytes, tid);
    CpAsyncCommit();
  }
  for (int kt = 0; kt < slices; ++kt) {
    CpAsyncWait<kStages - 2>();  // this thread's copies of slice kt have landed
    __syncthreads();             // everyone's have, and everyone is done with slice kt-1's buffer
    const int next = kt + kStages - 1;
    if (next < slices)
      LoadSlice<BM, BN, TL::kThreads, PACKED>(smem + (next % kStages) * SL::kBytes, q, B, m0, n0, next * kBK, M, N,
                                              Kp, row_bytes, tid);
    CpAsyncCommit();  // possibly empty: keeps the group count in step with kt

    const uint8_t* As = smem + (kt % kStages) * SL::kBytes;
    const uint8_t* Bs = As + SL::kABytes;
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 32) {
      uint32_t a[MT][4], b[NT][2];
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        const uint8_t* p = As + (wm0 + 16 * i + g) * kPitchA + kk + 8 * t;
        const uint2 top = *reinterpret_cast<const uint2*>(p);
        const uint2 bottom = *reinterpret_cast<const uint2*>(p + 8 * kPitchA);
        a[i][0] = top.x;
        a[i][1] = bottom.x;
        a[i][2] = top.y;
        a[i][3] = bottom.y;
      }
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const uint8_t* p = Bs + (wn0 + 8 * j + g) * BL::kPitch;
        if constexpr (PACKED) {
          const uint32_t w = *reinterpret_cast<const uint32_t*>(p + kk / 2 + 4 * t);
          b[j][0] = (w << 4) & 0xF0F0F0F0u;
          b[j][1] = w & 0xF0F0F0F0u;
        } else {
          const uint2 v = *reinterpret_cast<const uint2*>(p + kk + 8 * t);
          b[j][0] = v.x;
          b[j][1] = v.y;
        }
      }
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j) MmaS8(acc[i][j], a[i], b[j]);
    }
  }
  CpAsyncWait<0>();  // no copy may still target shared memory when the block exits

  float ws[NT][2];
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int n = n0 + wn0 + 8 * j + 2 * t + e;
      ws[j][e] = n < N ? ToFloat(w_scales[n]) : 0.f;
    }
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = m0 + wm0 + 16 * i + g + 8 * h;
      if (m >= M) continue;
      const float sx = s_x[m];
      const int2 zr = zero.Row(m);
      T* y = Y + static_cast<size_t>(m) * N;
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int n = n0 + wn0 + 8 * j + 2 * t;
        int v0 = acc[i][j][2 * h], v1 = acc[i][j][2 * h + 1];
        if (PACKED) {
          v0 >>= 4;
          v1 >>= 4;
        }
        // columns past N are computed and dropped: clamp them so w_zero is never read out of bounds
        const T y0 = Epilogue<T>(zero.Sum(v0, zr, min(n, N - 1)), sx, ws[j][0]);
        const T y1 = Epilogue<T>(zero.Sum(v1, zr, min(n + 1, N - 1)), sx, ws[j][1]);
        if (pair_store && n + 1 < N) {
          if constexpr (sizeof(T) == 2) {
            __half2 pair;
            pair.x = y0;
            pair.y = y1;
            *reinterpret_cast<__half2*>(y + n) = pair;
          } else {
            *reinterpret_cast<float2*>(y + n) = make_float2(y0, y1);
          }
        } else {
          if (n < N) y[n] = y0;
          if (n + 1 < N) y[n + 1] = y1;
        }
      }
    }
}

// ------------------------------------------------------------------------------------------- wgmma
//
// Hopper warpgroup MMA (sm_90a only; other builds compile an empty kernel and never pick it, see
// WgmmaCompiled). Block 128x128, two warpgroups of m64n128k32 each, both operands read by the tensor cores from
// shared memory through descriptors, a 4-stage cp.async pipeline of 64-byte K slices. Operand tiles are in the
// no-swizzle "core matrix" layout: 8 rows x 16 bytes contiguous (128 B), the K neighbour 128 B further
// (leading byte offset), the next 8 rows 512 B further (stride byte offset). Packed 4-bit weights land in a
// staging tile and are widened to int8 (as 16 * value, natural K order) into the B tile before the MMAs.
// Activation codes are in natural K order for this kernel.

constexpr int kWgBM = 128, kWgBN = 128, kWgThreads = 256;
constexpr int kCoreLBO = 128, kCoreSBO = 512;  // bytes, for a 64-byte K slice (4 core matrices per 8 rows)

template <bool PACKED>
struct WgLayout {
  static constexpr int kA = kWgBM * kBK;                       // int8 A tile
  static constexpr int kB = PACKED ? kWgBN * kBK / 2 : kWgBN * kBK;  // B tile, or packed staging
  static constexpr int kStage = kA + kB;
  static constexpr int kWide = PACKED ? kWgBN * kBK : 0;       // the widened B tile (one, reused per slice)
  static constexpr int kBytes = kStages * kStage + kWide;
};

[[maybe_unused]] __device__ __forceinline__ int CoreOffset(int row, int chunk) {
  return (row >> 3) * kCoreSBO + chunk * kCoreLBO + (row & 7) * 16;
}

[[maybe_unused]] __device__ __forceinline__ uint64_t Descriptor(const void* smem) {
  const uint32_t address = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  return static_cast<uint64_t>((address & 0x3FFFF) >> 4) | (static_cast<uint64_t>(kCoreLBO >> 4) << 16) |
         (static_cast<uint64_t>(kCoreSBO >> 4) << 32);  // bits 62-63 = 0: no swizzle
}

[[maybe_unused]] __device__ __forceinline__ void FenceProxyAsync() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

[[maybe_unused]] __device__ __forceinline__ void WgmmaS8(int (&d)[64], uint64_t desc_a, uint64_t desc_b) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p;\n}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]), "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]), "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]), "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]), "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(1));
#endif
}

[[maybe_unused]] __device__ __forceinline__ void WgmmaFence() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
[[maybe_unused]] __device__ __forceinline__ void WgmmaCommitAndWait() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.commit_group.sync.aligned;\nwgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#endif
}

template <bool PACKED>
__device__ __forceinline__ void LoadWgSlice(uint8_t* stage, const int8_t* __restrict__ q, const int8_t* __restrict__ B,
                                            int m0, int n0, int k0, int M, int N, int Kp, int row_bytes, int tid) {
  uint8_t* As = stage;
  uint8_t* Bs = stage + WgLayout<PACKED>::kA;
#pragma unroll
  for (int c = tid; c < kWgBM * (kBK / 16); c += kWgThreads) {
    const int r = c >> 2, chunk = c & 3, m = m0 + r;
    const bool ok = m < M;
    CpAsync16(As + CoreOffset(r, chunk), q + static_cast<size_t>(ok ? m : 0) * Kp + k0 + 16 * chunk, ok);
  }
  if constexpr (PACKED) {  // staging: row n holds the slice's 32 packed bytes, plain
#pragma unroll
    for (int c = tid; c < kWgBN * 2; c += kWgThreads) {
      const int r = c >> 1, half = c & 1, n = n0 + r, byte = k0 / 2 + 16 * half;
      const bool ok = n < N && byte < row_bytes;
      CpAsync16(Bs + r * 32 + 16 * half, ok ? B + static_cast<size_t>(n) * row_bytes + byte : B, ok);
    }
  } else {
#pragma unroll
    for (int c = tid; c < kWgBN * (kBK / 16); c += kWgThreads) {
      const int r = c >> 2, chunk = c & 3, n = n0 + r, byte = k0 + 16 * chunk;
      const bool ok = n < N && byte < row_bytes;
      CpAsync16(Bs + CoreOffset(r, chunk), ok ? B + static_cast<size_t>(n) * row_bytes + byte : B, ok);
    }
  }
}

template <typename T, bool PACKED>
__global__ void __launch_bounds__(kWgThreads)
    WgmmaKernel(const int8_t* __restrict__ q, const float* __restrict__ s_x, const int8_t* __restrict__ B,
                const T* __restrict__ w_scales, ZeroOffset zero, T* __restrict__ Y, int M, int N, int Kp, int row_bytes,
                bool pair_store) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using L = WgLayout<PACKED>;
  extern __shared__ __align__(128) uint8_t smem[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wg = warp >> 2;  // warpgroup: rows 64*wg.. of the tile
  const int m0 = blockIdx.y * kWgBM, n0 = blockIdx.x * kWgBN;
  const int slices = Kp / kBK;
  uint8_t* wide = smem + kStages * L::kStage;

  int d[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) d[i] = 0;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < slices) LoadWgSlice<PACKED>(smem + s * L::kStage, q, B, m0, n0, s * kBK, M, N, Kp, row_bytes, tid);
    CpAsyncCommit();
  }
  for (int kt = 0; kt < slices; ++kt) {
    CpAsyncWait<kStages - 2>();
    FenceProxyAsync();  // this thread's landed copies, visible to the tensor cores' (async) proxy
    __syncthreads();    // everyone's; and every warpgroup finished slice kt-1 (waited below)
    uint8_t* stage = smem + (kt % kStages) * L::kStage;
    const uint8_t* b_tile = stage + L::kA;
    if constexpr (PACKED) {
      // Thread: row r, half h of its 32 packed bytes -> 32 int8 values, natural K order, as 16 * value.
      const int r = tid >> 1, h = tid & 1;
      const uint4 packed = *reinterpret_cast<const uint4*>(stage + L::kA + r * 32 + 16 * h);
      const uint32_t words[4] = {packed.x, packed.y, packed.z, packed.w};
      uint32_t out[8];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const uint32_t evens = (words[i] << 4) & 0xF0F0F0F0u, odds = words[i] & 0xF0F0F0F0u;
        out[2 * i] = __byte_perm(evens, odds, 0x5140);
        out[2 * i + 1] = __byte_perm(evens, odds, 0x7362);
      }
      *reinterpret_cast<uint4*>(wide + CoreOffset(r, 2 * h)) = make_uint4(out[0], out[1], out[2], out[3]);
      *reinterpret_cast<uint4*>(wide + CoreOffset(r, 2 * h + 1)) = make_uint4(out[4], out[5], out[6], out[7]);
      FenceProxyAsync();
      __syncthreads();
      b_tile = wide;
    }
    const int next = kt + kStages - 1;
    if (next < slices)
      LoadWgSlice<PACKED>(smem + (next % kStages) * L::kStage, q, B, m0, n0, next * kBK, M, N, Kp, row_bytes, tid);
    CpAsyncCommit();

    WgmmaFence();
#pragma unroll
    for (int kk = 0; kk < kBK / 32; ++kk)  // k32 = two core matrices along K
      WgmmaS8(d, Descriptor(stage + wg * 8 * kCoreSBO + kk * 2 * kCoreLBO), Descriptor(b_tile + kk * 2 * kCoreLBO));
    WgmmaCommitAndWait();
  }
  CpAsyncWait<0>();

  // Accumulator r of a thread: row 16*warp_in_group + lane/4 + 8*((r/2)%2), column 2*(lane%4) + r%2 + 8*(r/4).
  const int row0 = m0 + 64 * wg + 16 * (warp & 3) + (lane >> 2);
#pragma unroll
  for (int r = 0; r < 64; r += 2) {
    const int m = row0 + 8 * ((r >> 1) & 1);
    const int n = n0 + 2 * (lane & 3) + 8 * (r >> 2);
    if (m >= M || n >= N) continue;
    int v0 = d[r], v1 = d[r + 1];
    if (PACKED) {
      v0 >>= 4;
      v1 >>= 4;
    }
    const float sx = s_x[m];
    T* y = Y + static_cast<size_t>(m) * N;
    const int2 zr = zero.Row(m);
    const T y0 = Epilogue<T>(zero.Sum(v0, zr, n), sx, ToFloat(w_scales[n]));
    if (n + 1 < N) {
      const T y1 = Epilogue<T>(zero.Sum(v1, zr, n + 1), sx, ToFloat(w_scales[n + 1]));
      if (pair_store) {
        if constexpr (sizeof(T) == 2) {
          __half2 pair;
          pair.x = y0;
          pair.y = y1;
          *reinterpret_cast<__half2*>(y + n) = pair;
        } else {
          *reinterpret_cast<float2*>(y + n) = make_float2(y0, y1);
        }
      } else {
        y[n] = y0;
        y[n + 1] = y1;
      }
    } else {
      y[n] = y0;
    }
  }
#endif
}

// Whether this build holds the wgmma kernel for the running device (an sm_90a build on compute capability 9.0).
__device__ int g_wgmma_compiled;
__global__ void ProbeWgmma() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  g_wgmma_compiled = 1;
#else
  g_wgmma_compiled = 0;
#endif
}

bool WgmmaCompiled() {
  static const bool compiled = [] {
    ProbeWgmma<<<1, 1>>>();
    int value = 0;
    if (cudaMemcpyFromSymbol(&value, g_wgmma_compiled, sizeof(value)) != cudaSuccess) {
      cudaGetLastError();  // a failed probe only means "no wgmma"; leave no sticky error behind
      return false;
    }
    return value == 1;
  }();
  return compiled;
}

// -------------------------------------------------------------------------------------------- generic

constexpr int kGenericThreads = 128;
constexpr int kGenericRows = 4;

template <typename T, bool PACKED>
__global__ void __launch_bounds__(kGenericThreads)
    GenericKernel(const int8_t* __restrict__ q, const float* __restrict__ s_x, const int8_t* __restrict__ B,
                  const T* __restrict__ w_scales, ZeroOffset zero, T* __restrict__ Y, int M, int N, int K, int Kp,
                  int row_bytes) {
  const int n = blockIdx.x, m0 = blockIdx.y * kGenericRows;
  const int8_t* row = B + static_cast<size_t>(n) * row_bytes;
  int acc[kGenericRows] = {0, 0, 0, 0};
  for (int k = threadIdx.x; k < K; k += kGenericThreads) {
    int w, pos = k;
    if constexpr (PACKED) {
      const int byte = row[k >> 1];
      w = (k & 1) ? (byte >> 4) : (static_cast<int>(static_cast<int8_t>(byte << 4)) >> 4);
      pos = (k & ~7) + ((k & 1) ? 4 : 0) + ((k & 7) >> 1);  // evens-first storage of q
    } else {
      w = row[k];
    }
#pragma unroll
    for (int r = 0; r < kGenericRows; ++r)
      if (m0 + r < M) acc[r] += w * static_cast<int>(q[static_cast<size_t>(m0 + r) * Kp + pos]);
  }
  __shared__ int partial[kGenericRows][kGenericThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int r = 0; r < kGenericRows; ++r) {
    int v = acc[r];
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0) partial[r][warp] = v;
  }
  __syncthreads();
  if (threadIdx.x < kGenericRows && m0 + static_cast<int>(threadIdx.x) < M) {
    int v = 0;
    for (int i = 0; i < kGenericThreads / 32; ++i) v += partial[threadIdx.x][i];
    const int m = m0 + threadIdx.x;
    Y[static_cast<size_t>(m) * N + n] = Epilogue<T>(zero.Sum(v, zero.Row(m), n), s_x[m], ToFloat(w_scales[n]));
  }
}

// ------------------------------------------------------------------------------------------- cublas

// The epilogue over cuBLAS's int32 sums acc [M, N]: four consecutive outputs per thread (N % 4 == 0), read as
// one 16-byte vector; a memory-bound pass, so the loads and stores are as wide as the layout allows.
template <typename T>
__global__ void SumsEpilogueKernel(const int4* __restrict__ acc, const float* __restrict__ s_x,
                                   const T* __restrict__ w_scales, ZeroOffset zero, T* __restrict__ Y, int N) {
  PdlWait();
  const int n = 4 * (blockIdx.x * blockDim.x + threadIdx.x), m = blockIdx.y;
  if (n >= N) return;
  const size_t i = static_cast<size_t>(m) * N + n;
  const int4 v = acc[i / 4];
  const int sums[4] = {v.x, v.y, v.z, v.w};
  const int2 row = zero.Row(m);
  const float sx = s_x[m];
  T out[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) out[j] = Epilogue<T>(zero.Sum(sums[j], row, n + j), sx, ToFloat(w_scales[n + j]));
  if constexpr (sizeof(T) == 2) {
    uint2 packed;
    memcpy(&packed, out, sizeof(packed));
    *reinterpret_cast<uint2*>(Y + i) = packed;
  } else {
    *reinterpret_cast<float4*>(Y + i) = make_float4(out[0], out[1], out[2], out[3]);
  }
}

// Packed 4-bit rows -> int8 [N, K] for cuBLAS, which has no 4-bit integer GEMM: per call, so the weights stay
// 4-bit in memory (at M >= 512 the GEMM's time dwarfs this pass). One thread per 16 packed bytes.
__global__ void WidenPackedKernel(const uint4* __restrict__ B, uint4* __restrict__ wide, size_t vectors) {
  PdlWait();  // the scratch it writes may still be read by the previous op
  PdlRelease();
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= vectors) return;
  const uint4 in = B[i];
  const uint32_t words[4] = {in.x, in.y, in.z, in.w};
  uint32_t out[8];
#pragma unroll
  for (int w = 0; w < 4; ++w) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      uint32_t packed = 0;
#pragma unroll
      for (int b = 0; b < 2; ++b) {
        const int8_t byte = static_cast<int8_t>(words[w] >> (8 * (2 * half + b)));
        // value 2j in the low nibble, 2j+1 in the high one; the shifts sign-extend each nibble
        const int8_t low = static_cast<int8_t>(byte << 4) >> 4, high = byte >> 4;
        packed |= (static_cast<uint32_t>(static_cast<uint8_t>(low)) | static_cast<uint32_t>(static_cast<uint8_t>(high)) << 8)
                  << (16 * b);
      }
      out[2 * w + half] = packed;
    }
  }
  wide[2 * i] = make_uint4(out[0], out[1], out[2], out[3]);
  wide[2 * i + 1] = make_uint4(out[4], out[5], out[6], out[7]);
}

// K % 64 == 0 makes Kp == K (q is a dense [M, K]) and packed rows whole 16-byte vectors; N % 4 == 0 and an aligned
// Y let the epilogue move four outputs at once.
bool CublasFits(const QlArgs& a) { return a.K % kAlignK == 0 && a.N % 4 == 0 && Aligned16(a.Y); }

size_t SumsBytes(const QlArgs& a) { return static_cast<size_t>(a.M) * a.N * sizeof(int); }

// Packed weights widened to one per byte, after the sums (none for 8-bit-stored weights).
size_t WideBytes(const QlArgs& a) { return a.wbits <= 4 ? static_cast<size_t>(a.N) * a.K : 0; }

// Where the cublas kernel's sums start: after the row arrays, 256-byte aligned for cuBLAS.
size_t SumsOffset(const QlArgs& a) { return AlignScratch(RowArraysEnd(a)); }

// cuBLASLt's workspace, last: enough for its split-K kernels at these shapes.
constexpr size_t kLtWorkspaceBytes = size_t{8} << 20;
size_t LtWorkspaceOffset(const QlArgs& a) { return AlignScratch(SumsOffset(a) + SumsBytes(a) + WideBytes(a)); }

// Up to this M auto keeps 8-bit-stored weights on the decode kernel (see Pick).
constexpr int64_t kDecodeMaxM8Bit = 2;
// Below this M auto leaves packed weights to cuBLAS: at M = 64 the 128-token tile ran half empty (4096x11008 W4A4:
// 62.2 us against 42.0 through cuBLAS, H200).
constexpr int64_t kTritonPackedMinM = 256;
// The cublas kernel's buffers in the call's scratch (all null for the other kernels).
struct CublasScratch {
  int* acc = nullptr;       // the int32 sums [M, N]
  int8_t* wide = nullptr;   // packed weights widened [N, K]
  void* workspace = nullptr;  // cuBLASLt's
};

// The triton kernel's operands as far as QlArgs settles them (q, the row arrays and B are the call's).
TritonGemmArgs TritonArgs(const QlArgs& a) {
  TritonGemmArgs t;
  t.half = a.half;
  t.M = static_cast<int>(a.M);
  t.N = static_cast<int>(a.N);
  t.K = static_cast<int>(a.K);
  t.Kp = static_cast<int>(PaddedK(a.K));
  // Packed weights are unpacked in the kernel at every M (H200, codes in K_ORDER: as fast as the 8-bit kernel on
  // widened weights or faster, M = 512...2048, without the widening pass).
  t.packed = a.wbits <= 4;
  t.ldb = static_cast<int>(t.packed ? a.row_bytes : a.K);
  t.B = a.B;
  t.Y = a.Y;
  t.w_scales = a.w_scales;
  return t;
}

// 8-bit rows and packed ones the kernel unpacks are read in place; others are widened into [N, K] scratch
// (aligned, so not checked here).
bool TritonFits(const QlArgs& a) {
  if (a.wbits > 4 && a.row_bytes != a.K) return false;
  TritonGemmArgs t = TritonArgs(a);
  if (a.wbits <= 4 && !t.packed) t.B = nullptr;
  return TritonGemmFits(t);
}

// ------------------------------------------------------------------------------------------- dispatch

bool VectorRows(const QlArgs& a) { return a.row_bytes % 16 == 0 && Aligned16(a.B); }

QlKernel Pick(const QlArgs& a, QlKernel requested) {
  if (requested == QlKernel::kAuto) {
    if (!VectorRows(a)) return QlKernel::kGeneric;
    // 8-bit-stored weights above M = 2 go to cuBLAS (H200, BENCHMARKS.md: M = 8, 11008x4096, 26.0 vs 55.0 us;
    // M = 4 ahead on the 11008 shapes, 2.2 us behind at 4096x4096); packed weights stay with decode up to
    // M = 8 (cuBLAS needs them widened: 42.3 vs 34.7 us at M = 8).
    const bool cublas = CublasFits(a) && CublasAvailable();
    if (a.M <= kDecodeMaxM && (a.wbits <= 4 || a.M <= kDecodeMaxM8Bit || !cublas)) return QlKernel::kDecode;
    // H200, LLaMA-7B shapes (BENCHMARKS.md): the Triton GEMM with its fused epilogue beats cuBLAS's int8 GEMM plus
    // the separate epilogue once it has a tile per SM; cuBLAS runs 1.3-3x faster than the mma.sync kernels at
    // M = 64...2048, packed weights included (widened per call).
    const bool triton = TritonFits(a) && TritonGemmAvailable();
    if (triton && TritonGemmFillsDevice(TritonArgs(a)) && (a.wbits > 4 || a.M >= kTritonPackedMinM))
      return QlKernel::kTriton;
    if (cublas) return QlKernel::kCublas;
    if (triton) return QlKernel::kTriton;
    requested = QlKernel::kMma;  // not wgmma: slower than mma.sync as it stands (BENCHMARKS.md)
  }
  if (requested != QlKernel::kMma) return requested;
  // Measured on the H100 (LLaMA-7B shapes, BENCHMARKS.md): 64x64 while M fits one tile row; above that
  // 128x128, the fastest at every shape and M but one (128x64: 7% ahead at M = 512, N = 11008, 4-bit; up to
  // 29% behind at M = 2048) and 4-17% ahead of 128x256.
  if (a.M <= 64) return QlKernel::kMma64;
  return QlKernel::kMma128;
}

template <typename T, int BM, int BN, int WM, int WN, bool PACKED>
const char* LaunchMma(const QlArgs& a, const int8_t* q, const float* s_x, ZeroOffset zero, int Kp,
                      cudaStream_t stream) {
  constexpr int bytes = kStages * StageLayout<BM, BN, PACKED>::kBytes;
  auto kernel = MmaKernel<T, BM, BN, WM, WN, PACKED>;
  // Above 48 KiB a kernel must opt in to its dynamic shared memory; once per instantiation, before any
  // capture (the first call of a session runs uncaptured).
  static const cudaError_t opted = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (opted != cudaSuccess) return cudaGetErrorString(opted);
  const dim3 grid(static_cast<unsigned>((a.N + BN - 1) / BN), static_cast<unsigned>((a.M + BM - 1) / BM));
  const bool pair_store = a.N % 2 == 0 && (reinterpret_cast<uintptr_t>(a.Y) % (2 * sizeof(T))) == 0;
  kernel<<<grid, Tile<BM, BN, WM, WN>::kThreads, bytes, stream>>>(
      q, s_x, a.B, static_cast<const T*>(a.w_scales), zero, static_cast<T*>(a.Y), static_cast<int>(a.M),
      static_cast<int>(a.N), Kp, static_cast<int>(a.row_bytes), pair_store);
  return nullptr;
}

template <typename T, bool PACKED>
const char* LaunchWgmma(const QlArgs& a, const int8_t* q, const float* s_x, ZeroOffset zero, int Kp,
                        cudaStream_t stream) {
  constexpr int bytes = WgLayout<PACKED>::kBytes;
  static const cudaError_t opted =
      cudaFuncSetAttribute(WgmmaKernel<T, PACKED>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (opted != cudaSuccess) return cudaGetErrorString(opted);
  const dim3 grid(static_cast<unsigned>((a.N + kWgBN - 1) / kWgBN), static_cast<unsigned>((a.M + kWgBM - 1) / kWgBM));
  const bool pair_store = a.N % 2 == 0 && (reinterpret_cast<uintptr_t>(a.Y) % (2 * sizeof(T))) == 0;
  WgmmaKernel<T, PACKED><<<grid, kWgThreads, bytes, stream>>>(
      q, s_x, a.B, static_cast<const T*>(a.w_scales), zero, static_cast<T*>(a.Y), static_cast<int>(a.M),
      static_cast<int>(a.N), Kp, static_cast<int>(a.row_bytes), pair_store);
  return nullptr;
}

template <typename T, bool PACKED>
const char* LaunchTyped(const QlArgs& a, QlKernel kernel, const int8_t* q, const float* s_x, ZeroOffset zero,
                        int Kp, cudaStream_t stream) {
  const int M = static_cast<int>(a.M), N = static_cast<int>(a.N), row_bytes = static_cast<int>(a.row_bytes);
  const T* ws = static_cast<const T*>(a.w_scales);
  T* Y = static_cast<T*>(a.Y);
  switch (kernel) {
    case QlKernel::kDecode: {
      const dim3 grid(static_cast<unsigned>((N + kDecodeWarps - 1) / kDecodeWarps));
      LaunchDependent(M == 1 ? DecodeKernel<T, PACKED, 1> : DecodeKernel<T, PACKED, kDecodeMaxM>, grid,
                      dim3(kDecodeWarps * 32), 0, stream, q, s_x, a.B, ws, zero, Y, M, N, Kp, row_bytes);
      return nullptr;
    }
    case QlKernel::kWgmma: return LaunchWgmma<T, PACKED>(a, q, s_x, zero, Kp, stream);
    case QlKernel::kMma256: return LaunchMma<T, 128, 256, 64, 64, PACKED>(a, q, s_x, zero, Kp, stream);
    case QlKernel::kMma128: return LaunchMma<T, 128, 128, 64, 64, PACKED>(a, q, s_x, zero, Kp, stream);
    case QlKernel::kMma128x64: return LaunchMma<T, 128, 64, 64, 32, PACKED>(a, q, s_x, zero, Kp, stream);
    case QlKernel::kMma64: return LaunchMma<T, 64, 64, 32, 32, PACKED>(a, q, s_x, zero, Kp, stream);
    default: {
      const dim3 grid(static_cast<unsigned>(N), static_cast<unsigned>((M + kGenericRows - 1) / kGenericRows));
      GenericKernel<T, PACKED><<<grid, kGenericThreads, 0, stream>>>(q, s_x, a.B, ws, zero, Y, M, N,
                                                                     static_cast<int>(a.K), Kp, row_bytes);
      return nullptr;
    }
  }
}

template <typename T>
const char* Launch(const QlArgs& a, QlKernel kernel, int8_t* q, float* s_x, int* q_sum, int* act_zero,
                   const CublasScratch& cublas, cudaStream_t stream) {
  const int Kp = static_cast<int>(PaddedK(a.K));
  const int abits = static_cast<int>(a.abits);
  const float floor_value = sizeof(T) == 2 ? __half2float(__float2half_rn(1e-5f)) : 1e-5f;
  const bool packed = a.wbits <= 4;
  // Evens-first codes for the kernels that split packed weights in registers; wgmma widens them in order, and so
  // does the widening pass before cublas.
  const bool widened = kernel == QlKernel::kWgmma || kernel == QlKernel::kCublas;
  const CodeOrder order = !packed || widened              ? CodeOrder::kNatural
                          : kernel == QlKernel::kTriton ? CodeOrder::kTritonRuns
                                                        : CodeOrder::kEvensFirst;
  const T* A = static_cast<const T*>(a.A);
  const bool vec = a.K % 8 == 0 && Aligned16(A);
  const dim3 grid(static_cast<unsigned>(a.M));
  const int K = static_cast<int>(a.K);
  int* sums = a.w_zero != nullptr ? q_sum : nullptr;
  int* zeros = a.w_sum != nullptr ? act_zero : nullptr;
  auto quantize = PickQuantize<T>(order, vec, Kp);
  LaunchDependent(quantize, grid, dim3(kQuantThreads), 0, stream, A, q, s_x, sums, zeros, K, Kp, abits, floor_value);
  const ZeroOffset zero{a.w_zero, sums, zeros, a.w_sum, K, a.K >= (1 << 15)};
  const int8_t* weights = a.B;
  if (packed && kernel == QlKernel::kCublas) {
    const size_t vectors = static_cast<size_t>(a.N) * a.K / 32;
    constexpr int kWidenThreads = 256;
    LaunchDependent(WidenPackedKernel, dim3(static_cast<unsigned>((vectors + kWidenThreads - 1) / kWidenThreads)),
                    dim3(kWidenThreads), 0, stream, reinterpret_cast<const uint4*>(a.B),
                    reinterpret_cast<uint4*>(cublas.wide), vectors);
    weights = cublas.wide;
  }
  if (kernel == QlKernel::kTriton) {
    TritonGemmArgs t = TritonArgs(a);
    t.q = q;
    t.B = weights;
    t.s_x = s_x;
    t.w_zero = a.w_zero;
    t.q_sum = sums;
    t.act_zero = zeros;
    t.w_sum = zeros != nullptr ? a.w_sum : nullptr;
    return LaunchTritonGemm(t, stream);
  }
  if (kernel == QlKernel::kCublas) {  // K == Kp (CublasFits): q is a dense [M, K]
    if (const char* error = CublasGemmInt8(q, weights, cublas.acc, static_cast<int>(a.M), static_cast<int>(a.N), K,
                                           stream, cublas.workspace, kLtWorkspaceBytes))
      return error;
    constexpr int kThreads = 128;
    const dim3 blocks(static_cast<unsigned>((a.N / 4 + kThreads - 1) / kThreads), static_cast<unsigned>(a.M));
    LaunchDependent(SumsEpilogueKernel<T>, blocks, dim3(kThreads), 0, stream,
                    reinterpret_cast<const int4*>(cublas.acc), s_x, static_cast<const T*>(a.w_scales), zero,
                    static_cast<T*>(a.Y), static_cast<int>(a.N));
    const cudaError_t status = cudaGetLastError();
    return status == cudaSuccess ? nullptr : cudaGetErrorString(status);
  }
  const char* error = packed ? LaunchTyped<T, true>(a, kernel, q, s_x, zero, Kp, stream)
                             : LaunchTyped<T, false>(a, kernel, q, s_x, zero, Kp, stream);
  if (error) return error;
  const cudaError_t status = cudaGetLastError();
  return status == cudaSuccess ? nullptr : cudaGetErrorString(status);
}

}  // namespace

void QuantLinearWarmUp() {
  WgmmaCompiled();
  TritonGemmAvailable();
}

// Codes, then s_x [M], the code sums [M] (used with w_zero), the tokens' zero points [M] (act_sym=0) and, for the
// cublas kernel, its int32 sums [M, N], (packed weights) the widened weights [N, K] and cuBLASLt's workspace.
size_t QuantLinearScratchBytes(const QlArgs& args, QlKernel kernel) {
  const QlKernel chosen = Pick(args, kernel);
  if (chosen == QlKernel::kCublas) return LtWorkspaceOffset(args) + kLtWorkspaceBytes;
  return RowArraysEnd(args);
}

const char* QuantLinearKernelProblem(const QlArgs& a, QlKernel kernel) {
  if (kernel == QlKernel::kAuto || kernel == QlKernel::kGeneric) return nullptr;
  if (!VectorRows(a)) return "needs rows of B that are whole 16-byte vectors (K % 16 == 0, or K % 32 in {0, 31} "
                             "for packed weights) and a 16-byte aligned B";
  if (kernel == QlKernel::kDecode && a.M > kDecodeMaxM) return "the decode kernel takes M <= 8";
  if (kernel == QlKernel::kCublas && !CublasFits(a))
    return "the cublas kernel needs K % 64 == 0, N % 4 == 0 and a 16-byte aligned output";
  if (kernel == QlKernel::kCublas && !CublasAvailable()) return "the cublas kernel needs libcublas, which could not be loaded";
  if (kernel == QlKernel::kTriton && !TritonFits(a))
    return "the triton kernel needs K % 128 == 0, K < 32768, N % 16 == 0 and a 16-byte aligned output";
  if (kernel == QlKernel::kTriton && !TritonGemmAvailable())
    return "the triton kernel needs a build with Triton installed (its sm_90a cubins) and a compute capability 9.0 GPU";
  if (kernel == QlKernel::kWgmma && !WgmmaCompiled())
    return "the wgmma kernel needs a build for sm_90a (EDGEQ_CUDA_ARCHS=90a) on a compute capability 9.0 GPU";
  return nullptr;
}

const char* QuantLinearKernelName(const QlArgs& args, QlKernel kernel) {
  switch (Pick(args, kernel)) {
    case QlKernel::kDecode: return "decode";
    case QlKernel::kWgmma: return "wgmma";
    case QlKernel::kMma256: return "mma256";
    case QlKernel::kMma128: return "mma128";
    case QlKernel::kMma128x64: return "mma128x64";
    case QlKernel::kMma64: return "mma64";
    case QlKernel::kCublas: return "cublas";
    case QlKernel::kTriton: return "triton";
    default: return "generic";
  }
}

const char* LaunchQuantLinear(const QlArgs& args, QlKernel kernel, void* stream, void* scratch) {
  if (args.M == 0 || args.N == 0) return nullptr;
  if (const char* problem = QuantLinearKernelProblem(args, kernel)) return problem;
  if (scratch == nullptr) return "QuantLinear needs scratch memory for the quantized activations";
  int8_t* q = static_cast<int8_t*>(scratch);
  float* s_x = reinterpret_cast<float*>(static_cast<char*>(scratch) + CodesBytes(args));
  int* q_sum = reinterpret_cast<int*>(s_x + args.M);
  int* act_zero = q_sum + args.M;
  const QlKernel chosen = Pick(args, kernel);
  CublasScratch cublas;
  if (chosen == QlKernel::kCublas) {
    char* base = static_cast<char*>(scratch);
    cublas.acc = reinterpret_cast<int*>(base + SumsOffset(args));
    cublas.wide = reinterpret_cast<int8_t*>(base + SumsOffset(args) + SumsBytes(args));
    cublas.workspace = base + LtWorkspaceOffset(args);
  }
  auto s = static_cast<cudaStream_t>(stream);
  return args.half ? Launch<__half>(args, chosen, q, s_x, q_sum, act_zero, cublas, s)
                   : Launch<float>(args, chosen, q, s_x, q_sum, act_zero, cublas, s);
}

}  // namespace cuda
}  // namespace edgeq
