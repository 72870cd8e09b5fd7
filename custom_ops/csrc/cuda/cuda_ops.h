#pragma once

#include "../ort_api.h"

namespace edgeq {
namespace cuda {
// Adds every CUDA-EP op of the library to `domain`.
void RegisterOps(Ort::CustomOpDomain& domain);
// Adds edgeq::QuantLinear (quant_linear_cuda.cc); called by RegisterOps.
void RegisterQuantLinear(Ort::CustomOpDomain& domain);
// Adds edgeq::SpQRMatMul and edgeq::SpQRDequantize (spqr_matmul_cuda.cc); called by RegisterOps.
void RegisterSpQR(Ort::CustomOpDomain& domain);
// Adds the I-LLM integer ops (integer_ops_cuda.cc); called by RegisterOps.
void RegisterIntegerOps(Ort::CustomOpDomain& domain);
}  // namespace cuda
}  // namespace edgeq
