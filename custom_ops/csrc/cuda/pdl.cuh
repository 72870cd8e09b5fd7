// Programmatic dependent launch for the edgeq CUDA kernels (nvcc only; plain CUDA, no ORT headers).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>

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

// Hopper's bulk prefetch into L2 of the 16-byte-aligned interior of [p, p + bytes) (the few edge bytes are left to
// the ordinary loads: a prefetch may not reach past the allocation), in pieces of kPrefetchPiece bytes dealt to
// `parts` threads, this one taking piece `part` and every parts-th after it. The decode kernels issue it for their
// weights before PdlWait(), so that those DRAM reads overlap the previous kernel's tail instead of following it.
// That is safe whatever the previous kernel writes: a prefetch only fills L2, where its writes land too (L2 is the
// point of coherence); only loads into registers must wait. A no-op before sm_90.
constexpr int64_t kPrefetchPiece = 16 * 1024;

__device__ __forceinline__ void PrefetchL2(const void* p, int64_t bytes, int part, int parts) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (bytes <= 0) return;
  const uint64_t first = reinterpret_cast<uint64_t>(p);
  const uint64_t begin = (first + 15) & ~uint64_t(15), end = (first + static_cast<uint64_t>(bytes)) & ~uint64_t(15);
  for (uint64_t at = begin + static_cast<uint64_t>(part) * kPrefetchPiece; at < end;
       at += static_cast<uint64_t>(parts) * kPrefetchPiece) {
    const uint32_t n = static_cast<uint32_t>(end - at < uint64_t(kPrefetchPiece) ? end - at : kPrefetchPiece);
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(at), "r"(n) : "memory");
  }
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

}  // namespace cuda
}  // namespace edgeq
