// Checks every edgeq kernel makes on its attributes and inputs. Each failure names the node and the problem,
// and reaches the caller as an ORT error instead of a crash (see StatusFrom).
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "ort_api.h"

namespace edgeq {

// Raised for anything the caller got wrong; the C boundary turns it into ORT_INVALID_ARGUMENT.
struct InvalidArgument : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace checks {

inline std::string ShapeText(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << '[';
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << ']';
  return s.str();
}

inline const char* TypeName(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return "bfloat16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    default: return "an unsupported type";
  }
}

[[noreturn]] inline void Fail(const std::string& where, const std::string& problem) {
  throw InvalidArgument(where + ": " + problem);
}

inline int64_t ReadInt(const Ort::ConstKernelInfo& info, const char* name, const std::string& where) {
  int64_t value = 0;
  OrtStatus* status = Ort::GetApi().KernelInfoGetAttribute_int64(info, name, &value);
  if (status != nullptr) {
    Ort::GetApi().ReleaseStatus(status);
    Fail(where, std::string("int attribute '") + name + "' is missing");
  }
  return value;
}

struct TensorView {
  Ort::ConstValue value{nullptr};
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> shape;
};

// An input's type and shape; an absent optional input gives an empty view (value == nullptr).
inline TensorView Input(Ort::KernelContext& ctx, size_t index, const char* name, const std::string& where) {
  TensorView t;
  t.value = ctx.GetInput(index);
  if (t.value == nullptr) return t;
  if (!t.value.IsTensor()) Fail(where, std::string("input ") + name + " must be a tensor");
  auto info = t.value.GetTensorTypeAndShapeInfo();
  t.type = info.GetElementType();
  t.shape = info.GetShape();
  return t;
}

inline TensorView RequiredInput(Ort::KernelContext& ctx, size_t index, const char* name, const std::string& where) {
  TensorView t = Input(ctx, index, name, where);
  if (t.value == nullptr) Fail(where, std::string("input ") + name + " is required");
  return t;
}

}  // namespace checks
}  // namespace edgeq
