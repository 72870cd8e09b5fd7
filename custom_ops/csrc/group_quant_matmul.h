// edgeq::GroupQuantMatMul: attributes and input checks shared by the CPU and CUDA ops.
// The op's contract (layout of B, padding, zero-point default) is custom_ops/schema.py; this file enforces it.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "op_checks.h"
#include "ort_api.h"

namespace edgeq {

constexpr const char* kGroupQuantMatMul = "GroupQuantMatMul";

struct GqmmAttrs {
  int64_t K = 0, N = 0, bits = 0, group_size = 0;
  int64_t n_groups = 0;     // ceil(K / group_size)
  int64_t group_bytes = 0;  // group_size * bits / 8
  std::string where;        // "edgeq::GroupQuantMatMul node 'name'", the prefix of every message

  static GqmmAttrs FromKernelInfo(const OrtKernelInfo* info);
};

// One call's inputs after every check passed. A is viewed as [M, K], Y as [M, N].
struct GqmmProblem {
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;  // of A, scales and Y
  int64_t M = 0;
  const void* A = nullptr;
  const uint8_t* B = nullptr;
  const void* scales = nullptr;
  const uint8_t* zero_points = nullptr;  // null: every zero point is 2^(bits-1)
  void* Y = nullptr;
};

// Checks dtypes, ranks and shapes of the inputs against the attributes, allocates Y, and returns the pointers.
GqmmProblem PrepareGroupQuantMatMul(Ort::KernelContext& ctx, const GqmmAttrs& attrs);

// The element type constraint of inputs A and scales, and of Y: checked in PrepareGroupQuantMatMul rather than
// by ORT's type matching, so that a wrong dtype is reported with the op's name instead of "no kernel found".
inline ONNXTensorElementDataType GqmmInputType(size_t index) {
  return index == 1 || index == 3 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 : ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}

inline OrtCustomOpInputOutputCharacteristic GqmmInputCharacteristic(size_t index) {
  return index == 3 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
}

// OrtCustomOp::InferOutputShapeFn: Y's type is A's, its shape A.shape[:-1] + [N]. Refuses, at session creation,
// an A whose type is not float/float16 or whose static last dim is not K.
OrtStatusPtr ORT_API_CALL InferGroupQuantMatMul(const OrtCustomOp* op, OrtShapeInferContext* ctx);

// Runs fn, converting what it throws into an OrtStatus for the C boundary (nullptr on success).
template <typename Fn>
OrtStatusPtr StatusFrom(Fn&& fn) noexcept {
  try {
    fn();
    return nullptr;
  } catch (const InvalidArgument& e) {
    return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, e.what());
  } catch (const Ort::Exception& e) {
    return Ort::GetApi().CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, e.what());
  } catch (...) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, "edgeq: unknown C++ exception");
  }
}

}  // namespace edgeq
