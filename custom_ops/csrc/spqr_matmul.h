// edgeq::SpQRMatMul and edgeq::SpQRDequantize: attributes, input checks and ORT output inference shared by the
// CPU and CUDA ops. The ops' contract (layouts, bilevel statistics, outliers) is custom_ops/schema.py; this file
// enforces it.
//
// Weight inputs, in this order (SpQRMatMul has A before them; W is [N, K] in quantization column order):
//   codes        uint8   [N, G1, group_bytes]   per (row, group) a little-endian bitstream of group_size codes
//   scale_codes  uint8   [N, SB]                per row one little-endian bitstream of G1 stat_bits-wide codes
//   zero_codes   uint8   [N, SB]                likewise
//   stats        float16 [R, G1, 4]             (ss, zs, sz, zz) of row block n / stat_group_size and group j
//   row_ptr      int32   [N + 1]                CSR outliers: row n owns [row_ptr[n], row_ptr[n+1])
//   cols         int16   [nnz]                  their columns, read as uint16, < K
//   values       float16 [nnz]                  additive corrections (duplicates add up)
// s = ss * (scale_code - zs), z = sz * (zero_code - zz); W[n, k] = s * (code - z) + the row's outliers at k.
#pragma once

#include <cstdint>
#include <string>

#include "group_quant_matmul.h"  // StatusFrom
#include "op_checks.h"
#include "ort_api.h"

namespace edgeq {

constexpr const char* kSpQRMatMul = "SpQRMatMul";
constexpr const char* kSpQRDequantize = "SpQRDequantize";
constexpr size_t kSpqrWeightInputs = 7;  // codes, scale_codes, zero_codes, stats, row_ptr, cols, values

struct SpqrAttrs {
  int64_t K = 0, N = 0, bits = 0, group_size = 0, stat_bits = 0, stat_group_size = 0;
  int64_t n_groups = 0;        // G1 = ceil(K / group_size)
  int64_t group_bytes = 0;     // group_size * bits / 8: bytes of one (row, group) of codes
  int64_t stat_row_bytes = 0;  // SB = ceil(G1 * stat_bits / 8): bytes of one row of scale_codes / zero_codes
  int64_t n_row_blocks = 0;    // R = ceil(N / stat_group_size): rows of stats
  std::string where;           // "edgeq::SpQRMatMul node 'name'", the prefix of every message

  // Reads and checks the attributes; `op` names the op in messages (kSpQRMatMul or kSpQRDequantize).
  static SpqrAttrs FromKernelInfo(const OrtKernelInfo* info, const char* op = kSpQRMatMul);
};

// One call's inputs after every shape and type check passed. A is viewed as [M, K], Y as [M, N]
// (SpQRDequantize: A is null, M is 0, type is float32 and Y is W_T float [K, N]).
struct SpqrProblem {
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;  // of A and Y
  int64_t M = 0;
  const void* A = nullptr;
  const uint8_t* codes = nullptr;
  const uint8_t* scale_codes = nullptr;
  const uint8_t* zero_codes = nullptr;
  const uint16_t* stats = nullptr;  // float16 bits
  const int32_t* row_ptr = nullptr;
  const uint16_t* cols = nullptr;
  const uint16_t* values = nullptr;  // float16 bits
  int64_t nnz = 0;
  void* Y = nullptr;
};

// Checks dtypes, ranks and shapes of every input against the attributes (never the contents: they may live on
// the GPU), allocates Y and returns the pointers. A is input 0, the weights inputs 1..7, Y output 0.
SpqrProblem PrepareSpQRMatMul(Ort::KernelContext& ctx, const SpqrAttrs& attrs);
// The same for SpQRDequantize: the weights are inputs 0..6, W_T float32 [K, N] output 0.
SpqrProblem PrepareSpQRDequantize(Ort::KernelContext& ctx, const SpqrAttrs& attrs);

// The O(nnz) content checks on host memory: row_ptr[0] == 0, nondecreasing, row_ptr[N] == nnz, every column < K.
// After they pass, no kernel reads outside its inputs whatever the other bytes hold.
void CheckSpqrSparseIndices(const SpqrAttrs& attrs, const int32_t* row_ptr, const uint16_t* cols, int64_t nnz);

// Every weight input's element type is fixed (ORT refuses another one at session creation, naming op, node and
// input); only A and Y of SpQRMatMul are T, checked in PrepareSpQRMatMul with the op's name.
inline ONNXTensorElementDataType SpqrWeightInputType(size_t weight_index) {
  switch (weight_index) {
    case 3: case 6: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;  // stats, values
    case 4: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;            // row_ptr
    case 5: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16;            // cols (uint16 bits)
    default: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;           // codes, scale_codes, zero_codes
  }
}
inline ONNXTensorElementDataType SpqrMatMulInputType(size_t index) {
  return index == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED : SpqrWeightInputType(index - 1);
}
inline ONNXTensorElementDataType SpqrDequantizeInputType(size_t index) { return SpqrWeightInputType(index); }

// OrtCustomOp::InferOutputShapeFn of SpQRMatMul: Y's type is A's, its shape A.shape[:-1] + [N].
OrtStatusPtr ORT_API_CALL InferSpQRMatMul(const OrtCustomOp* op, OrtShapeInferContext* ctx);
// OrtCustomOp::InferOutputShapeFn of SpQRDequantize: W_T float32 [K, N].
OrtStatusPtr ORT_API_CALL InferSpQRDequantize(const OrtCustomOp* op, OrtShapeInferContext* ctx);

// The OrtCustomOp of SpQRMatMul (Dequantize = false) or SpQRDequantize on one execution provider, run by that
// provider's Kernel<Dequantize> (constructed from the OrtKernelInfo; OrtStatusPtr ComputeV2(OrtKernelContext*)).
template <bool Dequantize, template <bool> class Kernel>
struct SpqrOp : Ort::CustomOpBase<SpqrOp<Dequantize, Kernel>, Kernel<Dequantize>, /*WithStatus=*/true> {
  explicit SpqrOp(const char* provider) : provider(provider) {
    this->InferOutputShapeFn = Dequantize ? InferSpQRDequantize : InferSpQRMatMul;
  }
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return StatusFrom([&] { *kernel = new Kernel<Dequantize>(info); });
  }
  const char* GetName() const { return Dequantize ? kSpQRDequantize : kSpQRMatMul; }
  const char* GetExecutionProviderType() const { return provider; }
  size_t GetInputTypeCount() const { return kSpqrWeightInputs + (Dequantize ? 0 : 1); }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return Dequantize ? SpqrDequantizeInputType(index) : SpqrMatMulInputType(index);
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const {
    return Dequantize ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  }

  const char* provider;  // "CPUExecutionProvider", "CUDAExecutionProvider"
};

// Adds both ops to `domain` for `provider`, run by Kernel<false> (SpQRMatMul) and Kernel<true> (SpQRDequantize).
template <template <bool> class Kernel>
void AddSpqrOps(Ort::CustomOpDomain& domain, const char* provider) {
  static SpqrOp<false, Kernel> matmul(provider);
  static SpqrOp<true, Kernel> dequantize(provider);
  domain.Add(&matmul);
  domain.Add(&dequantize);
}

}  // namespace edgeq
