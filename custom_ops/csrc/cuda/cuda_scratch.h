// Host-side helpers shared by the CUDA-EP ops: scratch device memory from ORT's allocator, and the environment
// variable that pins one kernel. Includes ORT (through ort_api.h): for the .cc files only, never a .cu.
#pragma once

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "../op_checks.h"
#include "../ort_api.h"

namespace edgeq {
namespace cuda {

// Device memory from the kernel context's allocator for the duration of one Compute. `input` is an input that
// lives on the device the memory is for. The arena may hand the memory to the next kernel right after we enqueue,
// which is safe because every user runs on ORT's one compute stream.
struct Scratch {
  Scratch(Ort::KernelContext& ctx, size_t input, size_t bytes, const std::string& where) {
    if (bytes == 0) return;
    Ort::ConstMemoryInfo memory = ctx.GetInput(input).GetTensorMemoryInfo();
    Ort::MemoryInfo cuda("Cuda", OrtArenaAllocator, memory.GetDeviceId(), OrtMemTypeDefault);
    allocator = ctx.GetAllocator(*static_cast<const OrtMemoryInfo*>(cuda));
    if (allocator == nullptr) throw std::runtime_error(where + ": no CUDA allocator for the scratch buffer");
    data = allocator->Alloc(allocator, bytes);
    if (data == nullptr) throw std::runtime_error(where + ": could not allocate " + std::to_string(bytes) + " bytes");
  }
  ~Scratch() {
    if (allocator == nullptr) return;
    if (data) allocator->Free(allocator, data);
    Ort::GetApi().ReleaseAllocator(allocator);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  OrtAllocator* allocator = nullptr;
  void* data = nullptr;
};

// The kernel pinned by environment variable `variable` (read when the session is created): names[i] maps to
// values[i]; unset, empty or "auto" gives `automatic`. Anything else is an InvalidArgument naming the choices.
template <typename Choice, size_t Count>
Choice KernelFromEnv(const char* variable, const char* const (&names)[Count], const Choice (&values)[Count],
                     Choice automatic, const std::string& where) {
  const char* value = std::getenv(variable);
  if (value == nullptr || *value == '\0' || std::strcmp(value, "auto") == 0) return automatic;
  std::string choices = "auto";
  for (size_t i = 0; i < Count; ++i) {
    if (std::strcmp(value, names[i]) == 0) return values[i];
    choices += std::string(", ") + names[i];
  }
  throw InvalidArgument(where + ": " + variable + "=" + value + " is not one of " + choices);
}

}  // namespace cuda
}  // namespace edgeq
