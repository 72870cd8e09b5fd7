#pragma once

#include "../ort_api.h"

namespace edgeq {
namespace cpu {
// Adds every CPU-EP op of the library to `domain`.
void RegisterOps(Ort::CustomOpDomain& domain);
// Adds edgeq::QuantLinear (quant_linear_cpu.cc); called by RegisterOps.
void RegisterQuantLinear(Ort::CustomOpDomain& domain);
// Adds edgeq::SpQRMatMul and edgeq::SpQRDequantize (spqr_cpu.cc); called by RegisterOps.
void RegisterSpQR(Ort::CustomOpDomain& domain);
// Adds the integer-only I-LLM ops edgeq::DIMatMul, DIExp, DIClippedSoftmax, DINorm, DISwiGLU, DIRotary, DIAdd
// (integer_ops_cpu.cc); called by RegisterOps.
void RegisterIntegerOps(Ort::CustomOpDomain& domain);
}  // namespace cpu
}  // namespace edgeq
