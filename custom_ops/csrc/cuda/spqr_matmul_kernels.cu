// CUDA kernels of edgeq::SpQRMatMul and edgeq::SpQRDequantize (layout: custom_ops/schema.py SPQR_MATMUL). The
// kernels themselves are the group-quantized linears' (group_kernels.cuh) with SpqrWeights as the policy:
//   decode  (float16, M <= 8, K % 128 == 0, β2 % 16 == 0): MmaDecodeKernel, tensor cores; codes, stat codes and
//           second-level statistics decoded in registers, the rows' outliers added in the same kernel.
//   gemm    (M > 8): DequantizeKernel + ScatterOutliersKernel into a scratch W [N, K] of T, then cuBLAS.
//   generic (anything else, float32 decode included): GenericKernel, one block per row of W.
#include "spqr_matmul_kernels.h"

#include <cuda_fp16.h>

#include "cublas_gemm.h"
#include "group_kernels.cuh"

namespace edgeq {
namespace cuda {
namespace {

SpqrWeights Weights(const SpqrArgs& a) {
  SpqrWeights w;
  w.codes = a.codes;
  w.row_bytes = a.n_groups * a.group_bytes;
  w.scale_codes = a.scale_codes;
  w.zero_codes = a.zero_codes;
  w.stats = reinterpret_cast<const uint2*>(a.stats);
  w.row_ptr = a.row_ptr;
  w.cols = a.cols;
  w.values = a.values;
  w.nnz = a.nnz;
  w.n_groups = static_cast<int>(a.n_groups);
  w.group_size = static_cast<int>(a.group_size);
  w.bits = static_cast<int>(a.bits);
  w.stat_bits = static_cast<int>(a.stat_bits);
  w.stat_row_bytes = static_cast<int>(a.stat_row_bytes);
  w.SetStatGroupSize(static_cast<int>(a.stat_group_size));
  return w;
}

bool DecodeFits(const SpqrArgs& a) { return MmaDecodeFits(a.half, a.M, a.K, a.A, Weights(a)); }

const char* LastError() {
  const cudaError_t status = cudaGetLastError();
  return status == cudaSuccess ? nullptr : cudaGetErrorString(status);
}

}  // namespace

SpqrKernel PickSpqrKernel(const SpqrArgs& a, SpqrKernel requested) {
  if (requested != SpqrKernel::kAuto) return requested;
  if (DecodeFits(a)) return SpqrKernel::kDecode;
  if (a.M > kMmaMaxM && CublasAvailable()) return SpqrKernel::kGemm;
  return SpqrKernel::kGeneric;
}

const char* SpqrKernelName(SpqrKernel kernel) {
  switch (kernel) {
    case SpqrKernel::kDecode: return "decode";
    case SpqrKernel::kGemm: return "gemm";
    case SpqrKernel::kGeneric: return "generic";
    default: return "auto";
  }
}

const char* SpqrKernelRefusal(const SpqrArgs& a, SpqrKernel kernel) {
  if (kernel == SpqrKernel::kDecode && !DecodeFits(a))
    return "needs float16, M <= 8, K % 128 == 0, stat_group_size % 16 == 0 and 16-byte aligned A and codes";
  if (kernel == SpqrKernel::kGemm && !CublasAvailable()) return "needs libcublas, which could not be loaded";
  return nullptr;
}

size_t SpqrMatMulScratchBytes(const SpqrArgs& a, SpqrKernel kernel) {
  if (PickSpqrKernel(a, kernel) != SpqrKernel::kGemm) return 0;
  return static_cast<size_t>(a.N) * a.K * (a.half ? 2 : 4);
}

const char* LaunchSpqrMatMul(const SpqrArgs& a, SpqrKernel kernel, void* stream, void* scratch) {
  const SpqrKernel chosen = PickSpqrKernel(a, kernel);
  if (const char* refusal = SpqrKernelRefusal(a, chosen)) return refusal;
  auto s = static_cast<cudaStream_t>(stream);
  const SpqrWeights w = Weights(a);
  switch (chosen) {
    case SpqrKernel::kDecode:
      LaunchMmaDecode(static_cast<const __half*>(a.A), w, static_cast<__half*>(a.Y), a.M, a.N, a.K, s);
      return LastError();
    case SpqrKernel::kGemm: {
      if (scratch == nullptr) return "the gemm kernel needs scratch memory";
      if (a.half) LaunchDequantize(w, static_cast<__half*>(scratch), a.N, a.K, /*outliers=*/true, s);
      else LaunchDequantize(w, static_cast<float*>(scratch), a.N, a.K, /*outliers=*/true, s);
      if (const char* error = LastError()) return error;
      return CublasGemm(a.half, a.A, scratch, a.Y, static_cast<int>(a.M), static_cast<int>(a.N),
                        static_cast<int>(a.K), stream);
    }
    default:
      if (a.half) LaunchGeneric(static_cast<const __half*>(a.A), w, static_cast<__half*>(a.Y), a.M, a.N, a.K, s);
      else LaunchGeneric(static_cast<const float*>(a.A), w, static_cast<float*>(a.Y), a.M, a.N, a.K, s);
      return LastError();
  }
}

const char* LaunchSpqrDequantize(const SpqrArgs& a, void* stream) {
  LaunchDequantize<float, SpqrWeights, /*TRANSPOSED=*/true>(Weights(a), static_cast<float*>(a.Y), a.N, a.K,
                                                             /*outliers=*/true, static_cast<cudaStream_t>(stream));
  return LastError();
}

}  // namespace cuda
}  // namespace edgeq
