#include "group_quant_matmul.h"

#include <atomic>
#include <sstream>

namespace edgeq {
using namespace checks;
namespace {

void ExpectShape(const TensorView& t, const char* name, const std::vector<int64_t>& expected, const char* meaning,
                 const std::string& where) {
  if (t.shape != expected) {
    Fail(where, std::string(name) + " has shape " + ShapeText(t.shape) + ", expected " + ShapeText(expected) + " " +
                    meaning);
  }
}

}  // namespace

GqmmAttrs GqmmAttrs::FromKernelInfo(const OrtKernelInfo* raw) {
  Ort::ConstKernelInfo info(raw);
  GqmmAttrs a;
  a.where = std::string("edgeq::") + kGroupQuantMatMul + " node '" + info.GetNodeName() + "'";
  a.K = ReadInt(info, "K", a.where);
  a.N = ReadInt(info, "N", a.where);
  a.bits = ReadInt(info, "bits", a.where);
  a.group_size = ReadInt(info, "group_size", a.where);
  if (a.K <= 0) Fail(a.where, "attribute K=" + std::to_string(a.K) + " must be positive");
  if (a.N <= 0) Fail(a.where, "attribute N=" + std::to_string(a.N) + " must be positive");
  if (a.bits != 2 && a.bits != 3 && a.bits != 4 && a.bits != 8)
    Fail(a.where, "attribute bits=" + std::to_string(a.bits) + " must be one of 2, 3, 4, 8");
  if (a.group_size != 16 && a.group_size != 32 && a.group_size != 64 && a.group_size != 128)
    Fail(a.where, "attribute group_size=" + std::to_string(a.group_size) + " must be one of 16, 32, 64, 128");
  a.n_groups = (a.K + a.group_size - 1) / a.group_size;
  a.group_bytes = a.group_size * a.bits / 8;
  return a;
}

GqmmProblem PrepareGroupQuantMatMul(Ort::KernelContext& ctx, const GqmmAttrs& attrs) {
  const std::string& where = attrs.where;
  TensorView A = Input(ctx, 0, "A", where);
  TensorView B = Input(ctx, 1, "B", where);
  TensorView S = Input(ctx, 2, "scales", where);
  TensorView Z = ctx.GetInputCount() > 3 ? Input(ctx, 3, "zero_points", where) : TensorView{};

  if (A.value == nullptr || B.value == nullptr || S.value == nullptr) Fail(where, "inputs A, B and scales are required");
  if (A.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT && A.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16)
    Fail(where, std::string("A must be float32 or float16, got ") + TypeName(A.type));
  if (S.type != A.type)
    Fail(where, std::string("scales must have A's type (") + TypeName(A.type) + "), got " + TypeName(S.type));
  if (B.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8)
    Fail(where, std::string("B must be uint8 (packed codes), got ") + TypeName(B.type));
  if (Z.value != nullptr && Z.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8)
    Fail(where, std::string("zero_points must be uint8, got ") + TypeName(Z.type));

  if (A.shape.empty()) Fail(where, "A must have rank >= 1, got a scalar");
  if (A.shape.back() != attrs.K)
    Fail(where, "A has shape " + ShapeText(A.shape) + ": last dim must equal attribute K=" + std::to_string(attrs.K));
  int64_t M = 1;
  for (size_t i = 0; i + 1 < A.shape.size(); ++i) M *= A.shape[i];
  if (M == 0) Fail(where, "A has shape " + ShapeText(A.shape) + " with zero elements; the op needs at least one row");

  ExpectShape(B, "B", {attrs.N, attrs.n_groups, attrs.group_bytes},
              "(N, ceil(K/group_size), group_size*bits/8)", where);
  ExpectShape(S, "scales", {attrs.N, attrs.n_groups}, "(N, ceil(K/group_size))", where);
  if (Z.value != nullptr) ExpectShape(Z, "zero_points", {attrs.N, attrs.n_groups}, "(N, ceil(K/group_size))", where);

  std::vector<int64_t> y_shape(A.shape.begin(), A.shape.end() - 1);
  y_shape.push_back(attrs.N);
  GqmmProblem p;
  p.type = A.type;
  p.M = M;
  p.A = A.value.GetTensorRawData();
  p.B = static_cast<const uint8_t*>(B.value.GetTensorRawData());
  p.scales = S.value.GetTensorRawData();
  p.zero_points = Z.value != nullptr ? static_cast<const uint8_t*>(Z.value.GetTensorRawData()) : nullptr;
  p.Y = ctx.GetOutput(0, y_shape).GetTensorMutableRawData();
  return p;
}

OrtStatusPtr ORT_API_CALL InferGroupQuantMatMul(const OrtCustomOp*, OrtShapeInferContext* ctx) {
  return StatusFrom([&] {
    const OrtApi& api = Ort::GetApi();
    const std::string where = std::string("edgeq::") + kGroupQuantMatMul;
    auto int_attr = [&](const char* name) {
      const OrtOpAttr* attr = nullptr;
      Ort::ThrowOnError(api.ShapeInferContext_GetAttribute(ctx, name, &attr));
      if (attr == nullptr) Fail(where, std::string("int attribute '") + name + "' is missing");
      int64_t value = 0;
      size_t size = 0;
      Ort::ThrowOnError(api.ReadOpAttr(attr, ORT_OP_ATTR_INT, &value, sizeof(value), &size));
      return value;
    };
    const int64_t K = int_attr("K"), N = int_attr("N");

    OrtTensorTypeAndShapeInfo* a_info = nullptr;  // owned by ctx
    Ort::ThrowOnError(api.ShapeInferContext_GetInputTypeShape(ctx, 0, &a_info));
    Ort::ConstTensorTypeAndShapeInfo a(a_info);
    const ONNXTensorElementDataType type = a.GetElementType();
    if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT && type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16)
      Fail(where, std::string("A must be float32 or float16, got ") + TypeName(type));
    std::vector<int64_t> dims = a.GetShape();
    std::vector<const char*> symbols(dims.size(), nullptr);
    if (!dims.empty()) a.GetSymbolicDimensions(symbols.data(), symbols.size());
    if (dims.empty()) Fail(where, "A must have rank >= 1, got a scalar");
    const bool last_symbolic = symbols.back() != nullptr && symbols.back()[0] != '\0';
    if (!last_symbolic && dims.back() >= 0 && dims.back() != K)
      Fail(where, "A's last dim is " + std::to_string(dims.back()) + ", attribute K is " + std::to_string(K));
    dims.back() = N;
    symbols.back() = "";
    // An unknown dim must stay unknown: a value of -1 would be taken literally (and warned about at every run),
    // and one shared name would tell ORT that unrelated dims are equal. So each gets a name of its own.
    std::vector<std::string> fresh;
    fresh.reserve(dims.size());
    for (size_t i = 0; i < dims.size(); ++i) {
      if (symbols[i] != nullptr && symbols[i][0] != '\0') continue;
      symbols[i] = "";
      if (dims[i] < 0) {
        static std::atomic<uint64_t> counter{0};
        fresh.push_back("edgeq_unknown_" + std::to_string(counter++));
        symbols[i] = fresh.back().c_str();
      }
    }

    Ort::TensorTypeAndShapeInfo y(nullptr);
    OrtTensorTypeAndShapeInfo* y_info = nullptr;
    Ort::ThrowOnError(api.CreateTensorTypeAndShapeInfo(&y_info));
    y = Ort::TensorTypeAndShapeInfo(y_info);
    Ort::ThrowOnError(api.SetTensorElementType(y_info, type));
    Ort::ThrowOnError(api.SetDimensions(y_info, dims.data(), dims.size()));
    Ort::ThrowOnError(api.SetSymbolicDimensions(y_info, symbols.data(), symbols.size()));
    Ort::ThrowOnError(api.ShapeInferContext_SetOutputTypeShape(ctx, 0, y_info));
  });
}

}  // namespace edgeq
