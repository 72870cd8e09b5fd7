#include "quant_linear.h"

#include <atomic>
#include <sstream>
#include <vector>

namespace edgeq {
using namespace checks;
namespace {

bool IsFloat(ONNXTensorElementDataType t) {
  return t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
}

}  // namespace

QlAttrs QlAttrs::FromKernelInfo(const OrtKernelInfo* raw) {
  Ort::ConstKernelInfo info(raw);
  QlAttrs a;
  a.where = std::string("edgeq::") + kQuantLinear + " node '" + info.GetNodeName() + "'";
  a.K = ReadInt(info, "K", a.where);
  a.N = ReadInt(info, "N", a.where);
  a.wbits = ReadInt(info, "wbits", a.where);
  a.abits = ReadInt(info, "abits", a.where);
  if (a.K <= 0) Fail(a.where, "attribute K=" + std::to_string(a.K) + " must be positive");
  if (a.N <= 0) Fail(a.where, "attribute N=" + std::to_string(a.N) + " must be positive");
  // int32 accumulation stays exact while K * 128 * 128 < 2^31.
  if (a.K > (int64_t(1) << 17)) Fail(a.where, "attribute K=" + std::to_string(a.K) + " exceeds 131072 (int32 accumulator)");
  if (a.wbits < 2 || a.wbits > 8) Fail(a.where, "attribute wbits=" + std::to_string(a.wbits) + " must be in 2..8");
  if (a.abits < 2 || a.abits > 8) Fail(a.where, "attribute abits=" + std::to_string(a.abits) + " must be in 2..8");
  a.row_bytes = a.packed() ? (a.K + 1) / 2 : a.K;
  a.qmax = (1 << (a.abits - 1)) - 1;
  return a;
}

QlProblem PrepareQuantLinear(Ort::KernelContext& ctx, const QlAttrs& attrs) {
  const std::string& where = attrs.where;
  TensorView A = RequiredInput(ctx, 0, "A", where);
  TensorView B = RequiredInput(ctx, 1, "B", where);
  TensorView S = RequiredInput(ctx, 2, "w_scales", where);

  if (!IsFloat(A.type)) Fail(where, std::string("A must be float32 or float16, got ") + TypeName(A.type));
  if (S.type != A.type)
    Fail(where, std::string("w_scales must have A's type (") + TypeName(A.type) + "), got " + TypeName(S.type));
  if (B.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8)
    Fail(where, std::string("B must be int8 (signed weights), got ") + TypeName(B.type));

  if (A.shape.empty()) Fail(where, "A must have rank >= 1, got a scalar");
  if (A.shape.back() != attrs.K)
    Fail(where, "A has shape " + ShapeText(A.shape) + ": last dim must equal attribute K=" + std::to_string(attrs.K));
  int64_t M = 1;
  for (size_t i = 0; i + 1 < A.shape.size(); ++i) M *= A.shape[i];
  if (M == 0) Fail(where, "A has shape " + ShapeText(A.shape) + " with zero elements; the op needs at least one row");

  const std::vector<int64_t> b_shape{attrs.N, attrs.row_bytes};
  if (B.shape != b_shape)
    Fail(where, "B has shape " + ShapeText(B.shape) + ", expected " + ShapeText(b_shape) +
                    (attrs.packed() ? " (N, ceil(K/2)): wbits=" : " (N, K): wbits=") + std::to_string(attrs.wbits));
  if (S.shape != std::vector<int64_t>{attrs.N})
    Fail(where, "w_scales has shape " + ShapeText(S.shape) + ", expected [" + std::to_string(attrs.N) + "] (N)");

  std::vector<int64_t> y_shape(A.shape.begin(), A.shape.end() - 1);
  y_shape.push_back(attrs.N);
  QlProblem p;
  p.type = A.type;
  p.M = M;
  p.A = A.value.GetTensorRawData();
  p.B = static_cast<const int8_t*>(B.value.GetTensorRawData());
  p.w_scales = S.value.GetTensorRawData();
  p.Y = ctx.GetOutput(0, y_shape).GetTensorMutableRawData();
  return p;
}

OrtStatusPtr ORT_API_CALL InferQuantLinear(const OrtCustomOp*, OrtShapeInferContext* ctx) {
  return StatusFrom([&] {
    const OrtApi& api = Ort::GetApi();
    const std::string where = std::string("edgeq::") + kQuantLinear;
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
    // An unknown dim stays unknown under a name of its own: -1 would be taken literally, and one shared name
    // would tell ORT that unrelated dims are equal.
    std::vector<std::string> fresh;
    fresh.reserve(dims.size());  // c_str() pointers into it must stay valid
    for (size_t i = 0; i < dims.size(); ++i) {
      if (symbols[i] != nullptr && symbols[i][0] != '\0') continue;
      symbols[i] = "";
      if (dims[i] < 0) {
        static std::atomic<uint64_t> counter{0};
        fresh.push_back("edgeq_ql_unknown_" + std::to_string(counter++));
        symbols[i] = fresh.back().c_str();
      }
    }
    OrtTensorTypeAndShapeInfo* y_info = nullptr;
    Ort::ThrowOnError(api.CreateTensorTypeAndShapeInfo(&y_info));
    Ort::TensorTypeAndShapeInfo y(y_info);  // releases y_info
    Ort::ThrowOnError(api.SetTensorElementType(y_info, type));
    Ort::ThrowOnError(api.SetDimensions(y_info, dims.data(), dims.size()));
    Ort::ThrowOnError(api.SetSymbolicDimensions(y_info, symbols.data(), symbols.size()));
    Ort::ThrowOnError(api.ShapeInferContext_SetOutputTypeShape(ctx, 0, y_info));
  });
}

}  // namespace edgeq
