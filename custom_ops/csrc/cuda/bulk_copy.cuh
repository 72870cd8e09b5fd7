// Hopper's bulk copy engine (cp.async.bulk, global -> shared) completing on shared-memory mbarriers, for kernels
// that stream a weight matrix through a ring of shared-memory slots: one thread issues whole slots of contiguous
// bytes, so the bytes in flight do not depend on how many registers or warps the compute has.
// nvcc only. Every function compiles to nothing useful below sm_90: callers guard with __CUDA_ARCH__ >= 900 and
// pick such kernels on the host only for compute capability >= 9.0 (ComputeCapabilityMajor).
#pragma once

#include <cstdint>

namespace edgeq {
namespace cuda {

__device__ __forceinline__ uint32_t SharedAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900

__device__ __forceinline__ void BarrierInit(uint64_t* bar, uint32_t arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(SharedAddress(bar)), "r"(arrivals) : "memory");
}

// After the inits, before the __syncthreads that publishes them: the copy engine must see initialized barriers.
__device__ __forceinline__ void BarrierInitFence() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

// One arrival that also announces `bytes` of copies completing on this phase.
__device__ __forceinline__ void BarrierArriveExpectBytes(uint64_t* bar, uint32_t bytes) {
  asm volatile("{\n\t.reg .b64 state;\n\tmbarrier.arrive.expect_tx.shared::cta.b64 state, [%0], %1;\n\t}"
               ::"r"(SharedAddress(bar)), "r"(bytes) : "memory");
}

__device__ __forceinline__ void BarrierArrive(uint64_t* bar) {
  asm volatile("{\n\t.reg .b64 state;\n\tmbarrier.arrive.shared::cta.b64 state, [%0];\n\t}"
               ::"r"(SharedAddress(bar)) : "memory");
}

// Returns once the phase of parity `parity` has completed (a fresh barrier counts parity 1 as completed).
__device__ __forceinline__ void BarrierWait(uint64_t* bar, uint32_t parity) {
  const uint32_t addr = SharedAddress(bar);
  uint32_t done = 0;
  do {
    asm volatile("{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
                 "selp.u32 %0, 1, 0, p;\n\t}"
                 : "=r"(done)
                 : "r"(addr), "r"(parity)
                 : "memory");
  } while (!done);
}

// bytes (a multiple of 16; src and dst 16-byte aligned) from global memory into this block's shared memory,
// counted against `bar`'s expected bytes when they land.
__device__ __forceinline__ void BulkCopyToShared(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
               ::"r"(SharedAddress(dst)), "l"(src), "r"(bytes), "r"(SharedAddress(bar))
               : "memory");
}

// bar.sync on a named barrier for `threads` threads (a subset of the block, a multiple of 32).
__device__ __forceinline__ void NamedBarrierSync(uint32_t id, uint32_t threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

#endif  // __CUDA_ARCH__ >= 900

}  // namespace cuda
}  // namespace edgeq
