// Checks every edgeq kernel makes on its attributes and inputs. Each failure names the node and the problem,
// and reaches the caller as an ORT error instead of a crash (see StatusFrom).
#pragma once

#include <atomic>
#include <cstdint>
#include <initializer_list>
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
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16: return "int16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16: return "uint16";
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

// An optional int attribute, `fallback` when the node does not set it.
inline int64_t OptionalInt(const OrtKernelInfo* info, const char* name, int64_t fallback) {
  int64_t value = fallback;
  if (OrtStatus* missing = Ort::GetApi().KernelInfoGetAttribute_int64(info, name, &value)) {
    Ort::GetApi().ReleaseStatus(missing);
    return fallback;
  }
  return value;
}

inline void ExpectPositive(int64_t value, const char* name, const std::string& where) {
  if (value <= 0) Fail(where, std::string("attribute ") + name + "=" + std::to_string(value) + " must be positive");
}

// An attribute that must be one of `allowed` (listed in the message as "one of 2, 3, 4, 8").
inline void ExpectOneOf(int64_t value, std::initializer_list<int64_t> allowed, const char* name,
                        const std::string& where) {
  std::string text;
  for (int64_t v : allowed) {
    if (v == value) return;
    text += (text.empty() ? "" : ", ") + std::to_string(v);
  }
  Fail(where, std::string("attribute ") + name + "=" + std::to_string(value) + " must be one of " + text);
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

inline bool IsFloat(ONNXTensorElementDataType t) {
  return t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
}

inline void ExpectShape(const TensorView& t, const char* name, const std::vector<int64_t>& expected,
                        const char* meaning, const std::string& where) {
  if (t.shape != expected) {
    Fail(where, std::string(name) + " has shape " + ShapeText(t.shape) + ", expected " + ShapeText(expected) + " " +
                    meaning);
  }
}

// The activations of an edgeq linear: float32 or float16, [..., K] with at least one row. Returns M, the rows.
inline int64_t LinearRows(const TensorView& A, int64_t K, const std::string& where) {
  if (!IsFloat(A.type)) Fail(where, std::string("A must be float32 or float16, got ") + TypeName(A.type));
  if (A.shape.empty()) Fail(where, "A must have rank >= 1, got a scalar");
  if (A.shape.back() != K)
    Fail(where, "A has shape " + ShapeText(A.shape) + ": last dim must equal attribute K=" + std::to_string(K));
  int64_t M = 1;
  for (size_t i = 0; i + 1 < A.shape.size(); ++i) M *= A.shape[i];
  if (M == 0) Fail(where, "A has shape " + ShapeText(A.shape) + " with zero elements; the op needs at least one row");
  return M;
}

// Y's shape: A.shape[:-1] + [N].
inline std::vector<int64_t> LinearOutputShape(const TensorView& A, int64_t N) {
  std::vector<int64_t> shape(A.shape.begin(), A.shape.end() - 1);
  shape.push_back(N);
  return shape;
}

inline TensorView RequiredInput(Ort::KernelContext& ctx, size_t index, const char* name, const std::string& where) {
  TensorView t = Input(ctx, index, name, where);
  if (t.value == nullptr) Fail(where, std::string("input ") + name + " is required");
  return t;
}


// An int attribute inside an OrtCustomOp::InferOutputShapeFn.
inline int64_t ReadInt(OrtShapeInferContext* ctx, const char* name, const std::string& where) {
  const OrtApi& api = Ort::GetApi();
  const OrtOpAttr* attr = nullptr;
  Ort::ThrowOnError(api.ShapeInferContext_GetAttribute(ctx, name, &attr));
  if (attr == nullptr) Fail(where, std::string("int attribute '") + name + "' is missing");
  int64_t value = 0;
  size_t size = 0;
  Ort::ThrowOnError(api.ReadOpAttr(attr, ORT_OP_ATTR_INT, &value, sizeof(value), &size));
  return value;
}

// Sets output `index` to `type` and `dims`; a dim without a value or a name (-1) gets a fresh name of its own,
// since -1 would be taken literally (and warned about at every run) and one shared name would tell ORT that
// unrelated dims are equal.
inline void SetInferredOutput(OrtShapeInferContext* ctx, size_t index, ONNXTensorElementDataType type,
                              const std::vector<int64_t>& dims, std::vector<const char*> symbols) {
  const OrtApi& api = Ort::GetApi();
  std::vector<std::string> fresh;
  fresh.reserve(dims.size());  // c_str() pointers into it must stay valid
  for (size_t i = 0; i < dims.size(); ++i) {
    if (symbols[i] != nullptr && symbols[i][0] != '\0') continue;
    symbols[i] = "";
    if (dims[i] < 0) {
      static std::atomic<uint64_t> counter{0};
      fresh.push_back("edgeq_unknown_" + std::to_string(counter++));
      symbols[i] = fresh.back().c_str();
    }
  }
  OrtTensorTypeAndShapeInfo* info = nullptr;
  Ort::ThrowOnError(api.CreateTensorTypeAndShapeInfo(&info));
  Ort::TensorTypeAndShapeInfo owner(info);  // releases info
  Ort::ThrowOnError(api.SetTensorElementType(info, type));
  Ort::ThrowOnError(api.SetDimensions(info, dims.data(), dims.size()));
  Ort::ThrowOnError(api.SetSymbolicDimensions(info, symbols.data(), symbols.size()));
  Ort::ThrowOnError(api.ShapeInferContext_SetOutputTypeShape(ctx, index, info));
}

// The output rule of every edgeq linear (InferOutputShapeFn): Y has A's type (float32 or float16) and shape
// A.shape[:-1] + [N], with K and N the node's attributes. Refuses, at session creation, another type of A, a
// scalar A, or a static last dim that is not K.
inline void InferLinearOutput(OrtShapeInferContext* ctx, const std::string& where) {
  const OrtApi& api = Ort::GetApi();
  const int64_t K = ReadInt(ctx, "K", where), N = ReadInt(ctx, "N", where);
  OrtTensorTypeAndShapeInfo* a_info = nullptr;  // owned by ctx
  Ort::ThrowOnError(api.ShapeInferContext_GetInputTypeShape(ctx, 0, &a_info));
  Ort::ConstTensorTypeAndShapeInfo a(a_info);
  const ONNXTensorElementDataType type = a.GetElementType();
  if (!IsFloat(type)) Fail(where, std::string("A must be float32 or float16, got ") + TypeName(type));
  std::vector<int64_t> dims = a.GetShape();
  if (dims.empty()) Fail(where, "A must have rank >= 1, got a scalar");
  std::vector<const char*> symbols(dims.size(), nullptr);
  a.GetSymbolicDimensions(symbols.data(), symbols.size());
  const bool last_symbolic = symbols.back() != nullptr && symbols.back()[0] != '\0';
  if (!last_symbolic && dims.back() >= 0 && dims.back() != K)
    Fail(where, "A's last dim is " + std::to_string(dims.back()) + ", attribute K is " + std::to_string(K));
  dims.back() = N;
  symbols.back() = "";
  SetInferredOutput(ctx, 0, type, dims, symbols);
}

}  // namespace checks
}  // namespace edgeq
