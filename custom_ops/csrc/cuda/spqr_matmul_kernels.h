// Launchers of the SpQRMatMul / SpQRDequantize CUDA kernels. Plain C++ on purpose: this header is shared by nvcc
// (the .cu) and g++ (the op registration), and nvcc cannot compile ORT's headers.
#pragma once

#include <cstddef>
#include <cstdint>

namespace edgeq {
namespace cuda {

// Which kernel runs. kAuto: the tensor-core decode (kDecode) for float16 with M <= 8, K % 128 == 0,
// stat_group_size % 16 == 0 and 16-byte aligned A and codes; for M > 8, dequantize W into a scratch buffer and
// multiply with cuBLAS (kGemm) when libcublas can be loaded; the generic kernel otherwise. The others force one
// (tests and benchmarks).
enum class SpqrKernel { kAuto, kDecode, kGemm, kGeneric };

struct SpqrArgs {
  bool half = false;  // T is float16 (else float32)
  int64_t M = 0, N = 0, K = 0, bits = 0, group_size = 0, stat_bits = 0, stat_group_size = 0;
  int64_t n_groups = 0, group_bytes = 0, stat_row_bytes = 0, nnz = 0;
  const void* A = nullptr;
  const uint8_t* codes = nullptr;
  const uint8_t* scale_codes = nullptr;
  const uint8_t* zero_codes = nullptr;
  const uint16_t* stats = nullptr;   // float16 bits [R, G1, 4]
  const int32_t* row_ptr = nullptr;  // [N + 1]
  const uint16_t* cols = nullptr;    // [nnz]
  const uint16_t* values = nullptr;  // float16 bits [nnz]
  void* Y = nullptr;                 // [M, N] of T; SpQRDequantize: W^T float32 [K, N]
};

// The kernel kAuto (or the pinned one) runs for these arguments, resolved; its name ("decode", "gemm" or
// "generic"); and why a pinned one cannot run them ("needs ...", a static text; nullptr if it can).
SpqrKernel PickSpqrKernel(const SpqrArgs& args, SpqrKernel requested);
const char* SpqrKernelName(SpqrKernel kernel);
const char* SpqrKernelRefusal(const SpqrArgs& args, SpqrKernel kernel);

// Device bytes of scratch the chosen kernel needs (the dequantized W for kGemm; else 0).
size_t SpqrMatMulScratchBytes(const SpqrArgs& args, SpqrKernel kernel);

// Enqueues SpQRMatMul on `stream` (a cudaStream_t); `scratch` holds SpqrMatMulScratchBytes bytes of device memory.
// Returns nullptr, or a static error text.
const char* LaunchSpqrMatMul(const SpqrArgs& args, SpqrKernel kernel, void* stream, void* scratch);

// Enqueues SpQRDequantize: W^T [K, N] float32 into args.Y (A and M unused).
const char* LaunchSpqrDequantize(const SpqrArgs& args, void* stream);

}  // namespace cuda
}  // namespace edgeq
