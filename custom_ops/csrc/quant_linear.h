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
  int qmax = 0;           // 2^(abits-1) - 1
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
  void* Y = nullptr;
};

// Checks dtypes, ranks and shapes of the inputs against the attributes, allocates Y, and returns the pointers.
QlProblem PrepareQuantLinear(Ort::KernelContext& ctx, const QlAttrs& attrs);

// B's type is fixed by the schema (ORT refuses another one, naming the node); A and w_scales are checked in
// PrepareQuantLinear so that a wrong float type is reported with the op's name.
inline ONNXTensorElementDataType QlInputType(size_t index) {
  return index == 1 || index == 3 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 : ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}

// A, B, w_scales and the optional w_zero.
constexpr size_t kQlInputs = 4;
inline OrtCustomOpInputOutputCharacteristic QlInputCharacteristic(size_t index) {
  return index == 3 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
}

// acc - w_zero[n] * sum_k q[m, k]: the integer sums against W - w_zero. int64 because the corrected sum of an
// 8-bit asymmetric weight (|W - w_zero| <= 255) can pass int32 at K beyond 65535.
inline int64_t QlZeroCorrected(int32_t acc, const int8_t* w_zero, int64_t n, int32_t q_sum) {
  return w_zero == nullptr ? int64_t(acc) : int64_t(acc) - int64_t(w_zero[n]) * q_sum;
}

// OrtCustomOp::InferOutputShapeFn: Y's type is A's, its shape A.shape[:-1] + [N].
OrtStatusPtr ORT_API_CALL InferQuantLinear(const OrtCustomOp* op, OrtShapeInferContext* ctx);

}  // namespace edgeq
