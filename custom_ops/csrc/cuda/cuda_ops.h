#pragma once

#include "../ort_api.h"

namespace edgeq {
namespace cuda {
// Adds every CUDA-EP op of the library to `domain`.
void RegisterOps(Ort::CustomOpDomain& domain);
}  // namespace cuda
}  // namespace edgeq
