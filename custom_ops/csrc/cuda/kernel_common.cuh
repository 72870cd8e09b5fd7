// Device helpers shared by the CUDA kernels of the group-quantized linears (GroupQuantMatMul, SpQRMatMul).
// nvcc only: plain CUDA, no ORT headers.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace edgeq {
namespace cuda {

// Programmatic dependent launch (sm_90+). A decode GEMV is a few microseconds of streaming behind a fixed cost of
// launching and ramping up a grid; launched with LaunchDependent, its grid may be scheduled while the previous
// kernel on the stream is still running. PdlWait() then holds every thread until that kernel has finished and
// its writes are visible (so nothing it produced, activations or weights, is read early), and PdlRelease() lets
// the next dependent launch start in turn. Both are no-ops before sm_90 and for ordinary launches.
__device__ __forceinline__ void PdlWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void PdlRelease() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Whether launches ask for programmatic serialization: a compute capability 9.0+ device, and EDGEQ_PDL not "0"
// (the benchmarks' switch for timing both ways). Settled once per process.
inline bool PdlEnabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("EDGEQ_PDL");
    if (env != nullptr && env[0] == '0') return false;
    int device = 0, major = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return false;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return false;
    return major >= 9;
  }();
  return enabled;
}

// kernel<<<grid, block, smem, stream>>>(args...), allowed to overlap the previous kernel when PdlEnabled(); the
// kernel must call PdlWait() before its first global read.
template <typename... Params, typename... Args>
void LaunchDependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                     Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = PdlEnabled() ? 1 : 0;
  config.attrs = attribute;
  config.numAttrs = 1;
  cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
}

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

}  // namespace cuda
}  // namespace edgeq
