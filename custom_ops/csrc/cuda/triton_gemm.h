// QuantLinear's fused int8 GEMM (custom_ops/triton_quant_linear.py), compiled ahead of time by Triton into sm_90a
// cubins that the build links in (a generated triton_cubins.cc defines the table below) and that this library
// loads and launches through the CUDA runtime. Plain C++: shared by nvcc and g++.
#pragma once

#include <cstddef>
#include <cstdint>

namespace edgeq {
namespace cuda {

// One compiled variant; the table ends with an entry whose `begin` is null (the only entry when the build had no
// Triton or no sm_90 target).
struct TritonCubin {
  bool half, w_zero, act_zero;  // Y and w_scales float16; per-channel weight zero offsets; asymmetric activations
  bool packed;                  // B holds packed 4-bit values, unpacked in registers (q's codes in K_ORDER)
  int bm, bn, threads, shared_bytes;
  const unsigned char* begin;
  const unsigned char* end;
};
extern const TritonCubin kTritonCubins[];
extern const char* const kTritonKernelName;

// Y[M, N] = T(float32(q . B^T - corrections) * (s_x * w_scales)), T = float16 when `half`; q [M, Kp] and B [N, ldb]
// int8, row-major, B one value per byte or (`packed`) QuantLinear's two 4-bit values per byte, q's codes then in
// the triton kernel's K_ORDER within each 128-code block (quant_linear_kernels.cu's kTritonRuns). w_zero/q_sum and
// act_zero/w_sum are each both set or both null (quant_linear_kernels.cu's ZeroOffset). TritonGemmFits says which
// problems the kernel takes.
struct TritonGemmArgs {
  bool half = false;
  bool packed = false;
  int M = 0, N = 0, K = 0, Kp = 0, ldb = 0;
  const int8_t* q = nullptr;
  const int8_t* B = nullptr;
  void* Y = nullptr;
  const float* s_x = nullptr;
  const void* w_scales = nullptr;
  const int8_t* w_zero = nullptr;
  const int* q_sum = nullptr;
  const int* act_zero = nullptr;
  const int* w_sum = nullptr;
};

// K % 128 == 0 (no masked loads), K < 2^15 (int32 corrections), N, Kp and ldb multiples of 16 and q, B, Y 16-byte
// aligned (the divisibility the cubins were compiled for), and a cubin for the variant in the build (packed: the
// build's packed tile for M). Null q, B or Y pass (not known yet: a kernel choice is
// made before scratch exists); LaunchTritonGemm requires them set.
bool TritonGemmFits(const TritonGemmArgs& args);

// Whether the problem has a tile for every SM of the current device. With fewer (M = 64 at N = 4096: 32 tiles on
// 132 SMs) each tile runs the whole K alone and cuBLAS's split-K kernels win (H200: 0.71x vs 0.93x of fp16).
bool TritonGemmFillsDevice(const TritonGemmArgs& args);

// Whether this build holds the cubins and the current device runs them (compute capability 9.0); loads them on
// the first call, so call it outside CUDA-graph capture first (QuantLinearWarmUp does).
bool TritonGemmAvailable();

// Enqueues the GEMM on `stream` (a cudaStream_t). Returns nullptr, or a static error text.
const char* LaunchTritonGemm(const TritonGemmArgs& args, void* stream);

}  // namespace cuda
}  // namespace edgeq
