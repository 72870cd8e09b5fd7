// Library entry point: ORT calls RegisterCustomOps when SessionOptions.register_custom_ops_library loads us.
#include <memory>
#include <mutex>
#include <vector>

#include "cpu/cpu_ops.h"
#include "group_quant_matmul.h"
#ifdef EDGEQ_WITH_CUDA
#include "cuda/cuda_ops.h"
#endif

namespace {

constexpr const char* kDomain = "edgeq";

// Every session that loads the library registers a domain; ORT keeps only pointers, so they live until unload.
std::vector<std::unique_ptr<Ort::CustomOpDomain>>& Domains() {
  static std::vector<std::unique_ptr<Ort::CustomOpDomain>> domains;
  return domains;
}
std::mutex domains_mutex;

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  // The library is built against the oldest headers we support; any newer runtime still serves this version.
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    // Version 1 of the API exists in every runtime, so it can still report why we refuse to load.
    return api_base->GetApi(1)->CreateStatus(ORT_FAIL, "edgeq ops: this onnxruntime is older than the headers the library was built with");
  }
  Ort::InitApi(api);
  return edgeq::StatusFrom([&] {
    auto domain = std::make_unique<Ort::CustomOpDomain>(kDomain);
    edgeq::cpu::RegisterOps(*domain);
#ifdef EDGEQ_WITH_CUDA
    edgeq::cuda::RegisterOps(*domain);
#endif
    Ort::UnownedSessionOptions(options).Add(*domain);
    std::lock_guard<std::mutex> lock(domains_mutex);
    Domains().push_back(std::move(domain));
  });
}
