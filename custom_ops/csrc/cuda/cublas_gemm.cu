// The cuBLAS entry points the gemm paths use, resolved once with dlopen. The enum values passed below are
// cuBLAS's stable ABI (cublasOperation_t, cudaDataType, cublasComputeType_t, cublasGemmAlgo_t).
#include "cublas_gemm.h"

#include <cuda_runtime.h>
#include <dlfcn.h>

#include <mutex>

namespace edgeq {
namespace cuda {
namespace {

struct Cublas {
  using Create = int (*)(void**);
  using SetStream = int (*)(void*, cudaStream_t);
  using GemmEx = int (*)(void*, int, int, int, int, int, const void*, const void*, int, int, const void*, int, int,
                         const void*, void*, int, int, int, int);
  Create create = nullptr;
  SetStream set_stream = nullptr;
  GemmEx gemm_ex = nullptr;
  std::mutex mutex;  // one handle per device, and SetStream + GemmEx must not interleave across threads
  void* handles[64] = {nullptr};

  static Cublas& Get() {
    static Cublas instance;
    return instance;
  }

  bool Loaded() const { return create && set_stream && gemm_ex; }

 private:
  Cublas() {
    const char* names[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so"};
    void* lib = nullptr;
    for (const char* name : names) {
      lib = dlopen(name, RTLD_NOW | RTLD_NOLOAD);  // prefer the copy ORT's provider already loaded
      if (!lib) lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (lib) break;
    }
    if (!lib) return;
    create = reinterpret_cast<Create>(dlsym(lib, "cublasCreate_v2"));
    set_stream = reinterpret_cast<SetStream>(dlsym(lib, "cublasSetStream_v2"));
    gemm_ex = reinterpret_cast<GemmEx>(dlsym(lib, "cublasGemmEx"));
  }
};

// The calling device's handle, bound to `stream`; nullptr and `error` set when cuBLAS cannot give one. The
// caller holds the mutex until its GemmEx is enqueued.
void* HandleFor(Cublas& cublas, void* stream, const char*& error) {
  int device = 0;
  cudaGetDevice(&device);
  if (device < 0 || device >= 64) {
    error = "device index out of range for the cuBLAS handle table";
    return nullptr;
  }
  void*& handle = cublas.handles[device];
  if (handle == nullptr && cublas.create(&handle) != 0) {
    handle = nullptr;
    error = "cublasCreate failed";
    return nullptr;
  }
  if (cublas.set_stream(handle, static_cast<cudaStream_t>(stream)) != 0) {
    error = "cublasSetStream failed";
    return nullptr;
  }
  return handle;
}

constexpr int kOpN = 0, kOpT = 1, kAlgoDefault = -1;

}  // namespace

bool CublasAvailable() { return Cublas::Get().Loaded(); }

// Row-major Y = A @ W^T is column-major Y^T = W^T' * A^T: op(W) = T, op(A) = N.
const char* CublasGemm(bool half, const void* A, const void* W, void* Y, int M, int N, int K, void* stream) {
  Cublas& cublas = Cublas::Get();
  if (!cublas.Loaded()) return "libcublas could not be loaded for the gemm kernel";
  std::lock_guard<std::mutex> lock(cublas.mutex);
  const char* error = nullptr;
  void* handle = HandleFor(cublas, stream, error);
  if (handle == nullptr) return error;
  constexpr int kR32F = 0, kR16F = 2, kCompute32F = 68;
  const float alpha = 1.f, beta = 0.f;
  const int type = half ? kR16F : kR32F;
  const int status = cublas.gemm_ex(handle, kOpT, kOpN, N, M, K, &alpha, W, type, K, A, type, K, &beta, Y, type, N,
                                    kCompute32F, kAlgoDefault);
  return status == 0 ? nullptr : "cublasGemmEx failed";
}

// The same layout with int8 operands, int32 output and CUBLAS_COMPUTE_32I (integer alpha and beta).
const char* CublasGemmInt8(const int8_t* A, const int8_t* W, int32_t* Y, int M, int N, int K, void* stream) {
  Cublas& cublas = Cublas::Get();
  if (!cublas.Loaded()) return "libcublas could not be loaded for the int8 gemm";
  std::lock_guard<std::mutex> lock(cublas.mutex);
  const char* error = nullptr;
  void* handle = HandleFor(cublas, stream, error);
  if (handle == nullptr) return error;
  constexpr int kR8I = 3, kR32I = 10, kCompute32I = 72;
  const int32_t alpha = 1, beta = 0;
  const int status = cublas.gemm_ex(handle, kOpT, kOpN, N, M, K, &alpha, W, kR8I, K, A, kR8I, K, &beta, Y, kR32I, N,
                                    kCompute32I, kAlgoDefault);
  return status == 0 ? nullptr : "cublasGemmEx (int8) refused the shape";
}

}  // namespace cuda
}  // namespace edgeq
