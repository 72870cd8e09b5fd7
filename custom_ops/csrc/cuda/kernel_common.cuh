// Device helpers shared by the CUDA kernels of the group-quantized linears (GroupQuantMatMul, SpQRMatMul).
// nvcc only: plain CUDA, no ORT headers.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

#include "pdl.cuh"

namespace edgeq {
namespace cuda {

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ float FromFloat<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half FromFloat<__half>(float v) { return __float2half_rn(v); }

__device__ __forceinline__ float HalfBitsToFloat(uint16_t bits) { return __half2float(__ushort_as_half(bits)); }

// Bits [pos, pos + BITS) of the little-endian stream held in w[]. pos must fold to a constant after unrolling,
// or w[] leaves registers.
template <int BITS>
__device__ __forceinline__ uint32_t CodeAt(const uint32_t* w, int pos) {
  const int word = pos >> 5, offset = pos & 31;
  uint32_t v = w[word] >> offset;
  if (offset + BITS > 32) v |= w[word + 1] << (32 - offset);
  return v & ((1u << BITS) - 1u);
}

// Code i of a little-endian bitstream of `bits`-wide codes (bits <= 8) starting at `row`; reads only the one
// or two bytes holding it.
__device__ __forceinline__ uint32_t StreamCode(const uint8_t* __restrict__ row, int64_t i, int bits) {
  const int64_t bit = i * bits;
  const int shift = static_cast<int>(bit & 7);
  uint32_t v = __ldg(row + (bit >> 3));
  if (shift + bits > 8) v |= uint32_t(__ldg(row + (bit >> 3) + 1)) << 8;
  return (v >> shift) & ((1u << bits) - 1u);
}

__device__ __forceinline__ uint4 LoadStreaming(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ uint2 LoadStreaming2(const uint2* p) {
  uint2 v;
  asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
  return v;
}

__device__ __forceinline__ uint32_t LoadStreaming1(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(v) : "l"(p));
  return v;
}

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Host side.
inline bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

inline int MultiprocessorCount() {
  static int counts[64] = {0};
  int device = 0;
  cudaGetDevice(&device);
  if (device < 0 || device >= 64) device = 0;
  if (counts[device] == 0) cudaDeviceGetAttribute(&counts[device], cudaDevAttrMultiProcessorCount, device);
  return counts[device] > 0 ? counts[device] : 1;
}

// Whether a decode grid of `blocks` (at most `per_sm` resident per SM) prefetches its weights before PdlWait: only
// when the grid is one wave, so that every block is resident while the previous kernel runs. In a grid of several
// waves the later blocks start with nothing to wait for, and their prefetch only doubled their requests (H100,
// decode-h2 at 4096x11008: 14.35 -> 15.47 us; one wave at 4096x4096: 6.33 -> 6.07 us; BENCHMARKS.md). EDGEQ_PREFETCH=0
// switches it off (the benchmarks' switch), settled once per process.
inline bool PrefetchPays(int64_t blocks, int per_sm) {
  static const bool enabled = [] {
    const char* env = std::getenv("EDGEQ_PREFETCH");
    return env == nullptr || env[0] != '0';
  }();
  return enabled && blocks <= static_cast<int64_t>(per_sm) * MultiprocessorCount();
}

}  // namespace cuda
}  // namespace edgeq
