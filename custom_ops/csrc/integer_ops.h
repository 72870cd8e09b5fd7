// The integer-only ops of I-LLM (edgeq::DIMatMul, DIExp, DIClippedSoftmax, DINorm, DISwiGLU, DIRotary, DIAdd,
// DIBatchMatMul, DIRequant):
// signatures, attributes and input checks shared by the CPU and CUDA ops. The contract (representation,
// rounding, each algorithm) is custom_ops/schema.py and custom_ops/README.md; the math is integer_math.h.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "group_quant_matmul.h"  // InvalidArgument, StatusFrom, checks
#include "integer_math.h"
#include "integer_op_kind.h"
#include "ort_api.h"

namespace edgeq {

// An op's name and the element types of its inputs and outputs as schema.py declares them (ORT refuses other
// types, naming the node; UNDEFINED: checked in PrepareIntegerOp). Inputs from optional_from on are optional.
struct DiSignature {
  const char* name;
  std::vector<ONNXTensorElementDataType> inputs, outputs;
  size_t optional_from;
};
const DiSignature& Signature(DiOp op);

// Ops with obits 2..16 (Y int8 up to 8 bits, int16 above; DIClippedSoftmax: uint8, uint16): Y is registered untyped
// and optional, so ORT takes its element type from the graph, and DiAttrs::FromKernelInfo checks it against obits.
constexpr bool WideCodes(DiOp op) {
  return op == DiOp::kMatMul || op == DiOp::kAdd || op == DiOp::kClippedSoftmax || op == DiOp::kNorm;
}
// Ops registered once per type of their first input (kA), as an untyped Y needs concrete input types.
constexpr bool TypedFirstInput(DiOp op) { return WideCodes(op); }

struct DiAttrs {
  DiOp op = DiOp::kMatMul;
  std::string where;  // "edgeq::DIMatMul node 'name'", the prefix of every message
  int64_t K = 0, N = 0, abits = 8, wbits = 8, obits = 8, clip_q8 = 0, is_causal = 0, eps_q60 = 0, interleaved = 0,
          trans_b = 0, heads_first = 0, rotate = 1;
  int64_t clip_q15 = integer::kClipOne;  // DINorm, DISwiGLU, DIRequant: a learned clip of the output row's range
  int64_t act_sym = 1;  // DINorm, DISwiGLU, DIRequant: 0 gives asymmetric codes and a zero point per row (y_zero)
  int64_t hadamard = 0;  // DISwiGLU: the block of a Walsh-Hadamard rotation of the output row (0: none)
  int64_t split = 0;     // DIMatMul: the channels of the first of two outputs (0: one output of N)
  int64_t qmax = 0;  // largest output code: 2^(obits-1) - 1, or 2^obits - 1 for DIClippedSoftmax
  // The CUDA ops' inputs live on the device: PrepareIntegerOp checks their types and shapes but cannot read the
  // values (mantissa ranges, positions), which the CPU ops refuse with a message.
  bool device_inputs = false;
  // DIMatMul's weight inputs (bit i: input i) that are constant initializers, their shapes (and on the CPU their
  // values) checked once at session creation: a call reads only their addresses.
  uint32_t constant_inputs = 0;
  bool Constant(size_t index) const { return (constant_inputs >> index & 1u) != 0; }
  static DiAttrs FromKernelInfo(const OrtKernelInfo* info, DiOp op, bool device_inputs = false);
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
  void* q = nullptr;  // int8, or uint8/uint16 probabilities
  int32_t* m = nullptr;
  int8_t* e = nullptr;
  int32_t* z = nullptr;  // per-row zero points (act_sym=0), else null
};

// One call's tensors after every check passed; what an op does not use stays empty.
struct DiProblem {
  IntInput x, x2;                    // x2: DISwiGLU's up, DIAdd's B, DIBatchMatMul's B
  const int8_t* W = nullptr;         // DIMatMul's weight codes [N, K]
  const int8_t* w_zero = nullptr;    // DIMatMul's per-channel weight zero points [N], or null (symmetric)
  const int32_t* x_zero = nullptr;   // DIMatMul's per-row input zero points [rows], with w_sum [N]; or null
  const int32_t* w_sum = nullptr;
  const int32_t* ch_m = nullptr;     // per-channel scales: DIMatMul's w, DINorm's gamma
  const int8_t* ch_e = nullptr;
  const bool* mask = nullptr;        // DIClippedSoftmax
  std::vector<int64_t> mask_strides;  // element strides of mask over X's dims (0 where broadcast)
  const int64_t* positions = nullptr;  // DIRotary: position_ids [B, S], cos/sin [P, D/2]
  const int16_t* cos = nullptr;
  const int16_t* sin = nullptr;
  int64_t cos_rows = 0;              // P
  bool per_head_scales = false;      // DIRotary: x's scales are [B, S, H, 1] (else [B, S, 1, 1])
  IntInput past;                     // DIRotary heads_first: the cache's int8 codes [B, H, P, D], scales [B, H, P, 1]
  int64_t past_len = 0;              // P (0: no past given, or an empty cache)
  int64_t merged_rows = 0;           // DIRequant: G, the input rows of each output row
  int64_t merged_seq = 1;            // DIRequant heads_first: S of X [B, G, S, D] (MergedRowsOf)
  int64_t M = 0, K = 0, N = 0;       // DIBatchMatMul: A [batch, M, K], B [batch of B, N, K] or [.., K, N]
  std::vector<int64_t> b_batch;      // DIBatchMatMul: B's flat batch index for each of A's, which is
  std::vector<int64_t> b_strides, b_groups;  // sum over A's batch dims i of digit_i / b_groups[i] * b_strides[i]
  IntOutput out;
  IntOutput out2;                    // DIMatMul with split: the outputs of channels [split, N)
};

// Checks types, shapes and the values the math relies on (mantissa ranges, positions), allocates the outputs.
DiProblem PrepareIntegerOp(Ort::KernelContext& ctx, const DiAttrs& attrs);

// DIMatMul's part `index` of a split as a problem of its own: 0, channels [0, split) into out; 1, [split, N) into
// out2 (its N the part's).
DiProblem MatMulPart(const DiProblem& p, int64_t split, int index);

// The OrtCustomOp of kOp on one execution provider, around Kernel<kOp> (a class of the CPU or the CUDA ops);
// DIAdd registers one per (A, B) code type pair, DIClippedSoftmax, DIMatMul and DINorm one per X type. ORT derives an UNDEFINED output's
// type from the only UNDEFINED input, so with concrete input types and Y declared UNDEFINED and optional (ORT insists
// on the one-dynamic-input rule for required ones) Y keeps the type the graph declares for it, which
// DiAttrs::FromKernelInfo checks against obits: DIAdd, DIMatMul, DINorm and DIClippedSoftmax (WideCodes), whose
// obits > 8 give 16-bit codes.
template <template <DiOp> class Kernel, DiOp kOp, ONNXTensorElementDataType kA = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED,
          ONNXTensorElementDataType kB = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED>
struct DiCustomOp : Ort::CustomOpBase<DiCustomOp<Kernel, kOp, kA, kB>, Kernel<kOp>, /*WithStatus=*/true> {
  explicit DiCustomOp(const char* provider) : provider(provider) {}
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return StatusFrom([&] { *kernel = new Kernel<kOp>(info); });
  }
  const char* GetName() const { return Signature(kOp).name; }
  const char* GetExecutionProviderType() const { return provider; }
  size_t GetInputTypeCount() const { return Signature(kOp).inputs.size(); }
  ONNXTensorElementDataType GetInputType(size_t i) const {
    if (TypedFirstInput(kOp) && i == 0) return kA;
    if (kOp == DiOp::kAdd && i == 3) return kB;
    return Signature(kOp).inputs[i];
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return i < Signature(kOp).optional_from ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  size_t GetOutputTypeCount() const { return Signature(kOp).outputs.size(); }
  ONNXTensorElementDataType GetOutputType(size_t i) const { return Signature(kOp).outputs[i]; }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t i) const {
    // 3: y_zero, or DIMatMul's Y2 (untyped as Y), y2_m, y2_e with split
    return (WideCodes(kOp) && i == 0) || i >= 3 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  const char* provider;
};

// Adds every integer op of Kernel's provider to `domain`.
template <template <DiOp> class Kernel>
void AddIntegerOps(Ort::CustomOpDomain& domain, const char* provider) {
  constexpr auto kI8 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8, kI16 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16,
                 kI32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
  static DiCustomOp<Kernel, DiOp::kMatMul, kI8> matmul(provider);
  static DiCustomOp<Kernel, DiOp::kMatMul, kI16> matmul_16(provider);
  static DiCustomOp<Kernel, DiOp::kExp> exp(provider);
  static DiCustomOp<Kernel, DiOp::kClippedSoftmax, kI8> softmax(provider);
  static DiCustomOp<Kernel, DiOp::kClippedSoftmax, kI32> softmax_32(provider);
  static DiCustomOp<Kernel, DiOp::kNorm, kI8> norm(provider);
  static DiCustomOp<Kernel, DiOp::kNorm, kI16> norm_16(provider);
  static DiCustomOp<Kernel, DiOp::kSwiGLU> swiglu(provider);
  static DiCustomOp<Kernel, DiOp::kRotary> rotary(provider);
  static DiCustomOp<Kernel, DiOp::kAdd, kI8, kI8> add(provider);
  static DiCustomOp<Kernel, DiOp::kAdd, kI8, kI16> add_8_16(provider);
  static DiCustomOp<Kernel, DiOp::kAdd, kI16, kI8> add_16_8(provider);
  static DiCustomOp<Kernel, DiOp::kAdd, kI16, kI16> add_16_16(provider);
  static DiCustomOp<Kernel, DiOp::kBatchMatMul> batch_matmul(provider);
  static DiCustomOp<Kernel, DiOp::kRequant> requant(provider);
  for (OrtCustomOp* op : std::initializer_list<OrtCustomOp*>{&matmul, &matmul_16, &exp, &softmax, &softmax_32, &norm,
                                                             &norm_16, &swiglu, &rotary, &add, &add_8_16, &add_16_8,
                                                             &add_16_16, &batch_matmul, &requant})
    domain.Add(op);
}

}  // namespace edgeq
