// The integer-only ops of I-LLM (edgeq::DIMatMul, DIExp, DIClippedSoftmax, DINorm, DISwiGLU, DIRotary, DIAdd,
// DIBatchMatMul, DIRequant):
// signatures, attributes and input checks shared by the CPU and CUDA ops. The contract (representation,
// rounding, each algorithm) is custom_ops/schema.py and custom_ops/README.md; the math is integer_math.h.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "group_quant_matmul.h"  // InvalidArgument, StatusFrom, checks
#include "integer_math.h"
#include "ort_api.h"

namespace edgeq {

enum class DiOp { kMatMul, kExp, kClippedSoftmax, kNorm, kSwiGLU, kRotary, kAdd, kBatchMatMul, kRequant };

// An op's name and the element types of its inputs and outputs as schema.py declares them (ORT refuses other
// types, naming the node; UNDEFINED: checked in PrepareIntegerOp). Inputs from optional_from on are optional.
struct DiSignature {
  const char* name;
  std::vector<ONNXTensorElementDataType> inputs, outputs;
  size_t optional_from;
};
const DiSignature& Signature(DiOp op);

// Ops with obits 2..16 (Y int8 up to 8 bits, int16 above): Y is registered untyped and optional, so ORT takes its
// element type from the graph, and DiAttrs::FromKernelInfo checks it against obits.
constexpr bool WideCodes(DiOp op) { return op == DiOp::kMatMul || op == DiOp::kAdd; }

struct DiAttrs {
  DiOp op = DiOp::kMatMul;
  std::string where;  // "edgeq::DIMatMul node 'name'", the prefix of every message
  int64_t K = 0, N = 0, abits = 8, wbits = 8, obits = 8, clip_q8 = 0, is_causal = 0, eps_q60 = 0, interleaved = 0,
          trans_b = 0;
  int64_t qmax = 0;  // largest output code: 2^(obits-1) - 1, or 2^obits - 1 for DIClippedSoftmax
  static DiAttrs FromKernelInfo(const OrtKernelInfo* info, DiOp op);
};

// An integer activation input viewed as [rows, C]: codes (int8, or int32 scores), per-row m and e.
struct IntInput {
  const void* q = nullptr;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  const int32_t* m = nullptr;
  const int8_t* e = nullptr;
  std::vector<int64_t> shape;  // of the codes
  int64_t rows = 0, C = 0;
};

struct IntOutput {
  void* q = nullptr;  // int8, or uint8 probabilities
  int32_t* m = nullptr;
  int8_t* e = nullptr;
};

// One call's tensors after every check passed; what an op does not use stays empty.
struct DiProblem {
  IntInput x, x2;                    // x2: DISwiGLU's up, DIAdd's B, DIBatchMatMul's B
  const int8_t* W = nullptr;         // DIMatMul's weight codes [N, K]
  const int32_t* ch_m = nullptr;     // per-channel scales: DIMatMul's w, DINorm's gamma
  const int8_t* ch_e = nullptr;
  const bool* mask = nullptr;        // DIClippedSoftmax
  std::vector<int64_t> mask_strides;  // element strides of mask over X's dims (0 where broadcast)
  const int64_t* positions = nullptr;  // DIRotary: position_ids [B, S], cos/sin [P, D/2]
  const int16_t* cos = nullptr;
  const int16_t* sin = nullptr;
  bool per_head_scales = false;      // DIRotary: x's scales are [B, S, H, 1] (else [B, S, 1, 1])
  int64_t M = 0, K = 0, N = 0;       // DIBatchMatMul: A [batch, M, K], B [batch of B, N, K] or [.., K, N]
  std::vector<int64_t> b_batch;      // DIBatchMatMul: B's flat batch index for each of A's; DIRequant: G
  IntOutput out;
};

// Checks types, shapes and the values the math relies on (mantissa ranges, positions), allocates the outputs.
DiProblem PrepareIntegerOp(Ort::KernelContext& ctx, const DiAttrs& attrs);

}  // namespace edgeq
