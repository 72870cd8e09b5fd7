// Launchers of the QuantLinear CUDA kernels. Plain C++ on purpose: shared by nvcc (the .cu) and g++ (the op
// registration), and nvcc cannot compile ORT's headers.
#pragma once

#include <cstddef>
#include <cstdint>

namespace edgeq {
namespace cuda {

// Which GEMM runs after the per-token quantization. kAuto, when B's rows are whole 16-byte vectors: decode for
// M <= 8, else kTriton where it fits and the build holds it, else kCublas where it fits and libcublas loads, else
// the mma.sync tensor-core kernel (tile from M); the generic kernel for any other layout. The others force one
// (tests and benchmarks): kWgmma (Hopper warpgroup MMAs, sm_90a builds only), kMma picks the mma.sync tile,
// kMma256 (128x256), kMma128, kMma128x64 and kMma64 pin it; kCublas takes the int32 sums from cuBLASLt's int8 GEMM
// (packed weights widened first; K % 64 == 0, N % 4 == 0, a 16-byte aligned Y) and applies the epilogue in a
// second kernel; kTriton is the Triton-compiled wgmma GEMM with the epilogue inside (triton_gemm.h; packed weights
// unpacked in registers up to M = 1024, widened first above; K % 128 == 0, K < 2^15, N % 16 == 0, 16-byte aligned
// B and Y, a compute capability 9.0 GPU).
enum class QlKernel { kAuto, kDecode, kWgmma, kMma, kMma256, kMma128, kMma128x64, kMma64, kCublas, kTriton, kGeneric };

struct QlArgs {
  bool half = false;  // T is float16 (else float32)
  int64_t M = 0, N = 0, K = 0, wbits = 0, abits = 0;
  int64_t row_bytes = 0;  // bytes per row of B
  const void* A = nullptr;
  const int8_t* B = nullptr;
  const void* w_scales = nullptr;
  const int8_t* w_zero = nullptr;  // per-channel zero offsets [N], or nullptr (symmetric weights)
  const int32_t* w_sum = nullptr;  // [N] sum_k W[n, k], set exactly when activations are asymmetric (act_sym=0)
  void* Y = nullptr;
};

// Device bytes of scratch one call of `kernel` needs: the quantized activations [M, K rounded up to 64], their
// scales, code sums and zero points; for the cublas kernel also its int32 sums, widened weights and workspace; for
// the triton kernel the widened weights.
size_t QuantLinearScratchBytes(const QlArgs& args, QlKernel kernel);

// nullptr when `kernel` can run these arguments, else why not (static text).
const char* QuantLinearKernelProblem(const QlArgs& args, QlKernel kernel);

// Enqueues the op on `stream` (a cudaStream_t) with QuantLinearScratchBytes of device scratch. Returns nullptr,
// or a static error text.
const char* LaunchQuantLinear(const QlArgs& args, QlKernel kernel, void* stream, void* scratch);

// The kernel kAuto (or `kernel`) resolves to: "decode", "wgmma", "mma256", "mma128", "mma128x64", "mma64",
// "cublas", "triton" or "generic".
const char* QuantLinearKernelName(const QlArgs& args, QlKernel kernel);

// Settles, outside any CUDA-graph capture, what the first launch would otherwise do lazily (whether this build
// holds the wgmma kernel: a probe launch and a synchronous copy; loading the Triton cubins). Call at kernel creation.
void QuantLinearWarmUp();

}  // namespace cuda
}  // namespace edgeq
