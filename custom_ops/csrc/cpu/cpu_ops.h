#pragma once

#include "../ort_api.h"

namespace edgeq {
namespace cpu {
// Adds every CPU-EP op of the library to `domain`.
void RegisterOps(Ort::CustomOpDomain& domain);
}  // namespace cpu
}  // namespace edgeq
