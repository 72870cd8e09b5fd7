#include "spqr_matmul.h"

#include <vector>

namespace edgeq {
using namespace checks;
namespace {

const char* const kWeightNames[kSpqrWeightInputs] = {"codes", "scale_codes", "zero_codes", "stats",
                                                     "row_ptr", "cols", "values"};

// The weight inputs from `first` on: types and shapes against the attributes; fills p's weight pointers and nnz.
void PrepareWeights(Ort::KernelContext& ctx, size_t first, const SpqrAttrs& a, SpqrProblem& p) {
  const std::string& where = a.where;
  TensorView w[kSpqrWeightInputs];
  for (size_t i = 0; i < kSpqrWeightInputs; ++i) {
    w[i] = RequiredInput(ctx, first + i, kWeightNames[i], where);
    const ONNXTensorElementDataType want = SpqrWeightInputType(i);
    if (w[i].type != want)
      Fail(where, std::string(kWeightNames[i]) + " must be " + TypeName(want) + ", got " + TypeName(w[i].type));
  }
  ExpectShape(w[0], "codes", {a.N, a.n_groups, a.group_bytes}, "(N, ceil(K/group_size), group_size*bits/8)", where);
  ExpectShape(w[1], "scale_codes", {a.N, a.stat_row_bytes}, "(N, ceil(ceil(K/group_size)*stat_bits/8))", where);
  ExpectShape(w[2], "zero_codes", {a.N, a.stat_row_bytes}, "(N, ceil(ceil(K/group_size)*stat_bits/8))", where);
  ExpectShape(w[3], "stats", {a.n_row_blocks, a.n_groups, 4}, "(ceil(N/stat_group_size), ceil(K/group_size), 4)",
              where);
  ExpectShape(w[4], "row_ptr", {a.N + 1}, "(N + 1)", where);
  if (w[5].shape.size() != 1) Fail(where, "cols has shape " + ShapeText(w[5].shape) + ", expected [nnz]");
  const int64_t nnz = w[5].shape[0];
  ExpectShape(w[6], "values", {nnz}, "(nnz, the length of cols)", where);

  p.codes = static_cast<const uint8_t*>(w[0].value.GetTensorRawData());
  p.scale_codes = static_cast<const uint8_t*>(w[1].value.GetTensorRawData());
  p.zero_codes = static_cast<const uint8_t*>(w[2].value.GetTensorRawData());
  p.stats = static_cast<const uint16_t*>(w[3].value.GetTensorRawData());
  p.row_ptr = static_cast<const int32_t*>(w[4].value.GetTensorRawData());
  p.cols = static_cast<const uint16_t*>(w[5].value.GetTensorRawData());
  p.values = static_cast<const uint16_t*>(w[6].value.GetTensorRawData());
  p.nnz = nnz;
}

}  // namespace

SpqrAttrs SpqrAttrs::FromKernelInfo(const OrtKernelInfo* raw, const char* op) {
  Ort::ConstKernelInfo info(raw);
  SpqrAttrs a;
  a.where = std::string("edgeq::") + op + " node '" + info.GetNodeName() + "'";
  a.K = ReadInt(info, "K", a.where);
  a.N = ReadInt(info, "N", a.where);
  a.bits = ReadInt(info, "bits", a.where);
  a.group_size = ReadInt(info, "group_size", a.where);
  a.stat_bits = ReadInt(info, "stat_bits", a.where);
  a.stat_group_size = ReadInt(info, "stat_group_size", a.where);
  ExpectPositive(a.K, "K", a.where);
  ExpectPositive(a.N, "N", a.where);
  ExpectOneOf(a.bits, {2, 3, 4, 8}, "bits", a.where);
  ExpectOneOf(a.group_size, {16, 32, 64, 128}, "group_size", a.where);
  if (a.stat_bits < 1 || a.stat_bits > 8)
    Fail(a.where, "attribute stat_bits=" + std::to_string(a.stat_bits) + " must be in 1..8");
  ExpectPositive(a.stat_group_size, "stat_group_size", a.where);
  a.n_groups = (a.K + a.group_size - 1) / a.group_size;
  a.group_bytes = a.group_size * a.bits / 8;
  a.stat_row_bytes = (a.n_groups * a.stat_bits + 7) / 8;
  a.n_row_blocks = (a.N + a.stat_group_size - 1) / a.stat_group_size;
  return a;
}

SpqrProblem PrepareSpQRMatMul(Ort::KernelContext& ctx, const SpqrAttrs& attrs) {
  TensorView A = RequiredInput(ctx, 0, "A", attrs.where);
  SpqrProblem p;
  p.M = LinearRows(A, attrs.K, attrs.where);
  PrepareWeights(ctx, 1, attrs, p);
  p.type = A.type;
  p.A = A.value.GetTensorRawData();
  p.Y = ctx.GetOutput(0, LinearOutputShape(A, attrs.N)).GetTensorMutableRawData();
  return p;
}

SpqrProblem PrepareSpQRDequantize(Ort::KernelContext& ctx, const SpqrAttrs& attrs) {
  SpqrProblem p;
  PrepareWeights(ctx, 0, attrs, p);
  p.type = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  p.Y = ctx.GetOutput(0, {attrs.K, attrs.N}).GetTensorMutableRawData();
  return p;
}

void CheckSpqrSparseIndices(const SpqrAttrs& a, const int32_t* row_ptr, const uint16_t* cols, int64_t nnz) {
  if (row_ptr[0] != 0) Fail(a.where, "row_ptr[0] is " + std::to_string(row_ptr[0]) + ", expected 0");
  for (int64_t n = 0; n < a.N; ++n) {
    if (row_ptr[n + 1] < row_ptr[n])
      Fail(a.where, "row_ptr decreases at row " + std::to_string(n) + " (" + std::to_string(row_ptr[n]) + " -> " +
                        std::to_string(row_ptr[n + 1]) + ")");
  }
  if (row_ptr[a.N] != nnz)
    Fail(a.where, "row_ptr[N] is " + std::to_string(row_ptr[a.N]) + ", expected nnz=" + std::to_string(nnz) +
                      " (the length of cols and values)");
  for (int64_t i = 0; i < nnz; ++i) {
    if (cols[i] >= a.K)
      Fail(a.where, "cols[" + std::to_string(i) + "] = " + std::to_string(cols[i]) + " is not a column: K=" +
                        std::to_string(a.K));
  }
}

OrtStatusPtr ORT_API_CALL InferSpQRMatMul(const OrtCustomOp*, OrtShapeInferContext* ctx) {
  return StatusFrom([&] { InferLinearOutput(ctx, std::string("edgeq::") + kSpQRMatMul); });
}

OrtStatusPtr ORT_API_CALL InferSpQRDequantize(const OrtCustomOp*, OrtShapeInferContext* ctx) {
  return StatusFrom([&] {
    const std::string where = std::string("edgeq::") + kSpQRDequantize;
    const std::vector<int64_t> dims{ReadInt(ctx, "K", where), ReadInt(ctx, "N", where)};
    SetInferredOutput(ctx, 0, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, dims, {"", ""});
  });
}

}  // namespace edgeq
