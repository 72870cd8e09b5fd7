// Kernels shared by the group-quantized linears, GroupQuantMatMul and SpQRMatMul. Both store W as per-row
// bitstreams of `bits`-wide codes (code k of row n at bit k*bits of the row, rows of row_bytes bytes) with one
// (scale s, zero z) per (row, group of group_size codes), W[n, k] = s * (code - z); they differ in where s and z
// come from, and SpQR adds sparse outliers. A weights policy (below) says that. The kernels:
//   GenericKernel       any layout, any M; one block per row of W
//   DequantizeKernel    W (or W^T) densely into a scratch of T, for cuBLAS; ScatterOutliersKernel adds outliers
//   MmaDecodeKernel     float16 decode (M <= 8) on tensor cores, see below
// nvcc only: plain CUDA, no ORT headers.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "kernel_common.cuh"

namespace edgeq {
namespace cuda {

// ------------------------------------------------------------------------------------------------ policies
//
// A weights policy W provides (n a row of W, group < n_groups):
//   Row RowOf(n)                          per-row pointers, computed once per row
//   float2 ScaleZero(row, group)          (s, z) as float
//   OutlierRange(n, lo, hi), Outlier(i, K, col, value)   row n's outliers [lo, hi); false for a column >= K
//   RowPointers(n), Clamp(p, lo, hi)      OutlierRange in two halves (load now, use later)
//   kOutliers                             whether there are outliers at all
// and, for the decode kernel, the per-group data of one 128-code unit (G groups) of two rows of a 16-row tile,
// loaded into registers up front:
//   Unit<G>, Tile<G>; LoadUnit<G>(row0, row1, unit, d0, d1, tile)   per-row data of rows 0 and 1, and the data
//                                         all 16 rows of the tile share
//   float4 GroupStats<G>(tile, g); float2 UnitScaleZero<G>(d, g, stats)   (s, z) of the unit's group g
//   bool DecodeFits()                     whether the decode kernel takes these weights
//   PrefetchRows(r0, rows, part, parts)   everything rows [r0, r0 + rows) read, toward L2 (PrefetchL2)
// plus the fields codes, row_bytes, group_size, bits, and `prefetch`: whether the decode kernel calls PrefetchRows
// before PdlWait() (PrefetchPays).

// GroupQuantMatMul: s from scales (T), z from zero_points (uint8; absent means 2^(bits-1)). No outliers.
template <typename T>
struct GqmmWeights {
  static constexpr bool kOutliers = false;
  const uint8_t* __restrict__ codes = nullptr;
  int64_t row_bytes = 0;
  const T* __restrict__ scales = nullptr;
  const uint8_t* __restrict__ zero_points = nullptr;
  int n_groups = 0, group_size = 0, bits = 0;
  bool prefetch = false;

  __device__ __forceinline__ void PrefetchRows(int r0, int rows, int part, int parts) const {
    const int64_t at = static_cast<int64_t>(r0) * n_groups, groups = static_cast<int64_t>(rows) * n_groups;
    PrefetchL2(codes + r0 * row_bytes, rows * row_bytes, part, parts);
    PrefetchL2(scales + at, groups * static_cast<int64_t>(sizeof(T)), part, parts);
    if (zero_points) PrefetchL2(zero_points + at, groups, part, parts);
  }

  struct Row {
    const T* scales;
    const uint8_t* zero_points;
  };

  __device__ __forceinline__ Row RowOf(int n) const {
    const int64_t at = static_cast<int64_t>(n) * n_groups;
    return {scales + at, zero_points ? zero_points + at : nullptr};
  }
  __device__ __forceinline__ float2 ScaleZero(const Row& row, int group) const {
    const float zp = row.zero_points ? float(__ldg(row.zero_points + group)) : float(1 << (bits - 1));
    return make_float2(ToFloat(row.scales[group]), zp);
  }

  template <int G>
  struct Unit {
    float2 sz[G];
  };
  template <int G>
  struct Tile {};
  template <int G>
  __device__ __forceinline__ void LoadUnit(const Row& row0, const Row& row1, int unit, Unit<G>& d0, Unit<G>& d1,
                                           Tile<G>&) const {
#pragma unroll
    for (int e = 0; e < G; ++e) {
      d0.sz[e] = ScaleZero(row0, unit * G + e);
      d1.sz[e] = ScaleZero(row1, unit * G + e);
    }
  }
  template <int G>
  __device__ __forceinline__ float4 GroupStats(const Tile<G>&, int) const { return make_float4(0.f, 0.f, 0.f, 0.f); }
  template <int G>
  __device__ __forceinline__ float2 UnitScaleZero(const Unit<G>& data, int g, float4) const { return data.sz[g]; }
  __host__ bool DecodeFits() const { return true; }
  __device__ __forceinline__ void OutlierRange(int, int64_t& lo, int64_t& hi) const { lo = hi = 0; }
  __device__ __forceinline__ bool Outlier(int64_t, int, int&, float&) const { return false; }
  __device__ __forceinline__ int2 RowPointers(int) const { return make_int2(0, 0); }
  __device__ __forceinline__ void Clamp(int2, int64_t& lo, int64_t& hi) const { lo = hi = 0; }
};

// Bits [bit0, bit0 + nbits) (nbits <= 64) of the little-endian bitstream at `stream`, from at most three aligned
// 32-bit loads. Each word loaded holds at least one byte of the range, so no load leaves the allocation (which
// is at least 4-byte aligned).
__device__ __forceinline__ uint64_t BitWindow(const uint8_t* stream, int64_t bit0, int nbits) {
  const uintptr_t first = reinterpret_cast<uintptr_t>(stream + (bit0 >> 3));
  const uint32_t* words = reinterpret_cast<const uint32_t*>(first & ~uintptr_t(3));
  const int shift = static_cast<int>(first & 3) * 8 + static_cast<int>(bit0 & 7);
  const int end = shift + nbits;
  const uint32_t w0 = __ldg(words), w1 = end > 32 ? __ldg(words + 1) : 0u, w2 = end > 64 ? __ldg(words + 2) : 0u;
  return (uint64_t(__funnelshift_r(w1, w2, shift)) << 32) | __funnelshift_r(w0, w1, shift);
}

// SpQRMatMul: s = ss * (scale_code - zs), z = sz * (zero_code - zz), with (ss, zs, sz, zz) = stats[n / β2, group]
// and the stat codes read from per-row bitstreams; CSR outliers. Malformed sparse indices cannot make a kernel
// read outside the inputs: a row's range is clamped to [0, nnz] and a column >= K is skipped (the CPU kernel
// checks and reports them; the GPU one cannot without a device-to-host copy).
struct SpqrWeights {
  static constexpr bool kOutliers = true;
  const uint8_t* __restrict__ codes = nullptr;
  int64_t row_bytes = 0;
  const uint8_t* __restrict__ scale_codes = nullptr;
  const uint8_t* __restrict__ zero_codes = nullptr;
  const uint2* __restrict__ stats = nullptr;  // 4 float16 per (row block, group)
  const int32_t* __restrict__ row_ptr = nullptr;
  const uint16_t* __restrict__ cols = nullptr;
  const uint16_t* __restrict__ values = nullptr;  // float16 bits
  int64_t nnz = 0;
  int n_groups = 0, group_size = 0, bits = 0, stat_bits = 0, stat_row_bytes = 0, stat_group_size = 1;
  uint32_t block_magic = 0;  // n / stat_group_size = umulhi(n, magic) >> shift (n >> shift for a power of two)
  int block_shift = 0;
  bool prefetch = false;

  // The rows' outliers need their row_ptr first: the last part loads it, after issuing its other pieces.
  __device__ __forceinline__ void PrefetchRows(int r0, int rows, int part, int parts) const {
    const int64_t at = static_cast<int64_t>(r0) * stat_row_bytes, stat_bytes = static_cast<int64_t>(rows) * stat_row_bytes;
    PrefetchL2(codes + r0 * row_bytes, rows * row_bytes, part, parts);
    PrefetchL2(scale_codes + at, stat_bytes, part, parts);
    PrefetchL2(zero_codes + at, stat_bytes, part, parts);
    const int b0 = BlockOf(r0), b1 = BlockOf(r0 + rows - 1);
    PrefetchL2(stats + static_cast<int64_t>(b0) * n_groups, static_cast<int64_t>(b1 - b0 + 1) * n_groups * 8, part, parts);
    if (part == parts - 1) {
      int64_t lo, hi;
      Clamp(make_int2(__ldg(row_ptr + r0), __ldg(row_ptr + r0 + rows)), lo, hi);
      PrefetchL2(cols + lo, 2 * (hi - lo), 0, 1);
      PrefetchL2(values + lo, 2 * (hi - lo), 0, 1);
    }
  }

  __host__ void SetStatGroupSize(int size) {
    stat_group_size = size;
    block_shift = 0;
    while ((2 << block_shift) <= size) ++block_shift;  // floor(log2(size))
    // ceil(2^(32+s) / size) < 2^32 when size is not a power of two; exact for n < 2^31.
    block_magic = (size & (size - 1)) ? static_cast<uint32_t>(((uint64_t(1) << (32 + block_shift)) + size - 1) / size) : 0u;
  }
  __device__ __forceinline__ int BlockOf(int n) const {
    return block_magic ? static_cast<int>(__umulhi(static_cast<uint32_t>(n), block_magic) >> block_shift)
                       : n >> block_shift;
  }

  struct Row {
    const uint2* stats;
    const uint8_t* scale_codes;
    const uint8_t* zero_codes;
  };

  __device__ __forceinline__ Row RowOf(int n) const {
    const int64_t at = static_cast<int64_t>(n) * stat_row_bytes;
    return {stats + static_cast<int64_t>(BlockOf(n)) * n_groups, scale_codes + at, zero_codes + at};
  }
  __device__ __forceinline__ float2 FromStats(uint2 st, uint32_t scale_code, uint32_t zero_code) const {
    const float2 s_stats = __half22float2(*reinterpret_cast<const __half2*>(&st.x));  // (ss, zs)
    const float2 z_stats = __half22float2(*reinterpret_cast<const __half2*>(&st.y));  // (sz, zz)
    return make_float2(s_stats.x * (float(scale_code) - s_stats.y), z_stats.x * (float(zero_code) - z_stats.y));
  }
  __device__ __forceinline__ float2 ScaleZero(const Row& row, int group) const {
    return FromStats(__ldg(row.stats + group), StreamCode(row.scale_codes, group, stat_bits),
                     StreamCode(row.zero_codes, group, stat_bits));
  }

  // Decode kernel: the 16 rows of a tile must lie in one statistics block (stat_group_size % 16 == 0), so row 0's
  // statistics serve both rows (and the compiler converts them once); each row's scale and zero codes of the
  // unit come as one 64-bit window (G * stat_bits <= 64 bits).
  template <int G>
  struct Unit {
    uint64_t scale_codes, zero_codes;  // the unit's G stat codes, stat_bits each, from bit 0
  };
  template <int G>
  struct Tile {
    uint2 stats[G];
  };
  __host__ bool DecodeFits() const { return stat_group_size % 16 == 0; }
  template <int G>
  __device__ __forceinline__ void LoadUnit(const Row& row0, const Row& row1, int unit, Unit<G>& d0, Unit<G>& d1,
                                           Tile<G>& tile) const {
    const int64_t bit0 = static_cast<int64_t>(unit) * G * stat_bits;
    d0.scale_codes = BitWindow(row0.scale_codes, bit0, G * stat_bits);
    d0.zero_codes = BitWindow(row0.zero_codes, bit0, G * stat_bits);
    d1.scale_codes = BitWindow(row1.scale_codes, bit0, G * stat_bits);
    d1.zero_codes = BitWindow(row1.zero_codes, bit0, G * stat_bits);
#pragma unroll
    for (int e = 0; e < G; ++e) tile.stats[e] = __ldg(row0.stats + unit * G + e);
  }
  // (ss, -ss * zs, sz, -sz * zz) of group g: then s = ss * code + (-ss * zs) is one FFMA per row.
  template <int G>
  __device__ __forceinline__ float4 GroupStats(const Tile<G>& tile, int g) const {
    const float2 s_stats = __half22float2(*reinterpret_cast<const __half2*>(&tile.stats[g].x));  // (ss, zs)
    const float2 z_stats = __half22float2(*reinterpret_cast<const __half2*>(&tile.stats[g].y));  // (sz, zz)
    return make_float4(s_stats.x, -s_stats.x * s_stats.y, z_stats.x, -z_stats.x * z_stats.y);
  }
  template <int G>
  __device__ __forceinline__ float2 UnitScaleZero(const Unit<G>& data, int g, float4 st) const {
    const uint32_t mask = (1u << stat_bits) - 1u;
    const int shift = g * stat_bits;
    const float sc = float(static_cast<uint32_t>(data.scale_codes >> shift) & mask);
    const float zc = float(static_cast<uint32_t>(data.zero_codes >> shift) & mask);
    return make_float2(fmaf(st.x, sc, st.y), fmaf(st.z, zc, st.w));
  }
  // row_ptr[n], row_ptr[n + 1] as loaded (Clamp makes them a range inside [0, nnz]).
  __device__ __forceinline__ int2 RowPointers(int n) const { return make_int2(__ldg(row_ptr + n), __ldg(row_ptr + n + 1)); }
  __device__ __forceinline__ void Clamp(int2 p, int64_t& lo, int64_t& hi) const {
    lo = min(max(static_cast<int64_t>(p.x), int64_t(0)), nnz);
    hi = min(max(static_cast<int64_t>(p.y), lo), nnz);
  }
  __device__ __forceinline__ void OutlierRange(int n, int64_t& lo, int64_t& hi) const { Clamp(RowPointers(n), lo, hi); }
  __device__ __forceinline__ bool Outlier(int64_t i, int K, int& col, float& value) const {
    col = __ldg(cols + i);
    value = HalfBitsToFloat(__ldg(values + i));
    return col < K;
  }
};

// ------------------------------------------------------------------------------------------------ generic

constexpr int kGenericThreads = 128;
constexpr int kGenericRows = 4;  // rows of A per block

// One block per (row n of W, 4 rows of A). Work items are 16-code chunks (a group is whole chunks, so each item
// computes its (s, z) once); codes are read byte-wise, so any K, group size and alignment works.
template <typename T, typename W>
__global__ void __launch_bounds__(kGenericThreads)
    GenericKernel(const T* __restrict__ A, W w, T* __restrict__ Y, int M, int N, int K) {
  const int n = blockIdx.x;
  const int m0 = blockIdx.y * kGenericRows;
  const uint8_t* row = w.codes + static_cast<int64_t>(n) * w.row_bytes;
  const typename W::Row params = w.RowOf(n);
  float acc[kGenericRows] = {0.f, 0.f, 0.f, 0.f};
  const int chunks = (K + 15) / 16;
  for (int c = threadIdx.x; c < chunks; c += kGenericThreads) {
    const float2 sz = w.ScaleZero(params, c * 16 / w.group_size);
    const int k_end = min(K, 16 * c + 16);
    for (int k = 16 * c; k < k_end; ++k) {
      const float wv = sz.x * (float(StreamCode(row, k, w.bits)) - sz.y);
#pragma unroll
      for (int j = 0; j < kGenericRows; ++j)
        if (m0 + j < M) acc[j] = fmaf(ToFloat(A[static_cast<int64_t>(m0 + j) * K + k]), wv, acc[j]);
    }
  }
  int64_t lo, hi;
  w.OutlierRange(n, lo, hi);
  for (int64_t i = lo + threadIdx.x; i < hi; i += kGenericThreads) {
    int col;
    float value;
    if (!w.Outlier(i, K, col, value)) continue;
#pragma unroll
    for (int j = 0; j < kGenericRows; ++j)
      if (m0 + j < M) acc[j] = fmaf(ToFloat(A[static_cast<int64_t>(m0 + j) * K + col]), value, acc[j]);
  }
  __shared__ float partial[kGenericRows][kGenericThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int j = 0; j < kGenericRows; ++j) {
    const float v = WarpSum(acc[j]);
    if (lane == 0) partial[j][warp] = v;
  }
  __syncthreads();
  if (threadIdx.x < kGenericRows && m0 + static_cast<int>(threadIdx.x) < M) {
    float v = 0.f;
#pragma unroll
    for (int i = 0; i < kGenericThreads / 32; ++i) v += partial[threadIdx.x][i];
    Y[static_cast<int64_t>(m0 + threadIdx.x) * N + n] = FromFloat<T>(v);
  }
}

template <typename T, typename W>
void LaunchGeneric(const T* A, const W& w, T* Y, int64_t M, int64_t N, int64_t K, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(N), static_cast<unsigned>((M + kGenericRows - 1) / kGenericRows));
  GenericKernel<T, W><<<grid, kGenericThreads, 0, stream>>>(A, w, Y, static_cast<int>(M), static_cast<int>(N),
                                                            static_cast<int>(K));
}

// ------------------------------------------------------------------------------------------------ dequantize

// W[n, k] = s * (code - z) for k < K, as T, into dense W [N, K] (or, TRANSPOSED, W^T [K, N]). One thread per 16
// codes (16 codes start on a byte and share one group); in the transposed layout consecutive threads take
// consecutive rows, so the stores stay coalesced.
template <typename T, int BITS, typename W, bool TRANSPOSED>
__global__ void DequantizeKernel(W w, T* __restrict__ out, int N, int K) {
  const int chunks_per_row = (K + 15) / 16;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<int64_t>(N) * chunks_per_row) return;
  const int n = TRANSPOSED ? static_cast<int>(idx % N) : static_cast<int>(idx / chunks_per_row);
  const int chunk = TRANSPOSED ? static_cast<int>(idx / N) : static_cast<int>(idx % chunks_per_row);
  const int k = chunk * 16;
  const uint8_t* src = w.codes + n * w.row_bytes + static_cast<int64_t>(k) * BITS / 8;
  uint32_t words[4] = {0u, 0u, 0u, 0u};
#pragma unroll
  for (int b = 0; b < 2 * BITS; ++b) words[b >> 2] |= uint32_t(__ldg(src + b)) << (8 * (b & 3));
  const float2 sz = w.ScaleZero(w.RowOf(n), k / w.group_size);
  T values[16];
#pragma unroll
  for (int i = 0; i < 16; ++i) values[i] = FromFloat<T>(sz.x * (float(CodeAt<BITS>(words, i * BITS)) - sz.y));
  if constexpr (TRANSPOSED) {
#pragma unroll
    for (int i = 0; i < 16; ++i)
      if (k + i < K) out[static_cast<int64_t>(k + i) * N + n] = values[i];
  } else {
    T* dst = out + static_cast<int64_t>(n) * K + k;
    if (K % 16 == 0) {
      // Rows start 16-byte aligned: whole 16-byte stores, which the write stream needs to run at bandwidth.
      constexpr int kVectors = 16 * sizeof(T) / 16;
#pragma unroll
      for (int v = 0; v < kVectors; ++v) {
        uint4 packed;
        memcpy(&packed, reinterpret_cast<const unsigned char*>(values) + 16 * v, 16);
        reinterpret_cast<uint4*>(dst)[v] = packed;
      }
    } else {
#pragma unroll
      for (int i = 0; i < 16; ++i)
        if (k + i < K) dst[i] = values[i];
    }
  }
}

// Adds each row's outliers into the dense W (or W^T) that DequantizeKernel wrote: one thread per row, in CSR
// order, so duplicates add up deterministically.
template <typename T, typename W, bool TRANSPOSED>
__global__ void ScatterOutliersKernel(W w, T* __restrict__ out, int N, int K) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= N) return;
  int64_t lo, hi;
  w.OutlierRange(n, lo, hi);
  for (int64_t i = lo; i < hi; ++i) {
    int col;
    float value;
    if (!w.Outlier(i, K, col, value)) continue;
    T& slot = TRANSPOSED ? out[static_cast<int64_t>(col) * N + n] : out[static_cast<int64_t>(n) * K + col];
    slot = FromFloat<T>(ToFloat(slot) + value);
  }
}

template <typename T, typename W, bool TRANSPOSED = false>
void LaunchDequantize(const W& w, T* out, int64_t N, int64_t K, bool outliers, cudaStream_t stream) {
  const int64_t threads = N * ((K + 15) / 16);
  const unsigned blocks = static_cast<unsigned>((threads + 255) / 256);
  const int n = static_cast<int>(N), k = static_cast<int>(K);
  switch (w.bits) {
    case 2: DequantizeKernel<T, 2, W, TRANSPOSED><<<blocks, 256, 0, stream>>>(w, out, n, k); break;
    case 3: DequantizeKernel<T, 3, W, TRANSPOSED><<<blocks, 256, 0, stream>>>(w, out, n, k); break;
    case 4: DequantizeKernel<T, 4, W, TRANSPOSED><<<blocks, 256, 0, stream>>>(w, out, n, k); break;
    default: DequantizeKernel<T, 8, W, TRANSPOSED><<<blocks, 256, 0, stream>>>(w, out, n, k); break;
  }
  if (outliers)
    ScatterOutliersKernel<T, W, TRANSPOSED><<<static_cast<unsigned>((N + 127) / 128), 128, 0, stream>>>(w, out, n, k);
}

// ------------------------------------------------------------------------------------------------ mma decode
//
// float16 decode for M <= 8 on tensor cores (mma.sync.m16n8k16, fp32 accumulation): a block owns 16 rows of W;
// its 8 warps split K into steps of 512 codes. In a step, lane (g, t) (g = lane / 4, t = lane % 4) loads the
// 128-code unit 4*step + t of rows g and g + 8 (`bits` 16-byte loads each, whole groups), so the 4 lanes of a
// quad read 4 consecutive units of one row. The mma's K order is free as long as W and A agree, so each lane
// feeds its own codes to its own k-slots and A is staged in shared memory in the matching order.
//
// Dequantization in registers, two codes per instruction: a pair of codes (i, i + d) of a 16-code block lies
// 16 bits apart in the stream up to a small offset (d = 16 / bits; for 3 bits d = 4, 12 bits apart), so one
// funnel shift and one lop3 put them into the mantissas of a half2 whose exponents are 2^10:
// x = (1024 + c_i * 2^tl, 1024 + c_j * 2^th). One HFMA2 with the group's (s, s) and (-1024 s, -1024 s) gives
// s * c * 2^t exactly rounded; the 2^-t are folded into the staged activations (exact power-of-two scaling). The
// zero point leaves the inner loop: sum_k a_k s (c_k - z) = sum_k a_k (s c_k) - s z sum_k a_k, and the group
// sums of A are staged too, so each (row, group) costs M fp32 FMAs instead of a subtraction per code.
// Batch 1 (MAXM = 1) skips the HFMA2 too: the mma's 8 columns, idle but one, hold one unit each. Lane (2t, t)
// feeds its unit's activations into column 2t and every other lane zeros, so column 2t of a 16-code block's 4
// mmas is sum_k a_k 2^-t_k (1024 + c_k 2^t_k) over unit t's codes alone, and it lands in lane (g, t)'s own
// accumulator (D[g][2t], D[g + 8][2t]): the lane that holds that unit's (s, z). Per group it adds
// s * (D - T - z * S), with S = sum a and T = 1024 * sum of the staged a 2^-t (staged beside S), in fp32: the
// codes enter the mma as the raw 1024 + c 2^t halves, one funnel shift and one lop3 per pair, and s is never
// rounded to fp16.
// SpQR's outliers of the block's rows (warp w takes rows w and w + 8) are added by the same kernel, right after A
// is staged: their dependent loads (row_ptr, then cols and values) overlap the first step's weight loads, which
// are issued before the staging, and A comes from the staged copy. (Reading them after the main loop instead, with
// L2 prefetches ahead, was slower at 2 of 3 LLaMA shapes on an H100: stop 23.)

constexpr int kMmaWarps = 8;
constexpr int kMmaThreads = kMmaWarps * 32;
constexpr int kMmaTileRows = 16;
constexpr int kMmaBlocksPerSm = 2;  // MmaDecodeKernel's __launch_bounds__ minimum, and PrefetchPays' wave
constexpr int kMmaUnitCodes = 128;
constexpr int kMmaStepUnits = 4;
constexpr int kMmaStepBytes = 32 * 4 * 8;  // staged A of one step and token: 32 mmas x 4 quad lanes x 8 bytes
constexpr int kMmaTokenPad = 32;           // keeps the 4 tokens of a half-warp's 8-byte reads on distinct banks
constexpr int kMmaMaxM = 8;

// Where the codes of pair q (0..7) of a 16-code block sit (see above).
template <int BITS>
struct MmaPairs {
  static constexpr int kD = BITS == 3 ? 4 : 16 / BITS;
  static constexpr uint32_t kCode = (1u << BITS) - 1u;
  __host__ __device__ static constexpr int First(int q) { return (q / kD) * 2 * kD + q % kD; }
  __host__ __device__ static constexpr int Low(int q) { return BITS == 3 ? (q % 2 ? 7 : 4) : 0; }
  __host__ __device__ static constexpr int High(int q) { return Low(q) + BITS * kD - 16; }
  __host__ __device__ static constexpr uint32_t Mask(int q) { return kCode << Low(q) | kCode << (16 + High(q)); }
};

// The unit's bits (w[4 * BITS]) shifted so that pair q of 16-code block b lands on MmaPairs::Mask(q); ORed with
// 0x64006400 after the mask, the word is the half2 (1024 + c_i 2^tl, 1024 + c_j 2^th).
template <int BITS>
__device__ __forceinline__ uint32_t MmaPairBits(const uint32_t* w, int b, int q) {
  using P = MmaPairs<BITS>;
  const int sigma = BITS * (16 * b + P::First(q)) - P::Low(q);
  uint32_t x;
  if (sigma < 0) {
    x = w[0] << (-sigma);
  } else {
    const int word = sigma >> 5, offset = sigma & 31;
    x = offset == 0 ? w[word] : (word + 1 < 4 * BITS ? __funnelshift_r(w[word], w[word + 1], offset) : w[word] >> offset);
  }
  return x;
}

// (x & mask) | magic in one LOP3 (the compiler would emit two for two immediates).
__device__ __forceinline__ uint32_t AndOr(uint32_t x, uint32_t mask, uint32_t magic) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(x), "r"(mask), "r"(magic));
  return d;
}

__device__ __forceinline__ void Mma16816(float* c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                         uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t Half2Bits(__half2 h) {
  uint32_t v;
  memcpy(&v, &h, 4);
  return v;
}
__device__ __forceinline__ __half2 BitsToHalf2(uint32_t v) {
  __half2 h;
  memcpy(&h, &v, 4);
  return h;
}

// Shared memory of one block, in this order: staged A (per token chunk_steps * kMmaStepBytes + pad), the 16-code
// block sums of A, per-warp partial outputs [warp][row][kMmaMaxM], outlier sums [row][kMmaMaxM], and zeros (the
// B fragments of lanes past M or past K).
constexpr int kMmaZeroBytes = 32 * kMmaStepUnits * 8;

__host__ __device__ constexpr int64_t MmaTokenBytes(int chunk_steps) {
  return static_cast<int64_t>(chunk_steps) * kMmaStepBytes + kMmaTokenPad;
}
__host__ __device__ constexpr int64_t MmaSumsOffset(int M, int chunk_steps) { return M * MmaTokenBytes(chunk_steps); }
// Block sums per token, and at M = 1 a second row of them: the batch-1 path's 1024 * sum of the staged values.
__host__ __device__ constexpr int64_t MmaPartialOffset(int M, int chunk_steps) {
  return MmaSumsOffset(M, chunk_steps) + 4 * (M > 1 ? M : 2) * chunk_steps * kMmaStepUnits * 8;
}
__host__ __device__ constexpr int64_t MmaSharedBytes(int M, int chunk_steps) {
  return MmaPartialOffset(M, chunk_steps) + 4 * (kMmaWarps + 1) * kMmaTileRows * kMmaMaxM + kMmaZeroBytes;
}

// Stages steps [s0, s0 + cs) of A: for token m, unit u, block b, pair q, the half2 (a_i 2^-tl, a_j 2^-th) goes to
// the 8-byte slot (step, mma 4b + q/2, quad lane u % 4), low or high half by q % 2; and sum(a over the block).
// OFFSETS (batch 1): also 1024 * the block's sum of the staged halves, in the sums' second token row.
template <int BITS, bool OFFSETS>
__device__ __forceinline__ void MmaStageA(const __half* __restrict__ A, int M, int K, int s0, int cs, int units,
                                          unsigned char* staged, float* sums) {
  using P = MmaPairs<BITS>;
  const int local_units = cs * kMmaStepUnits;
  for (int item = threadIdx.x; item < M * local_units * 8; item += kMmaThreads) {
    const int b = item & 7, ul = (item >> 3) % local_units, m = (item >> 3) / local_units;
    const int u = s0 * kMmaStepUnits + ul;
    float a[16];
    if (u < units) {
      const uint4* src = reinterpret_cast<const uint4*>(A + static_cast<int64_t>(m) * K + u * kMmaUnitCodes + 16 * b);
      uint4 v[2] = {__ldg(src), __ldg(src + 1)};
      const __half2* h = reinterpret_cast<const __half2*>(v);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const float2 f = __half22float2(h[i]);
        a[2 * i] = f.x;
        a[2 * i + 1] = f.y;
      }
    } else {
#pragma unroll
      for (int i = 0; i < 16; ++i) a[i] = 0.f;
    }
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < 16; ++i) sum += a[i];
    sums[m * local_units * 8 + ul * 8 + b] = sum;
    unsigned char* token = staged + m * MmaTokenBytes(cs);
    float offset = 0.f;
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      const float lo = a[P::First(q)] * (1.f / float(1 << P::Low(q)));
      const float hi = a[P::First(q) + P::kD] * (1.f / float(1 << P::High(q)));
      const int slot = ((ul / kMmaStepUnits) * 32 + 4 * b + q / 2) * kMmaStepUnits + ul % kMmaStepUnits;
      const __half2 h = __floats2half2_rn(lo, hi);
      *reinterpret_cast<__half2*>(token + slot * 8 + (q & 1) * 4) = h;
      if constexpr (OFFSETS) {
        const float2 f = __half22float2(h);
        offset += f.x + f.y;
      }
    }
    if constexpr (OFFSETS) sums[local_units * 8 + ul * 8 + b] = 1024.f * offset;
  }
}

// A[m, k] back from the staged copy (k in the staged chunk s0 = 0): the inverse of MmaStageA's placement.
template <int BITS>
__device__ __forceinline__ float MmaStagedA(const unsigned char* staged, int cs, int m, int k) {
  using P = MmaPairs<BITS>;
  const int u = k / kMmaUnitCodes, i = k % kMmaUnitCodes, b = i / 16, r = i % (2 * P::kD);
  const bool low = r < P::kD;
  const int q = ((i % 16) / (2 * P::kD)) * P::kD + r % P::kD;
  const int slot = ((u / kMmaStepUnits) * 32 + 4 * b + q / 2) * kMmaStepUnits + u % kMmaStepUnits;
  const __half2 h = *reinterpret_cast<const __half2*>(staged + m * MmaTokenBytes(cs) + slot * 8 + (q & 1) * 4);
  return low ? __low2float(h) * float(1 << P::Low(q)) : __high2float(h) * float(1 << P::High(q));
}

template <int BITS>
__device__ __forceinline__ void MmaLoadCodes(const uint8_t* __restrict__ row, int unit, bool valid, uint32_t* w) {
  const uint4* src = reinterpret_cast<const uint4*>(row) + unit * BITS;
#pragma unroll
  for (int j = 0; j < BITS; ++j) {
    // Plain cached loads: a quad's 4 lanes read 4 consecutive units, so each 32-byte sector is shared by two of
    // the `bits` load instructions and the second one should find it in L1.
    const uint4 v = valid ? __ldg(src + j) : make_uint4(0u, 0u, 0u, 0u);
    w[4 * j] = v.x;
    w[4 * j + 1] = v.y;
    w[4 * j + 2] = v.z;
    w[4 * j + 3] = v.w;
  }
}

// Everything one lane loads for one step: the codes of its unit in rows g and g + 8, and their groups' data.
template <int BITS, int GS, typename W>
struct MmaStepData {
  static constexpr int kGroups = kMmaUnitCodes / GS;
  uint32_t codes[2][4 * BITS];
  typename W::template Unit<kGroups> groups[2];
  typename W::template Tile<kGroups> tile;

  __device__ __forceinline__ void Load(const W& w, const uint8_t* codes0, const uint8_t* codes1,
                                       const typename W::Row& row0, const typename W::Row& row1, int unit, bool valid) {
    MmaLoadCodes<BITS>(codes0, unit, valid, codes[0]);
    MmaLoadCodes<BITS>(codes1, unit, valid, codes[1]);
    if (valid) {
      w.template LoadUnit<kGroups>(row0, row1, unit, groups[0], groups[1], tile);
    } else {  // past K: all-zero data gives s = z = 0, so the lane adds exact zeros without a branch later
      groups[0] = {};
      groups[1] = {};
      tile = {};
    }
  }
};

// One step of a lane with M tokens: its unit of rows g and g + 8, dequantized by one HFMA2 per pair with the
// group's (s, -1024 s) into B's token columns; the zero points' s z sum(a) collect in corr. token_stride: floats
// between two tokens' block sums.
template <int BITS, int GS, int MAXM, typename W>
__device__ __forceinline__ void MmaStepTokens(const W& w, const MmaStepData<BITS, GS, W>& data, const float* unit_sums,
                                              int token_stride, int M, const unsigned char* b_base, float (&c)[2][4],
                                              float (&corr)[2][MAXM]) {
  constexpr int kBlocksPerGroup = GS / 16;
  const uint32_t magic = 0x64006400u;
  __half2 hs[2], hb[2];
  float sz[2];
#pragma unroll
  for (int b = 0; b < 8; ++b) {
    if (b % kBlocksPerGroup == 0) {  // a group's first 16-code block: its coefficients
      const float4 stats = w.GroupStats(data.tile, b / kBlocksPerGroup);
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float2 s_z = w.UnitScaleZero(data.groups[r], b / kBlocksPerGroup, stats);
        hs[r] = __float2half2_rn(s_z.x);
        hb[r] = __hmul2(hs[r], __float2half2_rn(-1024.f));
        sz[r] = __low2float(hs[r]) * s_z.y;
      }
    }
#pragma unroll
    for (int m = 0; m < MAXM; ++m) {
      if (m < M) {
        const float a_sum = unit_sums[m * token_stride + b];
        corr[0][m] = fmaf(sz[0], a_sum, corr[0][m]);
        corr[1][m] = fmaf(sz[1], a_sum, corr[1][m]);
      }
    }
    uint32_t wv[2][8];
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        const uint32_t x = AndOr(MmaPairBits<BITS>(data.codes[r], b, q), MmaPairs<BITS>::Mask(q), magic);
        wv[r][q] = Half2Bits(__hfma2(BitsToHalf2(x), hs[r], hb[r]));
      }
#pragma unroll
    for (int qq = 0; qq < 4; ++qq) {
      const uint2 bfrag = *reinterpret_cast<const uint2*>(b_base + (4 * b + qq) * kMmaStepUnits * 8);
      Mma16816(c[qq & 1], wv[0][2 * qq], wv[1][2 * qq], wv[0][2 * qq + 1], wv[1][2 * qq + 1], bfrag.x, bfrag.y);
    }
  }
}

// One step of a batch-1 lane (see the top): its unit of rows g and g + 8 as raw 1024 + c 2^t halves into B's column
// 2t, each group's D then scaled in fp32 into acc. offsets: the unit's 1024 * sums of the staged halves.
template <int BITS, int GS, typename W>
__device__ __forceinline__ void MmaStepColumns(const W& w, const MmaStepData<BITS, GS, W>& data,
                                               const float* unit_sums, const float* offsets,
                                               const unsigned char* b_column, float (&acc)[2]) {
  constexpr int kBlocksPerGroup = GS / 16;
  const uint32_t magic = 0x64006400u;
  float2 s_z[2];
  float d[2][4], a_sum, offset;
#pragma unroll
  for (int b = 0; b < 8; ++b) {
    if (b % kBlocksPerGroup == 0) {
      const float4 stats = w.GroupStats(data.tile, b / kBlocksPerGroup);
#pragma unroll
      for (int r = 0; r < 2; ++r) s_z[r] = w.UnitScaleZero(data.groups[r], b / kBlocksPerGroup, stats);
#pragma unroll
      for (int i = 0; i < 4; ++i) d[0][i] = d[1][i] = 0.f;
      a_sum = unit_sums[b];
      offset = offsets[b];
    } else {
      a_sum += unit_sums[b];
      offset += offsets[b];
    }
    uint32_t wv[2][8];
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
      for (int q = 0; q < 8; ++q) wv[r][q] = AndOr(MmaPairBits<BITS>(data.codes[r], b, q), MmaPairs<BITS>::Mask(q), magic);
#pragma unroll
    for (int qq = 0; qq < 4; ++qq) {
      const uint2 bfrag = *reinterpret_cast<const uint2*>(b_column + (4 * b + qq) * kMmaStepUnits * 8);
      Mma16816(d[qq & 1], wv[0][2 * qq], wv[1][2 * qq], wv[0][2 * qq + 1], wv[1][2 * qq + 1], bfrag.x, bfrag.y);
    }
    if (b % kBlocksPerGroup == kBlocksPerGroup - 1) {  // D[row][2t] is c[0] (row g) and c[2] (row g + 8)
#pragma unroll
      for (int r = 0; r < 2; ++r)
        acc[r] = fmaf(s_z[r].x, (d[0][2 * r] + d[1][2 * r]) - fmaf(s_z[r].y, a_sum, offset), acc[r]);
    }
  }
}

// MAXM: 1 (batch-1 decode) or 8 (M <= 8 checked at run time). chunk_steps: steps of A staged at once.
template <int BITS, int GS, int MAXM, typename W>
__global__ void __launch_bounds__(kMmaThreads, kMmaBlocksPerSm)
    MmaDecodeKernel(const __half* __restrict__ A, W w, __half* __restrict__ Y, int M, int N, int K, int chunk_steps) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int r0 = blockIdx.x * kMmaTileRows;
  if (w.prefetch) w.PrefetchRows(r0, min(kMmaTileRows, N - r0), threadIdx.x, kMmaThreads);
  PdlWait();
  PdlRelease();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int units = K / kMmaUnitCodes, steps = (units + kMmaStepUnits - 1) / kMmaStepUnits;
  const int n0 = min(r0 + g, N - 1), n1 = min(r0 + g + 8, N - 1);
  const uint8_t* codes0 = w.codes + n0 * w.row_bytes;
  const uint8_t* codes1 = w.codes + n1 * w.row_bytes;
  const typename W::Row row0 = w.RowOf(n0), row1 = w.RowOf(n1);

  unsigned char* staged = smem;
  float* sums = reinterpret_cast<float*>(smem + MmaSumsOffset(M, chunk_steps));
  float* partial = reinterpret_cast<float*>(smem + MmaPartialOffset(M, chunk_steps));  // [warp][row][kMmaMaxM]
  float* outlier_sums = partial + kMmaWarps * kMmaTileRows * kMmaMaxM;                  // [row][kMmaMaxM]
  unsigned char* zeros = reinterpret_cast<unsigned char*>(outlier_sums + kMmaTileRows * kMmaMaxM);
  for (int i = threadIdx.x; i < kMmaZeroBytes / 4; i += kMmaThreads) reinterpret_cast<uint32_t*>(zeros)[i] = 0u;

  // The outlier rows' row_ptr first, then the first step's weights: both are in flight while A is staged.
  int2 pointers[2] = {make_int2(0, 0), make_int2(0, 0)};
  if constexpr (W::kOutliers) {
#pragma unroll
    for (int r = 0; r < 2; ++r)
      if (r0 + warp + 8 * r < N) pointers[r] = w.RowPointers(r0 + warp + 8 * r);
  }
  MmaStepData<BITS, GS, W> data;
  bool preloaded = false;
  if (warp < min(chunk_steps, steps)) {
    const int u = warp * kMmaStepUnits + t;
    data.Load(w, codes0, codes1, row0, row1, u, u < units);
    preloaded = true;
  }

  float c[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
  float corr[2][MAXM];
#pragma unroll
  for (int m = 0; m < MAXM; ++m) corr[0][m] = corr[1][m] = 0.f;
  float acc[2] = {0.f, 0.f};  // batch 1: rows g and g + 8 over this lane's units

  for (int s0 = 0; s0 < steps; s0 += chunk_steps) {
    const int cs = min(chunk_steps, steps - s0);
    __syncthreads();  // the previous chunk's readers are done
    MmaStageA<BITS, MAXM == 1>(A, M, K, s0, cs, units, staged, sums);
    __syncthreads();
    if constexpr (W::kOutliers) {
      if (s0 == 0) {  // warp w: rows w and w + 8; A from the staged copy when it holds all of K
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          float o[MAXM];
#pragma unroll
          for (int m = 0; m < MAXM; ++m) o[m] = 0.f;
          int64_t lo, hi;
          w.Clamp(pointers[r], lo, hi);
          for (int64_t i = lo + lane; i < hi; i += 32) {
            int col;
            float value;
            if (!w.Outlier(i, K, col, value)) continue;
#pragma unroll
            for (int m = 0; m < MAXM; ++m)
              if (MAXM == 1 || m < M)
                o[m] = fmaf(cs == steps ? MmaStagedA<BITS>(staged, cs, m, col)
                                        : __half2float(A[static_cast<int64_t>(m) * K + col]),
                            value, o[m]);
          }
#pragma unroll
          for (int m = 0; m < MAXM; ++m) {
            if (MAXM == 1 || m < M) {
              const float v = WarpSum(o[m]);
              if (lane == 0) outlier_sums[(warp + 8 * r) * kMmaMaxM + m] = v;
            }
          }
        }
      }
    }
    for (int sl = warp; sl < cs; sl += kMmaWarps) {
      const int u = (s0 + sl) * kMmaStepUnits + t;
      const bool valid = u < units;
      if (!preloaded) data.Load(w, codes0, codes1, row0, row1, u, valid);
      preloaded = false;
      const float* unit_sums = sums + (sl * kMmaStepUnits + t) * 8;
      if constexpr (MAXM == 1) {
        const unsigned char* b_column = g == 2 * t && valid ? staged + (sl * 32 * kMmaStepUnits + t) * 8 : zeros;
        MmaStepColumns<BITS, GS>(w, data, unit_sums, unit_sums + cs * kMmaStepUnits * 8, b_column, acc);
      } else {
        // Lanes past M (or past K) read zeros for their B fragments, with the same offsets.
        const unsigned char* b_base =
            g < M && valid ? staged + g * MmaTokenBytes(cs) + (sl * 32 * kMmaStepUnits + t) * 8 : zeros;
        MmaStepTokens<BITS, GS, MAXM>(w, data, unit_sums, cs * kMmaStepUnits * 8, M, b_base, c, corr);
      }
    }
  }

  // Summed over the quad (its 4 lanes hold different units of the same rows). Tokens: the zero-point terms, then
  // lane (g, t) takes those of its output columns, tokens 2t and 2t + 1; batch 1: lane (g, 0) holds the rows.
  float out[4];
  if constexpr (MAXM == 1) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float v = acc[r];
      v += __shfl_xor_sync(0xffffffffu, v, 1);
      v += __shfl_xor_sync(0xffffffffu, v, 2);
      out[2 * r] = v;
      out[2 * r + 1] = 0.f;
    }
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) out[i] = c[0][i] + c[1][i];
#pragma unroll
    for (int m = 0; m < MAXM; ++m) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float v = corr[r][m];
        v += __shfl_xor_sync(0xffffffffu, v, 1);
        v += __shfl_xor_sync(0xffffffffu, v, 2);
        if (m == 2 * t) out[2 * r] -= v;
        if (m == 2 * t + 1) out[2 * r + 1] -= v;
      }
    }
  }
  float* mine = partial + warp * kMmaTileRows * kMmaMaxM;
#pragma unroll
  for (int r = 0; r < 2; ++r)
#pragma unroll
    for (int h = 0; h < 2; ++h)
      if (2 * t + h < MAXM) mine[(g + 8 * r) * kMmaMaxM + 2 * t + h] = out[2 * r + h];
  __syncthreads();
  for (int idx = threadIdx.x; idx < kMmaTileRows * M; idx += kMmaThreads) {
    const int tile_row = idx / M, m = idx % M, n = r0 + tile_row;
    if (n >= N) continue;
    float v = W::kOutliers ? outlier_sums[tile_row * kMmaMaxM + m] : 0.f;
#pragma unroll
    for (int i = 0; i < kMmaWarps; ++i) v += partial[(i * kMmaTileRows + tile_row) * kMmaMaxM + m];
    Y[static_cast<int64_t>(m) * N + n] = __float2half_rn(v);
  }
}

// Whether MmaDecodeKernel takes this problem: float16, M <= 8, K on the 128-code grid, codes and A 16-byte
// aligned (rows of codes then are too: K * bits / 8 is a multiple of 16), and weights the policy accepts.
template <typename W>
bool MmaDecodeFits(bool half, int64_t M, int64_t K, const void* A, const W& w) {
  return half && M >= 1 && M <= kMmaMaxM && K % kMmaUnitCodes == 0 && Aligned16(A) && Aligned16(w.codes) &&
         w.DecodeFits();
}

template <int BITS, int GS, typename W>
void LaunchMmaDecodeTyped(const __half* A, const W& w, __half* Y, int M, int N, int K, cudaStream_t stream) {
  constexpr int64_t kBudget = 96 * 1024;  // shared memory for staged A; more would cost blocks per SM
  const int steps = (K / kMmaUnitCodes + kMmaStepUnits - 1) / kMmaStepUnits;
  int chunk_steps = steps;
  while (chunk_steps > 1 && MmaSharedBytes(M, chunk_steps) > kBudget) chunk_steps = (chunk_steps + 1) / 2;
  const size_t smem = static_cast<size_t>(MmaSharedBytes(M, chunk_steps));
  const unsigned blocks = static_cast<unsigned>((N + kMmaTileRows - 1) / kMmaTileRows);
  W prefetched = w;
  prefetched.prefetch = PrefetchPays(blocks, kMmaBlocksPerSm);
  auto kernel = M == 1 ? MmaDecodeKernel<BITS, GS, 1, W> : MmaDecodeKernel<BITS, GS, kMmaMaxM, W>;
  // Above 48 KB of dynamic shared memory a kernel must opt in; cheap, and harmless during graph capture.
  if (smem > 48 * 1024) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  LaunchDependent(kernel, dim3(blocks), dim3(kMmaThreads), smem, stream, A, prefetched, Y, M, N, K, chunk_steps);
}

template <int BITS, typename W>
void LaunchMmaDecodeBits(const __half* A, const W& w, __half* Y, int M, int N, int K, cudaStream_t stream) {
  switch (w.group_size) {
    case 16: return LaunchMmaDecodeTyped<BITS, 16>(A, w, Y, M, N, K, stream);
    case 32: return LaunchMmaDecodeTyped<BITS, 32>(A, w, Y, M, N, K, stream);
    case 64: return LaunchMmaDecodeTyped<BITS, 64>(A, w, Y, M, N, K, stream);
    default: return LaunchMmaDecodeTyped<BITS, 128>(A, w, Y, M, N, K, stream);
  }
}

// Launches MmaDecodeKernel (the caller checked MmaDecodeFits).
template <typename W>
void LaunchMmaDecode(const __half* A, const W& w, __half* Y, int64_t M, int64_t N, int64_t K, cudaStream_t stream) {
  const int m = static_cast<int>(M), n = static_cast<int>(N), k = static_cast<int>(K);
  switch (w.bits) {
    case 2: return LaunchMmaDecodeBits<2>(A, w, Y, m, n, k, stream);
    case 3: return LaunchMmaDecodeBits<3>(A, w, Y, m, n, k, stream);
    case 4: return LaunchMmaDecodeBits<4>(A, w, Y, m, n, k, stream);
    default: return LaunchMmaDecodeBits<8>(A, w, Y, m, n, k, stream);
  }
}

}  // namespace cuda
}  // namespace edgeq
