// Launchers of the GroupQuantMatMul CUDA kernels. Plain C++ on purpose: this header is shared by nvcc (the .cu)
// and g++ (the op registration), and nvcc cannot compile ORT's headers.
#pragma once

#include <cstdint>

namespace edgeq {
namespace cuda {

// Which kernel runs. kAuto: decode GEMV for M <= 8 when K % 128 == 0 and A/B are 16-byte aligned, the tiled
// kernel for larger M, the generic kernel otherwise. The others force one (tests and benchmarks).
enum class GqmmKernel { kAuto, kDecode, kTiled, kGeneric };

struct GqmmArgs {
  bool half = false;  // T is float16 (else float32)
  int64_t M = 0, N = 0, K = 0, bits = 0, group_size = 0, n_groups = 0, group_bytes = 0;
  const void* A = nullptr;
  const uint8_t* B = nullptr;
  const void* scales = nullptr;
  const uint8_t* zero_points = nullptr;  // null: 2^(bits-1)
  void* Y = nullptr;
};

// Enqueues the op on `stream` (a cudaStream_t). Returns nullptr, or a static error text from the CUDA runtime.
const char* LaunchGroupQuantMatMul(const GqmmArgs& args, GqmmKernel kernel, void* stream);

// The kernel kAuto picks for these arguments ("decode", "tiled" or "generic"), for logs and tests.
const char* GroupQuantMatMulKernelName(const GqmmArgs& args, GqmmKernel kernel);

}  // namespace cuda
}  // namespace edgeq
