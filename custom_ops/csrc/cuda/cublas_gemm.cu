// The cuBLAS entry points the gemm paths use, resolved once with dlopen. The enum values passed below are
// cuBLAS's stable ABI (cublasOperation_t, cudaDataType, cublasComputeType_t, cublasGemmAlgo_t).
#include "cublas_gemm.h"

#include <cuda_runtime.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <map>
#include <mutex>
#include <tuple>

namespace edgeq {
namespace cuda {
namespace {

// The first of `names` that loads, preferring a copy ORT's CUDA provider already loaded; nullptr if none does.
void* OpenFirst(std::initializer_list<const char*> names) {
  for (const char* name : names) {
    void* lib = dlopen(name, RTLD_NOW | RTLD_NOLOAD);
    if (!lib) lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (lib) return lib;
  }
  return nullptr;
}

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
    void* lib = OpenFirst({"libcublas.so.13", "libcublas.so.12", "libcublas.so"});
    if (!lib) return;
    create = reinterpret_cast<Create>(dlsym(lib, "cublasCreate_v2"));
    set_stream = reinterpret_cast<SetStream>(dlsym(lib, "cublasSetStream_v2"));
    gemm_ex = reinterpret_cast<GemmEx>(dlsym(lib, "cublasGemmEx"));
  }
};

// cuBLASLt, for the int8 GEMM: unlike cublasGemmEx it lists its candidate kernels, and the one its heuristic ranks
// first is often not the fastest at prefill shapes (H200, M = 512: a 128x64 tile over two waves). The structs below
// mirror cublasLt.h's (stable ABI).
struct LtAlgo {
  uint64_t data[8];
};
struct LtHeuristicResult {
  LtAlgo algo;
  size_t workspace_size;
  int state;
  float waves;
  int reserved[4];
};

struct CublasLt {
  using Create = int (*)(void**);
  using DescCreate = int (*)(void**, int, int);
  using SetAttribute = int (*)(void*, int, const void*, size_t);
  using LayoutCreate = int (*)(void**, int, uint64_t, uint64_t, int64_t);
  using PreferenceCreate = int (*)(void**);
  using Destroy = int (*)(void*);
  using Heuristic = int (*)(void*, void*, void*, void*, void*, void*, void*, int, LtHeuristicResult*, int*);
  using Matmul = int (*)(void*, void*, const void*, const void*, void*, const void*, void*, const void*, const void*,
                         void*, void*, void*, const LtAlgo*, void*, size_t, cudaStream_t);
  Create create = nullptr;
  DescCreate desc_create = nullptr;
  SetAttribute desc_set = nullptr, preference_set = nullptr;
  LayoutCreate layout_create = nullptr;
  PreferenceCreate preference_create = nullptr;
  Destroy preference_destroy = nullptr;
  Heuristic heuristic = nullptr;
  Matmul matmul = nullptr;

  static CublasLt& Get() {
    static CublasLt instance;
    return instance;
  }
  bool Loaded() const {
    return create && desc_create && desc_set && preference_set && layout_create && preference_create &&
           preference_destroy && heuristic && matmul;
  }

 private:
  CublasLt() {
    void* lib = OpenFirst({"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"});
    if (!lib) return;
    create = reinterpret_cast<Create>(dlsym(lib, "cublasLtCreate"));
    desc_create = reinterpret_cast<DescCreate>(dlsym(lib, "cublasLtMatmulDescCreate"));
    desc_set = reinterpret_cast<SetAttribute>(dlsym(lib, "cublasLtMatmulDescSetAttribute"));
    layout_create = reinterpret_cast<LayoutCreate>(dlsym(lib, "cublasLtMatrixLayoutCreate"));
    preference_create = reinterpret_cast<PreferenceCreate>(dlsym(lib, "cublasLtMatmulPreferenceCreate"));
    preference_set = reinterpret_cast<SetAttribute>(dlsym(lib, "cublasLtMatmulPreferenceSetAttribute"));
    preference_destroy = reinterpret_cast<Destroy>(dlsym(lib, "cublasLtMatmulPreferenceDestroy"));
    heuristic = reinterpret_cast<Heuristic>(dlsym(lib, "cublasLtMatmulAlgoGetHeuristic"));
    matmul = reinterpret_cast<Matmul>(dlsym(lib, "cublasLtMatmul"));
  }
};

// One int8 GEMM shape: its descriptors (kept for the process) and the kernel chosen for it.
struct LtPlan {
  void* desc = nullptr;
  void* w_layout = nullptr;
  void* x_layout = nullptr;
  void* y_layout = nullptr;
  LtAlgo algo{};
  size_t workspace = 0;
  bool chosen = false;
  bool tuned = false;  // timed against the other candidates, not only the heuristic's first
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

namespace {

constexpr int kR8I = 3, kR32I = 10, kCompute32I = 72;
constexpr int kDescTransA = 3, kPreferenceMaxWorkspace = 1;  // cublasLt.h attribute enums (stable ABI)

// The GemmEx route, for a cuBLAS without cuBLASLt.
const char* GemmExInt8(const int8_t* A, const int8_t* W, int32_t* Y, int M, int N, int K, void* stream) {
  Cublas& cublas = Cublas::Get();
  if (!cublas.Loaded()) return "libcublas could not be loaded for the int8 gemm";
  std::lock_guard<std::mutex> lock(cublas.mutex);
  const char* error = nullptr;
  void* handle = HandleFor(cublas, stream, error);
  if (handle == nullptr) return error;
  const int32_t alpha = 1, beta = 0;
  const int status = cublas.gemm_ex(handle, kOpT, kOpN, N, M, K, &alpha, W, kR8I, K, A, kR8I, K, &beta, Y, kR32I, N,
                                    kCompute32I, kAlgoDefault);
  return status == 0 ? nullptr : "cublasGemmEx (int8) refused the shape";
}

// Times each candidate on the stream (a warm-up, then the best of three) and returns the fastest one's index.
int FastestCandidate(CublasLt& lt, void* handle, const LtPlan& plan, const LtHeuristicResult* found, int count,
                     const int8_t* A, const int8_t* W, int32_t* Y, void* workspace, cudaStream_t stream) {
  const int32_t alpha = 1, beta = 0;
  cudaEvent_t start, stop;
  if (cudaEventCreate(&start) != cudaSuccess) return 0;
  if (cudaEventCreate(&stop) != cudaSuccess) {
    cudaEventDestroy(start);
    return 0;
  }
  int best = 0;
  float best_ms = 1e30f;
  for (int i = 0; i < count; ++i) {
    float ms = 1e30f;
    for (int run = 0; run < 4; ++run) {
      cudaEventRecord(start, stream);
      const int status = lt.matmul(handle, plan.desc, &alpha, W, plan.w_layout, A, plan.x_layout, &beta, Y,
                                   plan.y_layout, Y, plan.y_layout, &found[i].algo, workspace,
                                   found[i].workspace_size, stream);
      cudaEventRecord(stop, stream);
      if (status != 0 || cudaEventSynchronize(stop) != cudaSuccess) {
        ms = 1e30f;
        break;
      }
      float elapsed = 0.f;
      cudaEventElapsedTime(&elapsed, start, stop);
      if (run > 0) ms = std::min(ms, elapsed);
    }
    if (ms < best_ms) {
      best_ms = ms;
      best = i;
    }
  }
  cudaGetLastError();  // a candidate that failed to launch must not fail the next call
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return best;
}

bool TuningEnabled() {
  const char* value = std::getenv("EDGEQ_CUBLASLT_TUNE");
  return value == nullptr || std::strcmp(value, "0") != 0;
}

}  // namespace

// Row-major Y = A @ W^T as cuBLASLt's column-major Y^T = op(W) * A^T with op(W) = T (the "TN" layout its int8
// tensor-core kernels take). The first call of a shape outside stream capture times up to eight candidates and
// keeps the fastest (the result is exact either way: integer sums); inside a capture it takes the heuristic's first.
const char* CublasGemmInt8(const int8_t* A, const int8_t* W, int32_t* Y, int M, int N, int K, void* stream,
                           void* workspace, size_t workspace_bytes) {
  CublasLt& lt = CublasLt::Get();
  if (!lt.Loaded()) return GemmExInt8(A, W, Y, M, N, K, stream);
  static std::mutex mutex;
  static std::map<std::tuple<int, int, int, int, size_t>, LtPlan> plans;
  static void* handles[64] = {nullptr};
  std::lock_guard<std::mutex> lock(mutex);
  int device = 0;
  cudaGetDevice(&device);
  if (device < 0 || device >= 64) return "device index out of range for the cuBLASLt handle table";
  if (handles[device] == nullptr && lt.create(&handles[device]) != 0) {
    handles[device] = nullptr;
    return "cublasLtCreate failed";
  }
  void* handle = handles[device];
  if (workspace == nullptr) workspace_bytes = 0;
  auto s = static_cast<cudaStream_t>(stream);
  LtPlan& plan = plans[std::make_tuple(device, M, N, K, workspace_bytes)];
  if (plan.desc == nullptr) {
    const int trans = kOpT;
    if (lt.desc_create(&plan.desc, kCompute32I, kR32I) != 0 || lt.desc_set(plan.desc, kDescTransA, &trans, sizeof(trans)) != 0 ||
        lt.layout_create(&plan.w_layout, kR8I, K, N, K) != 0 || lt.layout_create(&plan.x_layout, kR8I, K, M, K) != 0 ||
        lt.layout_create(&plan.y_layout, kR32I, N, M, N) != 0) {
      plans.erase(std::make_tuple(device, M, N, K, workspace_bytes));
      return "cuBLASLt could not describe the int8 gemm";
    }
  }
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  cudaStreamIsCapturing(s, &capture);
  const bool can_time = capture == cudaStreamCaptureStatusNone && TuningEnabled();
  if (!plan.chosen || (!plan.tuned && can_time)) {
    void* preference = nullptr;
    if (lt.preference_create(&preference) != 0) return "cuBLASLt could not create a preference";
    const uint64_t limit = workspace_bytes;
    lt.preference_set(preference, kPreferenceMaxWorkspace, &limit, sizeof(limit));
    constexpr int kCandidates = 8;
    LtHeuristicResult found[kCandidates];
    int count = 0;
    const int status = lt.heuristic(handle, plan.desc, plan.w_layout, plan.x_layout, plan.y_layout, plan.y_layout,
                                    preference, can_time ? kCandidates : 1, found, &count);
    lt.preference_destroy(preference);
    if (status != 0 || count == 0) return GemmExInt8(A, W, Y, M, N, K, stream);
    const int pick = can_time && count > 1 ? FastestCandidate(lt, handle, plan, found, count, A, W, Y, workspace, s) : 0;
    plan.algo = found[pick].algo;
    plan.workspace = found[pick].workspace_size;
    plan.chosen = true;
    plan.tuned = can_time;
  }
  const int32_t alpha = 1, beta = 0;
  const int status = lt.matmul(handle, plan.desc, &alpha, W, plan.w_layout, A, plan.x_layout, &beta, Y, plan.y_layout,
                               Y, plan.y_layout, &plan.algo, workspace, plan.workspace, s);
  return status == 0 ? nullptr : "cublasLtMatmul (int8) refused the shape";
}

}  // namespace cuda
}  // namespace edgeq
