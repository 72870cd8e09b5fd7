// Y = A @ W^T through cuBLAS, resolved at run time (dlopen) so that the library neither links libcublas nor
// needs its headers at build time: the "dequantize, then GEMM" path of the group-quantized linears. Plain C++.
#pragma once

#include <cstddef>
#include <cstdint>

namespace edgeq {
namespace cuda {

// Whether libcublas could be loaded (ORT's CUDA provider has normally loaded it already).
bool CublasAvailable();

// Row-major Y[M, N] = A[M, K] @ W[N, K]^T, all float16 (`half`) or all float32, fp32 accumulation, enqueued on
// `stream` (a cudaStream_t). Returns nullptr, or a static error text.
const char* CublasGemm(bool half, const void* A, const void* W, void* Y, int M, int N, int K, void* stream);

// Row-major int32 Y[M, N] = int8 A[M, K] @ int8 W[N, K]^T, exact int32 accumulation (the integer ops' dot
// products), enqueued on `stream` through cuBLASLt (cublasGemmEx where it is missing). `workspace` (device memory
// of `workspace_bytes`, may be null) widens the choice of kernels. Returns nullptr, or a static error text (cuBLAS
// refuses some shapes). EDGEQ_CUBLASLT_TUNE=0 keeps the heuristic's first kernel instead of timing candidates.
const char* CublasGemmInt8(const int8_t* A, const int8_t* W, int32_t* Y, int M, int N, int K, void* stream,
                           void* workspace = nullptr, size_t workspace_bytes = 0);

}  // namespace cuda
}  // namespace edgeq
