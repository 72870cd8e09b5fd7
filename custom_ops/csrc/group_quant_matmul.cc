#include "group_quant_matmul.h"

#include <sstream>

namespace edgeq {
using namespace checks;

GqmmAttrs GqmmAttrs::FromKernelInfo(const OrtKernelInfo* raw) {
  Ort::ConstKernelInfo info(raw);
  GqmmAttrs a;
  a.where = std::string("edgeq::") + kGroupQuantMatMul + " node '" + info.GetNodeName() + "'";
  a.K = ReadInt(info, "K", a.where);
  a.N = ReadInt(info, "N", a.where);
  a.bits = ReadInt(info, "bits", a.where);
  a.group_size = ReadInt(info, "group_size", a.where);
  ExpectPositive(a.K, "K", a.where);
  ExpectPositive(a.N, "N", a.where);
  ExpectOneOf(a.bits, {2, 3, 4, 8}, "bits", a.where);
  ExpectOneOf(a.group_size, {16, 32, 64, 128}, "group_size", a.where);
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
  const int64_t M = LinearRows(A, attrs.K, where);
  if (S.type != A.type)
    Fail(where, std::string("scales must have A's type (") + TypeName(A.type) + "), got " + TypeName(S.type));
  if (B.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8)
    Fail(where, std::string("B must be uint8 (packed codes), got ") + TypeName(B.type));
  if (Z.value != nullptr && Z.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8)
    Fail(where, std::string("zero_points must be uint8, got ") + TypeName(Z.type));

  ExpectShape(B, "B", {attrs.N, attrs.n_groups, attrs.group_bytes},
              "(N, ceil(K/group_size), group_size*bits/8)", where);
  ExpectShape(S, "scales", {attrs.N, attrs.n_groups}, "(N, ceil(K/group_size))", where);
  if (Z.value != nullptr) ExpectShape(Z, "zero_points", {attrs.N, attrs.n_groups}, "(N, ceil(K/group_size))", where);

  GqmmProblem p;
  p.type = A.type;
  p.M = M;
  p.A = A.value.GetTensorRawData();
  p.B = static_cast<const uint8_t*>(B.value.GetTensorRawData());
  p.scales = S.value.GetTensorRawData();
  p.zero_points = Z.value != nullptr ? static_cast<const uint8_t*>(Z.value.GetTensorRawData()) : nullptr;
  p.Y = ctx.GetOutput(0, LinearOutputShape(A, attrs.N)).GetTensorMutableRawData();
  return p;
}

OrtStatusPtr ORT_API_CALL InferGroupQuantMatMul(const OrtCustomOp*, OrtShapeInferContext* ctx) {
  return StatusFrom([&] { InferLinearOutput(ctx, std::string("edgeq::") + kGroupQuantMatMul); });
}

}  // namespace edgeq
