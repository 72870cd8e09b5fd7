#include "quant_linear.h"

#include <sstream>
#include <vector>

namespace edgeq {
using namespace checks;
QlAttrs QlAttrs::FromKernelInfo(const OrtKernelInfo* raw) {
  Ort::ConstKernelInfo info(raw);
  QlAttrs a;
  a.where = std::string("edgeq::") + kQuantLinear + " node '" + info.GetNodeName() + "'";
  a.K = ReadInt(info, "K", a.where);
  a.N = ReadInt(info, "N", a.where);
  a.wbits = ReadInt(info, "wbits", a.where);
  a.abits = ReadInt(info, "abits", a.where);
  ExpectPositive(a.K, "K", a.where);
  ExpectPositive(a.N, "N", a.where);
  // int32 accumulation stays exact while K * 128 * 128 < 2^31.
  if (a.K > (int64_t(1) << 17)) Fail(a.where, "attribute K=" + std::to_string(a.K) + " exceeds 131072 (int32 accumulator)");
  if (a.wbits < 2 || a.wbits > 8) Fail(a.where, "attribute wbits=" + std::to_string(a.wbits) + " must be in 2..8");
  if (a.abits < 2 || a.abits > 8) Fail(a.where, "attribute abits=" + std::to_string(a.abits) + " must be in 2..8");
  const int64_t act_sym = OptionalInt(raw, "act_sym", 1);
  if (act_sym != 0 && act_sym != 1) Fail(a.where, "attribute act_sym=" + std::to_string(act_sym) + " must be 0 or 1");
  a.act_sym = act_sym == 1;
  a.row_bytes = a.packed() ? (a.K + 1) / 2 : a.K;
  return a;
}

QlProblem PrepareQuantLinear(Ort::KernelContext& ctx, const QlAttrs& attrs) {
  const std::string& where = attrs.where;
  TensorView A = RequiredInput(ctx, 0, "A", where);
  TensorView B = RequiredInput(ctx, 1, "B", where);
  TensorView S = RequiredInput(ctx, 2, "w_scales", where);
  TensorView Z = ctx.GetInputCount() > 3 ? Input(ctx, 3, "w_zero", where) : TensorView{};
  TensorView W = ctx.GetInputCount() > 4 ? Input(ctx, 4, "w_sum", where) : TensorView{};

  const int64_t M = LinearRows(A, attrs.K, where);
  if (S.type != A.type)
    Fail(where, std::string("w_scales must have A's type (") + TypeName(A.type) + "), got " + TypeName(S.type));
  if (B.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8)
    Fail(where, std::string("B must be int8 (signed weights), got ") + TypeName(B.type));

  const std::vector<int64_t> b_shape{attrs.N, attrs.row_bytes};
  if (B.shape != b_shape)
    Fail(where, "B has shape " + ShapeText(B.shape) + ", expected " + ShapeText(b_shape) +
                    (attrs.packed() ? " (N, ceil(K/2)): wbits=" : " (N, K): wbits=") + std::to_string(attrs.wbits));
  if (S.shape != std::vector<int64_t>{attrs.N})
    Fail(where, "w_scales has shape " + ShapeText(S.shape) + ", expected [" + std::to_string(attrs.N) + "] (N)");
  if (Z.value != nullptr) {
    if (Z.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8)
      Fail(where, std::string("w_zero must be int8 (per-channel zero offsets), got ") + TypeName(Z.type));
    ExpectShape(Z, "w_zero", {attrs.N}, "(N)", where);
  }
  if (!attrs.act_sym && W.value == nullptr)
    Fail(where, "act_sym=0 needs input w_sum (sum_k W[n, k] per output channel)");
  if (attrs.act_sym && W.value != nullptr)
    Fail(where, "input w_sum is only read with act_sym=0; leave it out of a symmetric node");
  if (W.value != nullptr) {
    if (W.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32)
      Fail(where, std::string("w_sum must be int32, got ") + TypeName(W.type));
    ExpectShape(W, "w_sum", {attrs.N}, "(N)", where);
  }

  QlProblem p;
  p.type = A.type;
  p.M = M;
  p.A = A.value.GetTensorRawData();
  p.B = static_cast<const int8_t*>(B.value.GetTensorRawData());
  p.w_scales = S.value.GetTensorRawData();
  p.w_zero = Z.value != nullptr ? static_cast<const int8_t*>(Z.value.GetTensorRawData()) : nullptr;
  p.w_sum = W.value != nullptr ? static_cast<const int32_t*>(W.value.GetTensorRawData()) : nullptr;
  p.Y = ctx.GetOutput(0, LinearOutputShape(A, attrs.N)).GetTensorMutableRawData();
  return p;
}

OrtStatusPtr ORT_API_CALL InferQuantLinear(const OrtCustomOp*, OrtShapeInferContext* ctx) {
  return StatusFrom([&] { InferLinearOutput(ctx, std::string("edgeq::") + kQuantLinear); });
}

}  // namespace edgeq
