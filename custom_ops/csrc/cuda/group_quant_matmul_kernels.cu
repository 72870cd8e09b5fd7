// CUDA kernels of edgeq::GroupQuantMatMul (layout: custom_ops/schema.py).
//
// Each row n of B is one little-endian bitstream of n_groups*group_size codes (groups are whole bytes and
// concatenated), so code k of row n sits at bit k*bits of the row whatever the group size.
//
// decode  (M <= 8, K % 128 == 0): a lane owns 128-code units of a row, which are exactly `bits` 16-byte loads
//         and hold whole groups; the loads bypass L1 (read once). Batch 1 streams rows through each warp with
//         the next unit's loads in flight during compute (DecodeStreamKernel); M = 2..8 gives each warp a
//         group of rows that share the activation loads (DecodeKernel).
//         Codes become floats by the exponent trick (0x4B000000 | code is 2^23 + code) instead of I2F, whose
//         throughput would cap the kernel below memory bandwidth.
// tiled   (M > 8): 64x64 output tiles; each 32-wide K step dequantizes a W tile into shared memory, then
//         half runs wmma (tensor cores, fp32 accumulation) and float runs fp32 FMA (float stays exact to 1e-5).
// gemm    (M > 8, the default there): dequantize W once into a scratch [N, K] of T, then one cuBLAS GEMM
//         (fp32 accumulation). libcublas is found at run time with dlopen (it is already loaded by ORT's
//         CUDA provider), so the library neither links it nor needs its headers at build time.
// generic (anything else): one block per row, per-code bit extraction; correct for every layout.
// decode-mma (float16, M <= 8, K % 128 == 0; the default there): the tensor-core decode shared with SpQRMatMul
//         (group_kernels.cuh, MmaDecodeKernel): codes dequantized two per instruction into half2, mma.sync with
//         fp32 accumulation, the zero points applied once per group through staged group sums of A.
// decode-h2 (float16, M <= 8, K % 128 == 0; the default at M = 1, 4 bits, K <= 4096): coalesced 16-code pieces,
//         codes and group statistics loaded before compute, half2 dequantization on the CUDA cores (below).
// generic, the dequantize kernel of gemm and decode-mma are the group-quantized linears' shared kernels
// (group_kernels.cuh) with GqmmWeights as the policy; cuBLAS is reached through cublas_gemm.h.
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <cstdint>

#include "cublas_gemm.h"
#include "group_kernels.cuh"
#include "group_quant_matmul_kernels.h"

namespace edgeq {
namespace cuda {
namespace {

// Eight consecutive activations as floats; p is 16-byte aligned.
__device__ __forceinline__ void Load8(const float* p, float* out) {
  const float4 a = __ldg(reinterpret_cast<const float4*>(p));
  const float4 b = __ldg(reinterpret_cast<const float4*>(p) + 1);
  out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w;
  out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
}

__device__ __forceinline__ void Load8(const __half* p, float* out) {
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

constexpr int kDecodeMaxM = 8;
constexpr int kDecodeWarps = 8;      // per block: (8 / ksplit) row groups, each served by ksplit warps
constexpr int kDecodeMaxSplit = 8;
constexpr int kUnitCodes = 128;

// Rows of W one warp decodes together: they share every activation load and conversion. Batch 1 takes 4
// (2 at 8 bits, whose units are twice the registers); larger batches keep registers for their M rows.
template <int BITS, int MAXM>
struct DecodeRows {
  static constexpr int value = MAXM > 1 ? 1 : (BITS == 8 ? 2 : 4);
};

// MAXM is the number of A rows the kernel is compiled for (1, or up to 8 with M checked at run time).
// Block: 8 warps = (8 / ksplit) groups of R rows; the ksplit warps of a group take interleaved 128-code units
// of K (so a long K still leaves each lane about one unit, all loads in flight at once) and meet in shared
// memory. ksplit is a power of two <= 8.
template <typename T, int BITS, int GS, int MAXM>
__global__ void __launch_bounds__(kDecodeWarps * 32, 2)
    DecodeKernel(const T* __restrict__ A, const uint8_t* __restrict__ B, const T* __restrict__ scales,
                 const uint8_t* __restrict__ zero_points, T* __restrict__ Y, int M, int N, int K, int n_groups,
                 int ksplit) {
  constexpr int R = DecodeRows<BITS, MAXM>::value;
  constexpr int kGroupsPerUnit = kUnitCodes / GS;
  __shared__ float partial[kDecodeMaxSplit][kDecodeWarps][R][MAXM];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int row_group = warp / ksplit, split = warp % ksplit;
  const int row_groups = kDecodeWarps / ksplit;
  const int n0 = (blockIdx.x * row_groups + row_group) * R;
  const int units = K / kUnitCodes;
  const size_t row_vectors = static_cast<size_t>(units) * BITS;  // 16-byte vectors per row of B

  float acc[R][MAXM];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < MAXM; ++m) acc[r][m] = 0.f;

  for (int u = lane + 32 * split; u < units; u += 32 * ksplit) {
    uint32_t w[R][4 * BITS];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const bool valid = n0 + r < N;
      const uint4* src = reinterpret_cast<const uint4*>(B) + (n0 + r) * row_vectors + u * BITS;
#pragma unroll
      for (int j = 0; j < BITS; ++j) {
        const uint4 v = valid ? LoadStreaming(src + j) : make_uint4(0u, 0u, 0u, 0u);
        w[r][4 * j] = v.x;
        w[r][4 * j + 1] = v.y;
        w[r][4 * j + 2] = v.z;
        w[r][4 * j + 3] = v.w;
      }
    }
#pragma unroll
    for (int g = 0; g < kGroupsPerUnit; ++g) {
      const int group = u * kGroupsPerUnit + g;
      float scale[R], bias[R], part[R][MAXM];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const size_t at = static_cast<size_t>(n0 + r < N ? n0 + r : 0) * n_groups + group;
        scale[r] = ToFloat(scales[at]);
        // 2^23 + zp: removes the exponent trick's offset and the zero point in one subtraction.
        bias[r] = 8388608.f + (zero_points ? float(zero_points[at]) : float(1 << (BITS - 1)));
#pragma unroll
        for (int m = 0; m < MAXM; ++m) part[r][m] = 0.f;
      }
#pragma unroll
      for (int c = 0; c < GS; c += 8) {
        const int k = u * kUnitCodes + g * GS + c;
        float a[MAXM][8];
#pragma unroll
        for (int m = 0; m < MAXM; ++m)
          if (m < M) Load8(A + static_cast<size_t>(m) * K + k, a[m]);
#pragma unroll
        for (int r = 0; r < R; ++r) {
#pragma unroll
          for (int i = 0; i < 8; ++i) {
            const float wv = __uint_as_float(0x4B000000u | CodeAt<BITS>(w[r], (g * GS + c + i) * BITS)) - bias[r];
#pragma unroll
            for (int m = 0; m < MAXM; ++m)
              if (m < M) part[r][m] = fmaf(a[m][i], wv, part[r][m]);
          }
        }
      }
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < MAXM; ++m) acc[r][m] = fmaf(scale[r], part[r][m], acc[r][m]);
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < MAXM; ++m) {
      float v = acc[r][m];
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
      if (lane == 0) partial[split][row_group][r][m] = v;
    }
  __syncthreads();
  // One thread per (row group, row, m) adds the ksplit partial sums in a fixed order (deterministic).
  for (int idx = threadIdx.x; idx < row_groups * R * MAXM; idx += blockDim.x) {
    const int m = idx % MAXM, r = (idx / MAXM) % R, rg = idx / (MAXM * R);
    const int n = (blockIdx.x * row_groups + rg) * R + r;
    if (m >= M || n >= N) continue;
    float v = 0.f;
    for (int s = 0; s < ksplit; ++s) v += partial[s][rg][r][m];
    Y[static_cast<size_t>(m) * N + n] = FromFloat<T>(v);
  }
}

// Batch-1 decode as a stream: each warp walks its rows (grid-stride) as a sequence of items, one 128-code unit
// per lane, and loads item t+1 (codes, scales, zero points) into a second set of registers before computing
// item t, so the memory system always has the next weights in flight while the SM computes. The grid is sized
// to the SMs. A is converted to float once per block into shared memory.
constexpr int kStreamWarps = 8;

template <int BITS, int GS>
struct StreamItem {
  static constexpr int kGroups = kUnitCodes / GS;
  uint32_t w[4 * BITS];
  float scale[kGroups];
  float bias[kGroups];
};

template <typename T, int BITS, int GS>
__device__ __forceinline__ void LoadItem(StreamItem<BITS, GS>& item, const uint8_t* __restrict__ B,
                                         const T* __restrict__ scales, const uint8_t* __restrict__ zero_points,
                                         int row, int unit, int units, int n_groups) {
  constexpr int kGroups = StreamItem<BITS, GS>::kGroups;
  if (unit < units) {
    const uint4* src = reinterpret_cast<const uint4*>(B) + (static_cast<size_t>(row) * units + unit) * BITS;
#pragma unroll
    for (int j = 0; j < BITS; ++j) {
      const uint4 v = LoadStreaming(src + j);
      item.w[4 * j] = v.x;
      item.w[4 * j + 1] = v.y;
      item.w[4 * j + 2] = v.z;
      item.w[4 * j + 3] = v.w;
    }
#pragma unroll
    for (int g = 0; g < kGroups; ++g) {
      const size_t at = static_cast<size_t>(row) * n_groups + unit * kGroups + g;
      item.scale[g] = ToFloat(scales[at]);
      item.bias[g] = 8388608.f + (zero_points ? float(zero_points[at]) : float(1 << (BITS - 1)));
    }
  } else {
    // Past the row's end: contribute exactly zero (scale 0) without touching memory.
#pragma unroll
    for (int j = 0; j < 4 * BITS; ++j) item.w[j] = 0u;
#pragma unroll
    for (int g = 0; g < kGroups; ++g) {
      item.scale[g] = 0.f;
      item.bias[g] = 8388608.f;
    }
  }
}

template <typename T, int BITS, int GS>
__global__ void __launch_bounds__(kStreamWarps * 32, 2)
    DecodeStreamKernel(const T* __restrict__ A, const uint8_t* __restrict__ B, const T* __restrict__ scales,
                       const uint8_t* __restrict__ zero_points, T* __restrict__ Y, int N, int K, int n_groups) {
  // A as float4s, the low 3 bits of each index XORed with its unit: the 8 lanes of a shared-memory phase read
  // the same offset of 8 different units, which would otherwise all fall in one bank group.
  extern __shared__ float4 a_shared4[];
  for (int q = threadIdx.x; q < K / 4; q += blockDim.x) {
    const int k = 4 * q;
    a_shared4[q ^ ((q >> 5) & 7)] = make_float4(ToFloat(A[k]), ToFloat(A[k + 1]), ToFloat(A[k + 2]), ToFloat(A[k + 3]));
  }
  __syncthreads();

  constexpr int kGroups = StreamItem<BITS, GS>::kGroups;
  const int lane = threadIdx.x & 31;
  const int first_row = blockIdx.x * kStreamWarps + (threadIdx.x >> 5);
  const int row_stride = gridDim.x * kStreamWarps;
  const int units = K / kUnitCodes;
  const int steps = (units + 31) / 32;
  const int rows = first_row < N ? (N - first_row + row_stride - 1) / row_stride : 0;
  const int items = rows * steps;

  StreamItem<BITS, GS> cur, next;
  if (items > 0) LoadItem<T, BITS, GS>(cur, B, scales, zero_points, first_row, lane, units, n_groups);
  float acc = 0.f;
  for (int t = 0; t < items; ++t) {
    const int row = first_row + (t / steps) * row_stride, step = t % steps;
    if (t + 1 < items) {
      const int next_row = first_row + ((t + 1) / steps) * row_stride, next_step = (t + 1) % steps;
      LoadItem<T, BITS, GS>(next, B, scales, zero_points, next_row, next_step * 32 + lane, units, n_groups);
    }
    const int unit = step * 32 + lane;
    if (unit < units) {
      const int base = unit * (kUnitCodes / 4), swizzle = unit & 7;
#pragma unroll
      for (int g = 0; g < kGroups; ++g) {
        float part[4] = {0.f, 0.f, 0.f, 0.f};  // four chains, so FMA latency does not serialize the group
#pragma unroll
        for (int c = 0; c < GS; c += 4) {
          const float4 av = a_shared4[(base + (g * GS + c) / 4) ^ swizzle];
          const float af[4] = {av.x, av.y, av.z, av.w};
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const float wv = __uint_as_float(0x4B000000u | CodeAt<BITS>(cur.w, (g * GS + c + i) * BITS)) - cur.bias[g];
            part[i] = fmaf(af[i], wv, part[i]);
          }
        }
        acc = fmaf(cur.scale[g], (part[0] + part[1]) + (part[2] + part[3]), acc);
      }
    }
    if (step == steps - 1) {
      float v = acc;
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
      if (lane == 0) Y[row] = FromFloat<T>(v);
      acc = 0.f;
    }
    cur = next;
  }
}

// decode-h2 (float16, M <= 8, K % 128 == 0): batch-1 GEMV with every global load coalesced. A lane owns pieces
// of 16 codes (3 bits: 32 codes, three whole words), pieces lane, lane + 32, ... of a step, so the 32 lanes of a
// warp read consecutive words of a row (and consecutive activations): a warp instruction touches 256-512
// contiguous bytes instead of one line per lane. All the step's code loads and group statistics are issued
// before any compute, R rows (4 at 3/4 bits) share the activation loads and pairings, and ksplit warps share
// long rows. Dequantization in registers: per pair of codes one shift (or funnel shift) and one lop3 into a half2
// with the 0x6400 exponent, one HFMA2 that leaves c - z exactly, one HMUL2 with the group's scale (the rounding
// of a dequantized fp16 weight, as a dense fp16 GEMM has), one HFMA2 with the activations into two chains; a
// 16-code block's half2 sums (at most 8 products per half) go to fp32. A batch of M runs M grid rows
// (blockIdx.y = token), each reading W again (mostly from L2).

template <int BITS>
struct Half2Layout {
  static constexpr bool kTriple = BITS == 3;                   // 3 bits: pieces of 32 codes in 3 words
  static constexpr int kPieceCodes = kTriple ? 32 : 16;
  static constexpr int kPieceWords = kPieceCodes * BITS / 32;
  static constexpr int kWordsHeld = kPieceWords + (kTriple ? 1 : 0);  // a zero word past the piece for funnel shifts
};

// Code pair q (0..7) of 16-code block b of a piece, as (1024 + c_i 2^tl, 1024 + c_j 2^th) (MmaPairs' order).
template <int BITS>
__device__ __forceinline__ uint32_t PiecePair(const uint32_t* w, int b, int q) {
  using P = MmaPairs<BITS>;
  if constexpr (BITS == 3) {
    return AndOr(MmaPairBits<3>(w, b, q), P::Mask(q), 0x64006400u);
  } else {
    const int bit = BITS * (16 * b + P::First(q));  // both codes of the pair sit in this bit's word
    return AndOr(w[bit >> 5] >> (bit & 31), P::Mask(q), 0x64006400u);
  }
}

// The half2 of activations (x[i], x[i + kD]) that meets code pair q of a 16-code block (MmaPairs' order), from
// the block's 16 activations as 8 words of half2.
template <int BITS>
__device__ __forceinline__ uint32_t ActivationPair(const uint32_t* x, int q) {
  using P = MmaPairs<BITS>;
  const int i = P::First(q), j = i + P::kD;
  const uint32_t select = (i & 1 ? 0x32u : 0x10u) | (j & 1 ? 0x7600u : 0x5400u);
  return __byte_perm(x[i >> 1], x[j >> 1], select);
}

// The codes of one step of rows n0..n0+R-1 for this lane: pieces s * 32 V + 32 v + lane (zero past the row
// or past N).
template <int BITS, int R, int V>
struct Half2Step {
  using L = Half2Layout<BITS>;
  static constexpr int kBlocks = L::kPieceCodes / 16;
  uint32_t w[R][V][L::kWordsHeld];
  __half scale[R][V][kBlocks];  // of each 16-code block's group, loaded with the codes so that
  uint8_t zero[R][V][kBlocks];  // their latency overlaps (they were the compute's main stall)

  __device__ __forceinline__ void Load(const uint8_t* __restrict__ B, const __half* __restrict__ scales,
                                       const uint8_t* __restrict__ zero_points, int n0, int N, int s, int lane,
                                       int row_pieces, int n_groups, int group_shift) {
    const int row_words = row_pieces * L::kPieceWords;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const bool row_ok = n0 + r < N;
      const uint32_t* row = reinterpret_cast<const uint32_t*>(B) + static_cast<size_t>(row_ok ? n0 + r : 0) * row_words;
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const int j = s * 32 * V + 32 * v + lane;
        const bool ok = row_ok && j < row_pieces;
        const uint32_t* src = row + static_cast<size_t>(j) * L::kPieceWords;
        if constexpr (L::kPieceWords == 4) {
          const uint4 x = ok ? LoadStreaming(reinterpret_cast<const uint4*>(src)) : make_uint4(0u, 0u, 0u, 0u);
          w[r][v][0] = x.x; w[r][v][1] = x.y; w[r][v][2] = x.z; w[r][v][3] = x.w;
        } else if constexpr (L::kPieceWords == 2) {
          const uint2 x = ok ? LoadStreaming2(reinterpret_cast<const uint2*>(src)) : make_uint2(0u, 0u);
          w[r][v][0] = x.x; w[r][v][1] = x.y;
        } else {
#pragma unroll
          for (int t = 0; t < L::kPieceWords; ++t) w[r][v][t] = ok ? LoadStreaming1(src + t) : 0u;
        }
#pragma unroll
        for (int t = L::kPieceWords; t < L::kWordsHeld; ++t) w[r][v][t] = 0u;
#pragma unroll
        for (int b = 0; b < kBlocks; ++b) {
          const int group = (ok ? j * L::kPieceCodes + 16 * b : 0) >> group_shift;
          const size_t at = static_cast<size_t>(row_ok ? n0 + r : 0) * n_groups + group;
          scale[r][v][b] = scales[at];
          zero[r][v][b] = zero_points ? zero_points[at] : uint8_t(1u << (BITS - 1));
        }
      }
    }
  }

  // acc[r] += the step's dot products of rows n0 + r with A.
  __device__ __forceinline__ void Compute(const __half* __restrict__ A, int s, int lane, int row_pieces,
                                          float* acc) const {
    using P = MmaPairs<BITS>;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const int j = s * 32 * V + 32 * v + lane;
      if (j >= row_pieces) continue;
#pragma unroll
      for (int b = 0; b < kBlocks; ++b) {
        const int k = j * L::kPieceCodes + 16 * b;
        const uint4* xs = reinterpret_cast<const uint4*>(A + k);
        const uint4 lo = __ldg(xs), hi = __ldg(xs + 1);
        const uint32_t x[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
        uint32_t xp[8];
#pragma unroll
        for (int q = 0; q < 8; ++q) xp[q] = ActivationPair<BITS>(x, q);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const __half2 scale2 = __half2half2(scale[r][v][b]);
          const float zp = float(zero[r][v][b]);
          // (1024 + c 2^t) 2^-t - 1024 2^-t - z = c - z, t per half of pair q: exact in fp16 up to 8 bits.
          __half2 unit_mul[2], offset[2];
#pragma unroll
          for (int t = 0; t < 2; ++t) {
            unit_mul[t] = __floats2half2_rn(1.f / float(1 << P::Low(t)), 1.f / float(1 << P::High(t)));
            offset[t] = __floats2half2_rn(-1024.f / float(1 << P::Low(t)) - zp, -1024.f / float(1 << P::High(t)) - zp);
          }
          __half2 sums[2] = {__float2half2_rn(0.f), __float2half2_rn(0.f)};  // two chains: half the latency
#pragma unroll
          for (int q = 0; q < 8; ++q) {
            const __half2 c_minus_z = __hfma2(BitsToHalf2(PiecePair<BITS>(w[r][v], b, q)), unit_mul[q & 1], offset[q & 1]);
            sums[q & 1] = __hfma2(__hmul2(c_minus_z, scale2), BitsToHalf2(xp[q]), sums[q & 1]);
          }
          const float2 f = __half22float2(__hadd2(sums[0], sums[1]));
          acc[r] += f.x + f.y;
        }
      }
    }
  }
};

// group_shift: log2 of the group size (16..128; a 16-code block lies in one group). Block: 8 warps = (8 / ksplit)
// row groups of R rows, each served by ksplit warps taking interleaved steps, meeting in shared memory.
// w.prefetch: the block asks L2 for its rows before PdlWait (pdl.cuh; the launcher sets it when the grid is one wave).
template <int BITS, int R, int V, int MINB>
__global__ void __launch_bounds__(kDecodeWarps * 32, MINB)
    DecodeHalf2Kernel(const __half* __restrict__ A, const GqmmWeights<__half> w, __half* __restrict__ Y, int N, int K,
                      int group_shift, int ksplit) {
  using L = Half2Layout<BITS>;
  const int row_groups = kDecodeWarps / ksplit, tile_rows = row_groups * R;
  if (w.prefetch && blockIdx.y == 0)  // the blocks of A's first row fetch the weights for all
    w.PrefetchRows(blockIdx.x * tile_rows, min(tile_rows, N - blockIdx.x * tile_rows), threadIdx.x, blockDim.x);
  PdlWait();
  PdlRelease();
  A += static_cast<size_t>(blockIdx.y) * K;
  Y += static_cast<size_t>(blockIdx.y) * N;
  __shared__ float partial[kDecodeMaxSplit][kDecodeWarps][R];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int row_group = warp / ksplit, split = warp % ksplit;
  const int n0 = (blockIdx.x * row_groups + row_group) * R;
  const int row_pieces = K / L::kPieceCodes;
  const int steps = (row_pieces + 32 * V - 1) / (32 * V);

  float acc[R] = {};
  for (int s = split; s < steps; s += ksplit) {
    Half2Step<BITS, R, V> step;
    step.Load(w.codes, w.scales, w.zero_points, n0, N, s, lane, row_pieces, w.n_groups, group_shift);
    step.Compute(A, s, lane, row_pieces, acc);
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const float v = WarpSum(acc[r]);
    if (lane == 0) partial[split][row_group][r] = v;
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < tile_rows; idx += blockDim.x) {
    const int r = idx % R, rg = idx / R;
    const int n = (blockIdx.x * row_groups + rg) * R + r;
    if (n >= N) continue;
    float v = 0.f;
    for (int s = 0; s < ksplit; ++s) v += partial[s][rg][r];
    Y[n] = __float2half_rn(v);
  }
}

constexpr int kTileM = 64, kTileN = 64, kTileK = 32, kTileThreads = 128;

template <typename T>
struct TileLayout {
  // Row pitch of the A and W tiles in elements: wmma wants a multiple of 8 halves (16 bytes); the float path
  // pads by one word so that the 8 rows one warp reads fall in different banks.
  static constexpr int kLd = kTileK + (std::is_same<T, __half>::value ? 8 : 1);
  static constexpr int kLdC = kTileN + 4;
  static constexpr size_t kOperandBytes = 2 * kTileM * kLd * sizeof(T);
  static constexpr size_t kEpilogueBytes = std::is_same<T, __half>::value ? kTileM * kLdC * sizeof(float) : 0;
  static constexpr size_t kBytes = kOperandBytes > kEpilogueBytes ? kOperandBytes : kEpilogueBytes;
};

template <typename T, int BITS>
__global__ void __launch_bounds__(kTileThreads)
    TiledKernel(const T* __restrict__ A, const uint8_t* __restrict__ B, const T* __restrict__ scales,
                const uint8_t* __restrict__ zero_points, T* __restrict__ Y, int M, int N, int K, int group_size,
                int n_groups) {
  using L = TileLayout<T>;
  constexpr int kLd = L::kLd;
  constexpr int kGroupBytesPer16 = 2 * BITS;  // 16 codes
  __shared__ __align__(128) unsigned char smem[L::kBytes];
  T* As = reinterpret_cast<T*>(smem);
  T* Ws = As + kTileM * kLd;

  const int tid = threadIdx.x;
  const int m_block = blockIdx.y * kTileM, n_block = blockIdx.x * kTileN;
  const int padded_k = n_groups * group_size;
  const size_t row_bytes = static_cast<size_t>(n_groups) * group_size * BITS / 8;
  const float default_zp = float(1 << (BITS - 1));
  // Each thread stages 16 consecutive elements of one tile row: row tid/2, columns (tid%2)*16 ...
  const int stage_row = tid >> 1, stage_col = (tid & 1) * 16;

  constexpr bool kHalf = std::is_same<T, __half>::value;
  const int warp = tid >> 5;
  const int warp_m = (warp >> 1) * 32, warp_n = (warp & 1) * 32;
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> frag_c[2][2];
  float acc[4][8];
  const int ty = tid >> 3, tx = tid & 7;  // float path: rows ty*4.., columns tx*8..
  if constexpr (kHalf) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) nvcuda::wmma::fill_fragment(frag_c[i][j], 0.f);
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;
  }

  for (int k0 = 0; k0 < K; k0 += kTileK) {
    {
      const int m = m_block + stage_row;
      const T* src = A + static_cast<size_t>(m) * K;
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        const int k = k0 + stage_col + i;
        As[stage_row * kLd + stage_col + i] = (m < M && k < K) ? src[k] : FromFloat<T>(0.f);
      }
    }
    {
      const int n = n_block + stage_row;
      const int k = k0 + stage_col;  // a multiple of 16, so the 16 codes start on a byte and share one group
      T* dst = Ws + stage_row * kLd + stage_col;
      if (n < N && k < padded_k) {
        const uint8_t* src = B + n * row_bytes + static_cast<size_t>(k) * BITS / 8;
        uint32_t w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
        for (int b = 0; b < kGroupBytesPer16; ++b) w[b >> 2] |= uint32_t(src[b]) << (8 * (b & 3));
        const int group = k / group_size;
        const float scale = ToFloat(scales[static_cast<size_t>(n) * n_groups + group]);
        const float zp = zero_points ? float(zero_points[static_cast<size_t>(n) * n_groups + group]) : default_zp;
#pragma unroll
        for (int i = 0; i < 16; ++i) dst[i] = FromFloat<T>(scale * (float(CodeAt<BITS>(w, i * BITS)) - zp));
      } else {
#pragma unroll
        for (int i = 0; i < 16; ++i) dst[i] = FromFloat<T>(0.f);
      }
    }
    __syncthreads();
    if constexpr (kHalf) {
#pragma unroll
      for (int kk = 0; kk < kTileK; kk += 16) {
        nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __half, nvcuda::wmma::row_major> fa[2];
        nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, __half, nvcuda::wmma::col_major> fb[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) nvcuda::wmma::load_matrix_sync(fa[i], As + (warp_m + 16 * i) * kLd + kk, kLd);
        // W is stored [n][k]: as the K x N operand that is column-major with pitch kLd.
#pragma unroll
        for (int j = 0; j < 2; ++j) nvcuda::wmma::load_matrix_sync(fb[j], Ws + (warp_n + 16 * j) * kLd + kk, kLd);
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < 2; ++j) nvcuda::wmma::mma_sync(frag_c[i][j], fa[i], fb[j], frag_c[i][j]);
      }
    } else {
#pragma unroll 8
      for (int kk = 0; kk < kTileK; ++kk) {
        float a[4], b[8];
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = ToFloat(As[(ty * 4 + i) * kLd + kk]);
#pragma unroll
        for (int j = 0; j < 8; ++j) b[j] = ToFloat(Ws[(tx * 8 + j) * kLd + kk]);
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      }
    }
    __syncthreads();
  }

  if constexpr (kHalf) {
    // The accumulators' element order is opaque: go through shared memory (free again after the last barrier).
    float* Cs = reinterpret_cast<float*>(smem);
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        nvcuda::wmma::store_matrix_sync(Cs + (warp_m + 16 * i) * L::kLdC + warp_n + 16 * j, frag_c[i][j], L::kLdC,
                                        nvcuda::wmma::mem_row_major);
    __syncthreads();
    for (int idx = tid; idx < kTileM * kTileN; idx += kTileThreads) {
      const int r = idx / kTileN, c = idx % kTileN;
      const int m = m_block + r, n = n_block + c;
      if (m < M && n < N) Y[static_cast<size_t>(m) * N + n] = FromFloat<T>(Cs[r * L::kLdC + c]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int m = m_block + ty * 4 + i;
      if (m >= M) continue;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int n = n_block + tx * 8 + j;
        if (n < N) Y[static_cast<size_t>(m) * N + n] = FromFloat<T>(acc[i][j]);
      }
    }
  }
}

template <typename T>
GqmmWeights<T> Weights(const GqmmArgs& a) {
  GqmmWeights<T> w;
  w.codes = a.B;
  w.row_bytes = a.n_groups * a.group_bytes;
  w.scales = static_cast<const T*>(a.scales);
  w.zero_points = a.zero_points;
  w.n_groups = static_cast<int>(a.n_groups);
  w.group_size = static_cast<int>(a.group_size);
  w.bits = static_cast<int>(a.bits);
  return w;
}

bool DecodeFits(const GqmmArgs& a) {
  return a.M <= kDecodeMaxM && a.K % kUnitCodes == 0 && Aligned16(a.A) && Aligned16(a.B);
}

GqmmKernel Pick(const GqmmArgs& a, GqmmKernel requested) {
  if (requested != GqmmKernel::kAuto) return requested;
  // Measured on the H200 (BENCHMARKS.md): the coalesced half2 decode beats decode-mma at batch 1, 4 bits, for
  // K <= 4096 (4096x4096 6.3 vs 7.8 us, 4096x11008 14.5 vs 18.0 us) but not at K = 11008 (17.2 vs 15.8 us).
  if (a.half && a.M == 1 && a.bits == 4 && a.K <= 4096 && DecodeFits(a)) return GqmmKernel::kDecodeHalf2;
  if (MmaDecodeFits(a.half, a.M, a.K, a.A, Weights<__half>(a))) return GqmmKernel::kDecodeMma;
  if (DecodeFits(a)) return GqmmKernel::kDecode;
  if (a.M > kDecodeMaxM) return CublasAvailable() ? GqmmKernel::kGemm : GqmmKernel::kTiled;
  return GqmmKernel::kGeneric;
}

template <typename T, int BITS, int GS, int MAXM>
void LaunchDecodeRows(const GqmmArgs& a, cudaStream_t stream) {
  constexpr int R = DecodeRows<BITS, MAXM>::value;
  const int units = static_cast<int>(a.K / kUnitCodes);
  int ksplit = 1;
  while (ksplit < kDecodeMaxSplit && 32 * ksplit < units) ksplit *= 2;
  const int rows_per_block = (kDecodeWarps / ksplit) * R;
  const dim3 grid(static_cast<unsigned>((a.N + rows_per_block - 1) / rows_per_block));
  DecodeKernel<T, BITS, GS, MAXM><<<grid, kDecodeWarps * 32, 0, stream>>>(
      static_cast<const T*>(a.A), a.B, static_cast<const T*>(a.scales), a.zero_points, static_cast<T*>(a.Y),
      static_cast<int>(a.M), static_cast<int>(a.N), static_cast<int>(a.K), static_cast<int>(a.n_groups), ksplit);
}

template <int BITS, int R, int V, int MINB>
void LaunchDecodeHalf2(const GqmmArgs& a, cudaStream_t stream) {
  using L = Half2Layout<BITS>;
  const int64_t steps = (a.K / L::kPieceCodes + 32 * V - 1) / (32 * V);
  int ksplit = 1;
  while (ksplit < kDecodeMaxSplit && ksplit < steps) ksplit *= 2;
  int group_shift = 0;
  while ((int64_t{1} << group_shift) < a.group_size) ++group_shift;
  const int rows_per_block = (kDecodeWarps / ksplit) * R;
  const int64_t tiles = (a.N + rows_per_block - 1) / rows_per_block;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(a.M));
  GqmmWeights<__half> w = Weights<__half>(a);
  w.prefetch = PrefetchPays(tiles, MINB);
  LaunchDependent(DecodeHalf2Kernel<BITS, R, V, MINB>, grid, dim3(kDecodeWarps * 32), 0, stream,
                  static_cast<const __half*>(a.A), w, static_cast<__half*>(a.Y), static_cast<int>(a.N),
                  static_cast<int>(a.K), group_shift, ksplit);
}

void LaunchDecodeHalf2Bits(const GqmmArgs& a, cudaStream_t stream) {
  switch (a.bits) {
    // <BITS, rows per warp R, pieces per lane and step V, blocks per SM>: 3 and 4 bits take 4 rows sharing each
    // activation load and 24-32 bytes of each row per lane and step (the fastest of five (R, V, blocks) variants
    // timed on the H200; BENCHMARKS.md); 2 and 8 bits keep 2 rows with 32-64 bytes.
    case 2: return LaunchDecodeHalf2<2, 2, 8, 2>(a, stream);
    case 3: return LaunchDecodeHalf2<3, 4, 2, 2>(a, stream);
    case 4: return LaunchDecodeHalf2<4, 4, 4, 2>(a, stream);
    default: return LaunchDecodeHalf2<8, 2, 4, 2>(a, stream);
  }
}

template <typename T, int BITS, int GS>
bool LaunchDecodeStream(const GqmmArgs& a, cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(a.K) * sizeof(float);
  constexpr size_t kMaxSmem = 160 * 1024;  // leaves room for two blocks per SM on sm_80 and sm_90
  if (smem > kMaxSmem) return false;
  static bool attribute_set = false;  // per instantiation
  if (!attribute_set) {
    cudaFuncSetAttribute(DecodeStreamKernel<T, BITS, GS>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         static_cast<int>(kMaxSmem));
    attribute_set = true;
  }
  const int max_blocks = 2 * MultiprocessorCount();
  const int blocks = static_cast<int>(std::min<int64_t>(max_blocks, (a.N + kStreamWarps - 1) / kStreamWarps));
  DecodeStreamKernel<T, BITS, GS><<<blocks, kStreamWarps * 32, smem, stream>>>(
      static_cast<const T*>(a.A), a.B, static_cast<const T*>(a.scales), a.zero_points, static_cast<T*>(a.Y),
      static_cast<int>(a.N), static_cast<int>(a.K), static_cast<int>(a.n_groups));
  return true;
}

template <typename T, int BITS, int GS>
void LaunchDecode(const GqmmArgs& a, cudaStream_t stream, bool rows_only) {
  if (a.M == 1 && !rows_only && LaunchDecodeStream<T, BITS, GS>(a, stream)) return;
  if (a.M == 1) LaunchDecodeRows<T, BITS, GS, 1>(a, stream);
  else LaunchDecodeRows<T, BITS, GS, kDecodeMaxM>(a, stream);
}

template <typename T, int BITS>
void LaunchDecodeGroups(const GqmmArgs& a, cudaStream_t stream, bool rows_only) {
  switch (a.group_size) {
    case 16: return LaunchDecode<T, BITS, 16>(a, stream, rows_only);
    case 32: return LaunchDecode<T, BITS, 32>(a, stream, rows_only);
    case 64: return LaunchDecode<T, BITS, 64>(a, stream, rows_only);
    default: return LaunchDecode<T, BITS, 128>(a, stream, rows_only);
  }
}

template <typename T, int BITS>
void LaunchTiled(const GqmmArgs& a, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((a.N + kTileN - 1) / kTileN), static_cast<unsigned>((a.M + kTileM - 1) / kTileM));
  TiledKernel<T, BITS><<<grid, kTileThreads, 0, stream>>>(
      static_cast<const T*>(a.A), a.B, static_cast<const T*>(a.scales), a.zero_points, static_cast<T*>(a.Y),
      static_cast<int>(a.M), static_cast<int>(a.N), static_cast<int>(a.K), static_cast<int>(a.group_size),
      static_cast<int>(a.n_groups));
}

template <typename T>
void LaunchTyped(const GqmmArgs& a, GqmmKernel kernel, cudaStream_t stream) {
  switch (kernel) {
    case GqmmKernel::kDecode:
    case GqmmKernel::kDecodeRows: {
      const bool rows_only = kernel == GqmmKernel::kDecodeRows;
      switch (a.bits) {
        case 2: return LaunchDecodeGroups<T, 2>(a, stream, rows_only);
        case 3: return LaunchDecodeGroups<T, 3>(a, stream, rows_only);
        case 4: return LaunchDecodeGroups<T, 4>(a, stream, rows_only);
        default: return LaunchDecodeGroups<T, 8>(a, stream, rows_only);
      }
    }
    case GqmmKernel::kTiled:
      switch (a.bits) {
        case 2: return LaunchTiled<T, 2>(a, stream);
        case 3: return LaunchTiled<T, 3>(a, stream);
        case 4: return LaunchTiled<T, 4>(a, stream);
        default: return LaunchTiled<T, 8>(a, stream);
      }
    default:  // kGemm and kDecodeMma are launched by LaunchGroupQuantMatMul
      return LaunchGeneric(static_cast<const T*>(a.A), Weights<T>(a), static_cast<T*>(a.Y), a.M, a.N, a.K, stream);
  }
}

}  // namespace

const char* GroupQuantMatMulKernelName(const GqmmArgs& args, GqmmKernel kernel) {
  switch (Pick(args, kernel)) {
    case GqmmKernel::kDecode: return "decode";
    case GqmmKernel::kDecodeRows: return "decode-rows";
    case GqmmKernel::kDecodeMma: return "decode-mma";
    case GqmmKernel::kDecodeHalf2: return "decode-h2";
    case GqmmKernel::kTiled: return "tiled";
    case GqmmKernel::kGemm: return "gemm";
    default: return "generic";
  }
}

const char* GroupQuantMatMulRefusal(const GqmmArgs& args, GqmmKernel kernel) {
  const GqmmKernel chosen = Pick(args, kernel);
  if ((chosen == GqmmKernel::kDecode || chosen == GqmmKernel::kDecodeRows) && !DecodeFits(args))
    return "needs M <= 8, K % 128 == 0 and 16-byte aligned A and B";
  if (chosen == GqmmKernel::kDecodeMma && !MmaDecodeFits(args.half, args.M, args.K, args.A, Weights<__half>(args)))
    return "needs float16, M <= 8, K % 128 == 0 and 16-byte aligned A and B";
  if (chosen == GqmmKernel::kDecodeHalf2 && !(args.half && DecodeFits(args)))
    return "needs float16, M <= 8, K % 128 == 0 and 16-byte aligned A and B";
  if (chosen == GqmmKernel::kGemm && !CublasAvailable()) return "needs libcublas, which could not be loaded";
  return nullptr;
}

size_t GroupQuantMatMulScratchBytes(const GqmmArgs& args, GqmmKernel kernel) {
  if (Pick(args, kernel) != GqmmKernel::kGemm) return 0;
  return static_cast<size_t>(args.N) * args.K * (args.half ? 2 : 4);
}

const char* LaunchGroupQuantMatMul(const GqmmArgs& args, GqmmKernel kernel, void* stream, void* scratch) {
  if (args.M == 0 || args.N == 0) return nullptr;
  if (const char* refusal = GroupQuantMatMulRefusal(args, kernel)) return refusal;
  const GqmmKernel chosen = Pick(args, kernel);
  auto s = static_cast<cudaStream_t>(stream);
  if (chosen == GqmmKernel::kGemm) {
    if (scratch == nullptr) return "the gemm kernel needs scratch memory";
    if (args.half) LaunchDequantize(Weights<__half>(args), static_cast<__half*>(scratch), args.N, args.K, false, s);
    else LaunchDequantize(Weights<float>(args), static_cast<float*>(scratch), args.N, args.K, false, s);
    const cudaError_t status = cudaGetLastError();
    if (status != cudaSuccess) return cudaGetErrorString(status);
    return CublasGemm(args.half, args.A, scratch, args.Y, static_cast<int>(args.M), static_cast<int>(args.N),
                      static_cast<int>(args.K), stream);
  }
  if (chosen == GqmmKernel::kDecodeMma) {
    LaunchMmaDecode(static_cast<const __half*>(args.A), Weights<__half>(args), static_cast<__half*>(args.Y), args.M,
                    args.N, args.K, s);
  } else if (chosen == GqmmKernel::kDecodeHalf2) {
    LaunchDecodeHalf2Bits(args, s);
  } else if (args.half) {
    LaunchTyped<__half>(args, chosen, s);
  } else {
    LaunchTyped<float>(args, chosen, s);
  }
  const cudaError_t status = cudaGetLastError();
  return status == cudaSuccess ? nullptr : cudaGetErrorString(status);
}

}  // namespace cuda
}  // namespace edgeq
