// edgeq::QuantLinear: attributes, input checks and the per-token quantization rule shared by the CPU and CUDA
// ops. The op's contract (B's layout, rounding of every step) is custom_ops/schema.py; this file enforces it.
#pragma once

#include <cstdint>
#include <string>

#include "group_quant_matmul.h"  // InvalidArgument, StatusFrom
#include "ort_api.h"

namespace edgeq {

constexpr const char* kQuantLinear = "QuantLinear";

// The exporter's floor on per-token scales, as float32 and as the float16 it rounds to (subnormal 168 * 2^-24).
constexpr float kQlScaleFloor = 1e-5f;
constexpr uint16_t kQlScaleFloorHalf = 168;

struct QlAttrs {
  int64_t K = 0, N = 0, wbits = 0, abits = 0;
  int64_t row_bytes = 0;  // bytes per row of B: ceil(K/2) when packed (wbits <= 4), else K
  bool act_sym = true;    // attribute act_sym: symmetric per-token codes, else a zero point per token
  std::string where;      // "edgeq::QuantLinear node 'name'", the prefix of every message

  bool packed() const { return wbits <= 4; }
  static QlAttrs FromKernelInfo(const OrtKernelInfo* info);
};

// One call's inputs after every check passed. A is viewed as [M, K], Y as [M, N].
struct QlProblem {
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;  // of A, w_scales and Y
  int64_t M = 0;
  const void* A = nullptr;
  const int8_t* B = nullptr;
  const void* w_scales = nullptr;
  const int8_t* w_zero = nullptr;  // [N], or nullptr: symmetric weights
  const int32_t* w_sum = nullptr;  // [N] sum_k W[n, k]; set exactly when act_sym is 0
  void* Y = nullptr;
};

// Checks dtypes, ranks and shapes of the inputs against the attributes, allocates Y, and returns the pointers.
QlProblem PrepareQuantLinear(Ort::KernelContext& ctx, const QlAttrs& attrs);

// B's type is fixed by the schema (ORT refuses another one, naming the node); A and w_scales are checked in
// PrepareQuantLinear so that a wrong float type is reported with the op's name.
inline ONNXTensorElementDataType QlInputType(size_t index) {
  switch (index) {
    case 1: case 3: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
    case 4: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    default: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  }
}

// A, B, w_scales and the optional w_zero and w_sum.
constexpr size_t kQlInputs = 5;
inline OrtCustomOpInputOutputCharacteristic QlInputCharacteristic(size_t index) {
  return index >= 3 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
}

// sum_k (q[m,k] - z[m]) * (W[n,k] - w_zero[n]) from the int32 sums acc = sum_k q * W, the token's code sum q_sum
// and zero z: acc - w_zero * q_sum - z * (w_sum - K * w_zero). int64 because with an asymmetric side the factors
// reach 255 and the sum can pass int32 at K beyond 65535. The CUDA epilogue (ZeroOffset) computes the same.
inline int64_t QlCorrected(int32_t acc, const QlProblem& p, int64_t K, int64_t n, int32_t q_sum, int32_t z) {
  const int64_t wz = p.w_zero == nullptr ? 0 : p.w_zero[n];
  int64_t v = int64_t(acc) - wz * q_sum;
  if (p.w_sum != nullptr) v -= int64_t(z) * (int64_t(p.w_sum[n]) - K * wz);
  return v;
}

// OrtCustomOp::InferOutputShapeFn: Y's type is A's, its shape A.shape[:-1] + [N].
OrtStatusPtr ORT_API_CALL InferQuantLinear(const OrtCustomOp* op, OrtShapeInferContext* ctx);

}  // namespace edgeq
