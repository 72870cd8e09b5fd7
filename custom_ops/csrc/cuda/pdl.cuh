// Programmatic dependent launch for the edgeq CUDA kernels (nvcc only; plain CUDA, no ORT headers).
#pragma once

#include <cuda_runtime.h>

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
