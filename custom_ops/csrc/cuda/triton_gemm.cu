// Loading and launching the Triton cubins of triton_gemm.h. A cudaLibrary_t is context-independent: loaded once
// per process, its kernel is set up per device (the dynamic shared memory opt-in) the first time that device asks.
#include "triton_gemm.h"

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

namespace edgeq {
namespace cuda {
namespace {

constexpr int kBK = 128;
constexpr int kMaxDevices = 64;

struct Loaded {
  const TritonCubin* cubin;
  cudaKernel_t kernel;
};

// What a device was found to be the first time it asked (queried once: the choice is made on every call).
struct Device {
  enum { kUnknown, kReady, kUnusable } state = kUnknown;
  int sms = 0;
};

std::mutex mutex;
std::vector<Loaded>* loaded = nullptr;  // null until the first TritonGemmAvailable; empty when unusable
Device devices[kMaxDevices];

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }  // null passes

// A device runs the cubins when it has compute capability 9.0 (sm_90a machine code runs there only) and takes
// every kernel's dynamic shared memory opt-in.
Device SetUp(int device) {
  Device d;
  int major = 0, minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    cudaGetLastError();
    d.state = Device::kUnusable;
    return d;
  }
  d.state = major == 9 && minor == 0 ? Device::kReady : Device::kUnusable;
  for (const Loaded& l : *loaded) {
    if (d.state == Device::kReady &&
        cudaKernelSetAttributeForDevice(l.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        l.cubin->shared_bytes, device) != cudaSuccess) {
      cudaGetLastError();
      d.state = Device::kUnusable;
    }
  }
  return d;
}

// Under `mutex`: the kernels of every cubin (once), then the current device's state (once per device); the
// current device's entry, or null when the cubins cannot run there.
const Device* Prepare() {
  if (loaded == nullptr) {
    loaded = new std::vector<Loaded>();
    for (const TritonCubin* c = kTritonCubins; c->begin != nullptr; ++c) {
      cudaLibrary_t library = nullptr;
      cudaKernel_t kernel = nullptr;
      if (cudaLibraryLoadData(&library, c->begin, nullptr, nullptr, 0, nullptr, nullptr, 0) != cudaSuccess ||
          cudaLibraryGetKernel(&kernel, library, kTritonKernelName) != cudaSuccess) {
        cudaGetLastError();  // not sticky: leave no error behind for the next launch check
        loaded->clear();
        break;
      }
      loaded->push_back({c, kernel});
    }
  }
  if (loaded->empty()) return nullptr;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device >= kMaxDevices) {
    cudaGetLastError();
    return nullptr;
  }
  Device& d = devices[device];
  if (d.state == Device::kUnknown) d = SetUp(device);
  return d.state == Device::kReady ? &d : nullptr;
}

// The build's cubin for a problem, or null. 8-bit weights: 64-token tiles up to M = 1024 (fastest or within 3% up
// to M = 512 on the H200) and 128-token ones above, EDGEQ_TRITON_TILE=small|large pinning one (benchmarks).
// Packed weights: 64 weight rows per tile up to M = 512, 128 above (H200, BENCHMARKS.md).
const TritonCubin* Variant(const TritonGemmArgs& a) {
  static const int pinned = [] {
    const char* env = std::getenv("EDGEQ_TRITON_TILE");
    if (env == nullptr) return 0;
    return std::strcmp(env, "small") == 0 ? 64 : std::strcmp(env, "large") == 0 ? 128 : 0;
  }();
  const int bm = pinned ? pinned : a.M <= 1024 ? 64 : 128;
  const bool w_zero = a.w_zero != nullptr, act_zero = a.act_zero != nullptr;
  for (const TritonCubin* c = kTritonCubins; c->begin != nullptr; ++c) {
    if (c->half == a.half && c->w_zero == w_zero && c->act_zero == act_zero && c->packed == a.packed &&
        (a.packed ? c->bn == (a.M <= 512 ? 64 : 128) : c->bm == bm))
      return c;
  }
  return nullptr;
}

}  // namespace

bool TritonGemmFillsDevice(const TritonGemmArgs& a) {
  const TritonCubin* c = Variant(a);
  int sms = 0;
  {
    std::lock_guard<std::mutex> lock(mutex);
    const Device* d = Prepare();
    if (c == nullptr || d == nullptr) return false;
    sms = d->sms;
  }
  return static_cast<int64_t>((a.M + c->bm - 1) / c->bm) * ((a.N + c->bn - 1) / c->bn) >= sms;
}

bool TritonGemmFits(const TritonGemmArgs& a) {
  return a.K % kBK == 0 && a.K < (1 << 15) && a.N % 16 == 0 && a.Kp % 16 == 0 && a.ldb % 16 == 0 && a.Kp >= a.K &&
         a.ldb >= (a.packed ? a.K / 2 : a.K) && Aligned16(a.q) && Aligned16(a.B) && Aligned16(a.Y) &&
         Variant(a) != nullptr;
}

bool TritonGemmAvailable() {
  std::lock_guard<std::mutex> lock(mutex);
  return Prepare() != nullptr;
}

const char* LaunchTritonGemm(const TritonGemmArgs& a, void* stream) {
  if (a.q == nullptr || a.B == nullptr || a.Y == nullptr || !TritonGemmFits(a))
    return "the triton kernel needs K % 128 == 0, K < 32768, N % 16 == 0 and 16-byte aligned operands";
  if (!TritonGemmAvailable())
    return "the triton kernel needs a build with Triton installed (its sm_90a cubins) and a compute capability 9.0 GPU";
  const TritonCubin* variant = Variant(a);
  const Loaded* chosen = nullptr;
  for (const Loaded& l : *loaded) {
    if (l.cubin == variant) chosen = &l;
  }
  if (chosen == nullptr) return "the triton kernel: its cubin did not load";
  const TritonCubin& c = *variant;
  const unsigned tiles = static_cast<unsigned>(((a.M + c.bm - 1) / c.bm) * ((a.N + c.bn - 1) / c.bn));
  const void *q = a.q, *B = a.B, *Y = a.Y, *s_x = a.s_x, *ws = a.w_scales, *wz = a.w_zero, *qs = a.q_sum,
             *az = a.act_zero, *wsum = a.w_sum, *global_scratch = nullptr, *profile_scratch = nullptr;
  int M = a.M, N = a.N, K = a.K, Kp = a.Kp, ldb = a.ldb;
  void* params[] = {&q, &B, &Y, &s_x, &ws, &wz, &qs, &az, &wsum, &M, &N, &K, &Kp, &ldb, &global_scratch,
                    &profile_scratch};
  const cudaError_t status =
      cudaLaunchKernel(reinterpret_cast<const void*>(chosen->kernel), dim3(tiles), dim3(c.threads), params,
                       static_cast<size_t>(c.shared_bytes), static_cast<cudaStream_t>(stream));
  return status == cudaSuccess ? nullptr : cudaGetErrorString(status);
}

}  // namespace cuda
}  // namespace edgeq
