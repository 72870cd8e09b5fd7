// Launchers of the GroupQuantMatMul CUDA kernels. Plain C++ on purpose: this header is shared by nvcc (the .cu)
// and g++ (the op registration), and nvcc cannot compile ORT's headers.
#pragma once

#include <cstdint>

namespace edgeq {
namespace cuda {

// Which kernel runs. kAuto: for float16, the coalesced half2 decode (kDecodeHalf2) at M = 1, 4 bits, K <= 4096,
// else the tensor-core decode (kDecodeMma) for M <= 8 when K % 128 == 0 and A/B are 16-byte aligned; for float32 the FMA decode GEMV (kDecode) under the same conditions; for larger
// M, dequantize W into a scratch buffer and multiply with cuBLAS (kGemm) when libcublas can be loaded, else the
// tiled kernel; the generic kernel otherwise. The others force one (tests and benchmarks).
// kDecodeRows: the decode family without the batch-1 streaming kernel (comparisons). kDecodeMma: the tensor-core
// decode (float16 only), which kAuto prefers for float16 where it fits.
// kDecodeHalf2: the decode with half2 dequantization on the CUDA cores (float16 only).
enum class GqmmKernel { kAuto, kDecode, kTiled, kGeneric, kGemm, kDecodeRows, kDecodeMma, kDecodeHalf2 };

struct GqmmArgs {
  bool half = false;  // T is float16 (else float32)
  int64_t M = 0, N = 0, K = 0, bits = 0, group_size = 0, n_groups = 0, group_bytes = 0;
  const void* A = nullptr;
  const uint8_t* B = nullptr;
  const void* scales = nullptr;
  const uint8_t* zero_points = nullptr;  // null: 2^(bits-1)
  void* Y = nullptr;
};

// Device bytes of scratch the chosen kernel needs (the dequantized W for kGemm; else 0).
size_t GroupQuantMatMulScratchBytes(const GqmmArgs& args, GqmmKernel kernel);

// Enqueues the op on `stream` (a cudaStream_t); `scratch` holds GroupQuantMatMulScratchBytes bytes of device
// memory. Returns nullptr, or a static error text.
const char* LaunchGroupQuantMatMul(const GqmmArgs& args, GqmmKernel kernel, void* stream, void* scratch);

// The kernel kAuto picks for these arguments ("decode-mma", "decode", "gemm", "tiled" or "generic"), for logs and
// tests.
const char* GroupQuantMatMulKernelName(const GqmmArgs& args, GqmmKernel kernel);

// Why the chosen kernel cannot run these arguments ("needs ...", a static text), or nullptr.
const char* GroupQuantMatMulRefusal(const GqmmArgs& args, GqmmKernel kernel);

}  // namespace cuda
}  // namespace edgeq
