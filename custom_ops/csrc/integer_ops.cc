#include "integer_ops.h"

#include <algorithm>
#include <initializer_list>
#include <utility>

namespace edgeq {
using namespace checks;

namespace {

constexpr auto kI8 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
constexpr auto kU8 = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
constexpr auto kI16 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16;
constexpr auto kU16 = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16;
constexpr auto kI32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
constexpr auto kI64 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
constexpr auto kBool = ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL;
constexpr auto kAny = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;

void ExpectRange(int64_t value, int64_t lo, int64_t hi, const char* name, const std::string& where) {
  if (value < lo || value > hi)
    Fail(where, std::string("attribute ") + name + "=" + std::to_string(value) + " must be in " + std::to_string(lo) +
                    ".." + std::to_string(hi));
}

int64_t Rows(const std::vector<int64_t>& shape) {
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
  return rows;
}

std::vector<int64_t> WithLast(std::vector<int64_t> shape, int64_t last) {
  shape.back() = last;
  return shape;
}

// Mantissas the math relies on: m in [lo, 2^15 - 1].
void ExpectMantissas(const int32_t* m, int64_t n, int64_t lo, const char* name, const std::string& where) {
  // A branch-free scan first (it vectorises; every call of a decode step checks its weights' scales again), and
  // the search for the culprit only when there is one.
  int32_t low = int32_t(lo), high = low;
  for (int64_t i = 0; i < n; ++i) {
    low = std::min(low, m[i]);
    high = std::max(high, m[i]);
  }
  if (low >= lo && high <= integer::kMMax) return;
  for (int64_t i = 0; i < n; ++i)
    if (m[i] < lo || m[i] > integer::kMMax)
      Fail(where, std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(m[i]) + " is outside [" +
                      std::to_string(lo) + ", " + std::to_string(integer::kMMax) + "]");
}

// Codes of a declared width: each in [-2^(bits-1), 2^(bits-1)).
template <typename T>
void ExpectInBits(const T* q, int64_t n, int64_t bits, const char* name, const std::string& where) {
  const int64_t lo = -(int64_t(1) << (bits - 1)), hi = (int64_t(1) << (bits - 1)) - 1;
  for (int64_t i = 0; i < n; ++i)
    if (q[i] < lo || q[i] > hi)
      Fail(where, std::string(name) + " holds " + std::to_string(int64_t(q[i])) + " at flat index " +
                      std::to_string(i) + ", outside the " + std::to_string(bits) + "-bit codes [" + std::to_string(lo) +
                      ", " + std::to_string(hi) + "] of abits=" + std::to_string(bits));
}

// Inputs index..index+2: codes [..., C] (at least one row, C >= 1) and scales [..., 1] (DIRotary, which
// accepts two scale layouts, checks them itself: check_scale_shape = false).
IntInput ReadActivation(Ort::KernelContext& ctx, size_t index, const char* q_name, const char* m_name,
                        const char* e_name, const DiAttrs& attrs, bool check_scale_shape = true) {
  const std::string& where = attrs.where;
  TensorView q = RequiredInput(ctx, index, q_name, where);
  TensorView m = RequiredInput(ctx, index + 1, m_name, where);
  TensorView e = RequiredInput(ctx, index + 2, e_name, where);
  if (q.shape.empty()) Fail(where, std::string(q_name) + " must have rank >= 1, got a scalar");
  IntInput a;
  a.q = q.value.GetTensorRawData();
  a.type = q.type;
  a.shape = q.shape;
  a.rows = Rows(q.shape);
  a.C = q.shape.back();
  if (a.rows == 0 || a.C == 0)
    Fail(where, std::string(q_name) + " has shape " + ShapeText(q.shape) + " with zero elements");
  if (check_scale_shape) {
    const std::vector<int64_t> s = WithLast(q.shape, 1);
    ExpectShape(m, m_name, s, "(the codes' leading dims + [1])", where);
    ExpectShape(e, e_name, s, "(the codes' leading dims + [1])", where);
  } else if (m.shape != e.shape) {
    Fail(where, std::string(e_name) + " has shape " + ShapeText(e.shape) + ", expected " + m_name + "'s " +
                    ShapeText(m.shape));
  }
  a.m = static_cast<const int32_t*>(m.value.GetTensorRawData());
  a.e = static_cast<const int8_t*>(e.value.GetTensorRawData());
  int64_t n = 1;
  for (int64_t d : m.shape) n *= d;
  if (!attrs.device_inputs) ExpectMantissas(a.m, n, 1, m_name, where);
  return a;
}

// Per-channel scales (m int32 [n], e int8 [n], |m| < 2^15) at inputs index, index+1.
void ReadChannelScales(Ort::KernelContext& ctx, size_t index, const char* m_name, const char* e_name, int64_t n,
                       const char* meaning, const DiAttrs& attrs, DiProblem& p) {
  const std::string& where = attrs.where;
  TensorView m = RequiredInput(ctx, index, m_name, where);
  TensorView e = RequiredInput(ctx, index + 1, e_name, where);
  ExpectShape(m, m_name, {n}, meaning, where);
  ExpectShape(e, e_name, {n}, meaning, where);
  p.ch_m = static_cast<const int32_t*>(m.value.GetTensorRawData());
  p.ch_e = static_cast<const int8_t*>(e.value.GetTensorRawData());
  if (!attrs.device_inputs) ExpectMantissas(p.ch_m, n, -integer::kMMax, m_name, where);
}

// A decode step runs some 200 DIMatMuls whose weights never change: those that are constant initializers are
// checked here, once (shapes; mantissa ranges where the values are on the host), instead of at every call.
uint32_t CheckConstantWeights(const OrtKernelInfo* info, const DiAttrs& a) {
  struct Weight {
    size_t index;
    const char* name;
    std::vector<int64_t> shape;
    bool mantissas;
  };
  const Weight weights[] = {{3, "W", {a.N, a.K}, false}, {4, "w_m", {a.N}, true}, {5, "w_e", {a.N}, false},
                            {6, "w_zero", {a.N}, false}, {8, "w_sum", {a.N}, false}};
  const size_t count = Ort::ConstKernelInfo(info).GetInputCount();
  uint32_t checked = 0;
  for (const Weight& w : weights) {
    int is_constant = 0;
    const OrtValue* value = nullptr;
    if (w.index >= count) continue;
    if (OrtStatus* status = Ort::GetApi().KernelInfoGetConstantInput_tensor(info, w.index, &is_constant, &value)) {
      Ort::GetApi().ReleaseStatus(status);
      continue;
    }
    if (!is_constant || value == nullptr) continue;
    TensorView t;
    t.value = Ort::ConstValue(value);
    t.shape = t.value.GetTensorTypeAndShapeInfo().GetShape();
    ExpectShape(t, w.name, w.shape, w.index == 3 ? "(N, K)" : "(N)", a.where);
    if (w.mantissas && !a.device_inputs)
      ExpectMantissas(static_cast<const int32_t*>(t.value.GetTensorRawData()), a.N, -integer::kMMax, w.name, a.where);
    checked |= 1u << w.index;
  }
  return checked;
}

// DIMatMul's weight input `index` of `shape`: its address, checked at this call unless CheckConstantWeights checked
// it at session creation (then nothing is allocated: the shape is an initializer list); null for an absent optional
// one.
template <typename T>
const T* WeightInput(Ort::KernelContext& ctx, const DiAttrs& a, size_t index, const char* name,
                     std::initializer_list<int64_t> shape, const char* meaning, bool required) {
  if (a.Constant(index)) return static_cast<const T*>(ctx.GetInput(index).GetTensorRawData());
  TensorView t;
  if (required) t = RequiredInput(ctx, index, name, a.where);
  else if (ctx.GetInputCount() > index) t = Input(ctx, index, name, a.where);
  if (t.value == nullptr) return nullptr;
  ExpectShape(t, name, std::vector<int64_t>(shape), meaning, a.where);
  return static_cast<const T*>(t.value.GetTensorRawData());
}

void ExpectSameShape(const IntInput& a, const IntInput& b, const char* a_name, const char* b_name,
                     const std::string& where) {
  if (a.shape != b.shape)
    Fail(where, std::string(b_name) + " has shape " + ShapeText(b.shape) + ", expected " + a_name + "'s " +
                    ShapeText(a.shape));
}

// Outputs first, first + 1, first + 2 (codes, m, e), and 3 (y_zero) when zero.
IntOutput AllocateOutput(Ort::KernelContext& ctx, const std::vector<int64_t>& codes_shape, bool zero,
                         size_t first = 0) {
  IntOutput o;
  o.q = ctx.GetOutput(first, codes_shape).GetTensorMutableRawData();
  const std::vector<int64_t> s = WithLast(codes_shape, 1);
  o.m = ctx.GetOutput(first + 1, s).GetTensorMutableData<int32_t>();
  o.e = ctx.GetOutput(first + 2, s).GetTensorMutableData<int8_t>();
  if (zero) o.z = ctx.GetOutput(3, s).GetTensorMutableData<int32_t>();
  return o;
}

// The optional bool mask at input ``index``, broadcast against ``xs``, the shape of the scores ``of``.
void PrepareMask(Ort::KernelContext& ctx, const DiAttrs& a, DiProblem& p, size_t index,
                 const std::vector<int64_t>& xs, const std::string& of) {
  if (ctx.GetInputCount() <= index) return;
  TensorView mask = Input(ctx, index, "mask", a.where);
  if (mask.value == nullptr) return;
  bool ok = mask.shape.size() == xs.size();
  for (size_t i = 0; ok && i < xs.size(); ++i) ok = mask.shape[i] == xs[i] || mask.shape[i] == 1;
  if (!ok)
    Fail(a.where, "mask has shape " + ShapeText(mask.shape) + ", expected " + of + "'s rank with each dim equal to " +
                      of + "'s " + ShapeText(xs) + " or 1");
  p.mask = static_cast<const bool*>(mask.value.GetTensorRawData());
  p.mask_strides.assign(xs.size(), 0);
  int64_t stride = 1;
  for (size_t i = xs.size(); i-- > 0;) {
    if (mask.shape[i] != 1) p.mask_strides[i] = stride;
    stride *= mask.shape[i];
  }
}

// DIRotary's optional past cache (inputs 6..8), copied ahead of the new rows: the op is the cache append too, so a
// decode step has no Concat per cached tensor. Its scales are not checked here: DIBatchMatMul checks the whole
// cache it reads.
void PrepareRotaryPast(Ort::KernelContext& ctx, const DiAttrs& a, DiProblem& p) {
  const std::string& where = a.where;
  TensorView v[3];
  static const char* const names[] = {"past", "past_m", "past_e"};
  int given = 0;
  for (size_t i = 0; i < 3; ++i) {
    if (ctx.GetInputCount() > 6 + i) v[i] = Input(ctx, 6 + i, names[i], where);
    given += v[i].value != nullptr;
  }
  if (given == 0) return;
  if (given != 3) Fail(where, "past, past_m and past_e come together");
  if (!a.heads_first) Fail(where, "a past cache needs heads_first=1 (the cache's [B, H, P, D] layout)");
  const std::vector<int64_t>& xs = p.x.shape;  // [B, S, H, D]
  if (v[0].shape.size() != 4 || v[0].shape[0] != xs[0] || v[0].shape[1] != xs[2] || v[0].shape[3] != xs[3])
    Fail(where, "past has shape " + ShapeText(v[0].shape) + ", expected [" + std::to_string(xs[0]) + ", " +
                    std::to_string(xs[2]) + ", P, " + std::to_string(xs[3]) + "] (X's batch, heads and head dim)");
  const int64_t P = v[0].shape[2];
  const std::vector<int64_t> scales{xs[0], xs[2], P, 1};
  ExpectShape(v[1], "past_m", scales, "(past's leading dims + [1])", where);
  ExpectShape(v[2], "past_e", scales, "(past's leading dims + [1])", where);
  p.past_len = P;
  if (P == 0) return;  // an empty cache: no data to read
  p.past.q = v[0].value.GetTensorRawData();
  p.past.m = static_cast<const int32_t*>(v[1].value.GetTensorRawData());
  p.past.e = static_cast<const int8_t*>(v[2].value.GetTensorRawData());
}

void PrepareRotary(Ort::KernelContext& ctx, const DiAttrs& a, DiProblem& p) {
  const std::string& where = a.where;
  p.x = ReadActivation(ctx, 0, "X", "x_m", "x_e", a, false);
  if (p.x.type != kI8 && p.x.type != kI16) Fail(where, std::string("X must be int8 or int16, got ") + TypeName(p.x.type));
  if (!a.rotate && p.x.type != kI8) Fail(where, "rotate=0 copies the codes into int8: X must be int8");
  TensorView m = RequiredInput(ctx, 1, "x_m", where);
  TensorView pos = RequiredInput(ctx, 3, "position_ids", where);
  TensorView cos = RequiredInput(ctx, 4, "cos", where);
  TensorView sin = RequiredInput(ctx, 5, "sin", where);
  const bool projection = p.x.shape.size() == 3;
  if (projection) {  // a projection's [B, S, H*D] with per-token scales, read as [B, S, H, D]
    const std::vector<int64_t> xs = p.x.shape;
    const int64_t D = cos.shape.size() == 2 ? 2 * cos.shape[1] : 0;
    if (D == 0 || xs[2] % D)
      Fail(where, "X has shape " + ShapeText(xs) + ": its last dim must be a multiple of the head dim D = 2 x cos's "
                  "last dim (cos has shape " + ShapeText(cos.shape) + ")");
    ExpectShape(m, "x_m", {xs[0], xs[1], 1}, "(per token, for X [B, S, H*D])", where);
    p.x.shape = {xs[0], xs[1], xs[2] / D, D};
    p.x.rows = xs[0] * xs[1] * (xs[2] / D);
    p.x.C = D;
  }
  const std::vector<int64_t>& xs = p.x.shape;
  if (xs.size() != 4) Fail(where, "X has shape " + ShapeText(xs) + ", expected [B, S, H, D] or [B, S, H*D]");
  if (xs[3] % 2) Fail(where, "X has shape " + ShapeText(xs) + ": the head dim D must be even");
  const std::vector<int64_t> per_head{xs[0], xs[1], xs[2], 1}, per_token{xs[0], xs[1], 1, 1};
  if (!projection && m.shape != per_head && m.shape != per_token)  // a projection's scales were checked above
    Fail(where, "x_m has shape " + ShapeText(m.shape) + ", expected " + ShapeText(per_head) + " or " +
                    ShapeText(per_token));
  p.per_head_scales = m.shape == per_head;
  ExpectShape(pos, "position_ids", {xs[0], xs[1]}, "(X's [B, S])", where);
  if (cos.shape.size() != 2 || cos.shape[1] != xs[3] / 2)
    Fail(where, "cos has shape " + ShapeText(cos.shape) + ", expected [P, " + std::to_string(xs[3] / 2) + "] (D/2)");
  ExpectShape(sin, "sin", cos.shape, "(cos's)", where);
  p.positions = static_cast<const int64_t*>(pos.value.GetTensorRawData());
  p.cos = static_cast<const int16_t*>(cos.value.GetTensorRawData());
  p.sin = static_cast<const int16_t*>(sin.value.GetTensorRawData());
  const int64_t P = cos.shape[0];
  p.cos_rows = P;
  for (int64_t i = 0; i < xs[0] * xs[1] && !a.device_inputs; ++i)
    if (p.positions[i] < 0 || p.positions[i] >= P)
      Fail(where, "position_ids[" + std::to_string(i) + "] = " + std::to_string(p.positions[i]) +
                      " is outside the tables' [0, " + std::to_string(P) + ")");
  PrepareRotaryPast(ctx, a, p);
}

std::vector<int64_t> PrepareBatchMatMul(Ort::KernelContext& ctx, const DiAttrs& a, DiProblem& p) {
  const std::string& where = a.where;
  p.x = ReadActivation(ctx, 0, "A", "a_m", "a_e", a);
  p.x2 = ReadActivation(ctx, 3, "B", "b_m", "b_e", a);
  const std::vector<int64_t>&as = p.x.shape, &bs = p.x2.shape;
  if (p.x.type != kI8 && p.x.type != kU8 && p.x.type != kU16)
    Fail(where, std::string("A must be int8, uint8 or uint16, got ") + TypeName(p.x.type));
  if (p.x.type == kU16 && a.trans_b) Fail(where, "uint16 A (probabilities) is for trans_b=0 (P.V) only");
  if (as.size() < 2) Fail(where, "A has shape " + ShapeText(as) + ", expected [..., M, K]");
  if (bs.size() != as.size())
    Fail(where, "B has shape " + ShapeText(bs) + ", expected A's rank " + std::to_string(as.size()));
  const size_t r = as.size();
  p.M = as[r - 2];
  p.K = as[r - 1];
  p.N = a.trans_b ? bs[r - 2] : bs[r - 1];
  const int64_t kb = a.trans_b ? bs[r - 1] : bs[r - 2];
  if (kb != p.K)
    Fail(where, "B has shape " + ShapeText(bs) + ": its " + (a.trans_b ? "last" : "second-to-last") +
                    " dim must equal A's K=" + std::to_string(p.K));
  if (p.K > integer::kMaxBatchK)
    Fail(where, "K=" + std::to_string(p.K) + " exceeds " + std::to_string(integer::kMaxBatchK));
  int64_t batches = 1, b_stride = 1;
  p.b_strides.assign(r - 2, 0);
  p.b_groups.assign(r - 2, 1);
  for (size_t i = r - 2; i-- > 0;) {  // B's dim equal to A's, 1, or a divisor (grouped-query attention)
    if (bs[i] < 1 || as[i] % bs[i] != 0)
      Fail(where, "B has shape " + ShapeText(bs) + ": batch dims must equal A's " + ShapeText(as) +
                      ", be 1 or divide them");
    p.b_strides[i] = b_stride;
    p.b_groups[i] = as[i] / bs[i];
    b_stride *= bs[i];
    batches *= as[i];
  }
  p.b_batch.assign(size_t(batches), 0);
  for (int64_t b = 0; b < batches; ++b)
    for (int64_t i = int64_t(r) - 3, rest = b; i >= 0; --i) {
      const size_t d = size_t(i);
      p.b_batch[size_t(b)] += (rest % as[d]) / p.b_groups[d] * p.b_strides[d];
      rest /= as[d];
    }
  std::vector<int64_t> out(as);
  out.back() = p.N;
  if (!a.trans_b && (a.is_causal || (ctx.GetInputCount() > 6 && Input(ctx, 6, "mask", where).value != nullptr)))
    Fail(where, "mask and is_causal apply to trans_b=1 (scores) only");
  PrepareMask(ctx, a, p, 6, out, "Y");
  return out;
}

}  // namespace

DiProblem MatMulPart(const DiProblem& p, int64_t split, int index) {
  const int64_t n0 = index == 0 ? 0 : split, n = index == 0 ? split : p.N - split;
  DiProblem part = p;
  part.W = p.W + n0 * p.K;
  part.ch_m = p.ch_m + n0;
  part.ch_e = p.ch_e + n0;
  if (p.w_zero != nullptr) part.w_zero = p.w_zero + n0;
  if (p.w_sum != nullptr) part.w_sum = p.w_sum + n0;
  part.N = n;
  part.out = index == 0 ? p.out : p.out2;
  part.out2 = IntOutput{};
  return part;
}

const DiSignature& Signature(DiOp op) {
  static const DiSignature kSignatures[] = {
      // Y: int8 or int16 by obits (registered untyped and optional, as DIAdd's)
      // X: int8 (abits <= 8) or int16 codes (one registration each)
      // Y2, y2_m, y2_e: the second part with split (optional, Y2 untyped as Y)
      {"DIMatMul", {kAny, kI32, kI8, kI8, kI32, kI8, kI8, kI32, kI32}, {kAny, kI32, kI8, kAny, kI32, kI8}, 6},
      {"DIExp", {kI8, kI32, kI8}, {kI8, kI32, kI8}, 3},
      // X int8 or int32 (one registration each); P: uint8 or uint16 by obits (untyped and optional, as DIMatMul's Y)
      {"DIClippedSoftmax", {kAny, kI32, kI8, kBool}, {kAny, kI32, kI8}, 3},
      // DINorm, DISwiGLU, DIRequant: y_zero (act_sym=0) is their optional fourth output; DINorm: X int8 or int16 (one
      // registration each), Y int8 or int16 by obits
      {"DINorm", {kAny, kI32, kI8, kI32, kI8}, {kAny, kI32, kI8, kI32}, 5},
      // DISwiGLU: gate and up int8 or int16, the same (ORT ties untyped inputs); DIRotary: X int8 or int16
      {"DISwiGLU", {kAny, kI32, kI8, kAny, kI32, kI8}, {kI8, kI32, kI8, kI32}, 6},
      // DIRotary: past, past_m, past_e (optional, together): the cache the output is appended to (heads_first)
      {"DIRotary", {kAny, kI32, kI8, kI64, kI16, kI16, kI8, kI32, kI8}, {kI8, kI32, kI8}, 6},
      // A, B: int8 or int16 each, Y: int8 or int16 by obits (the CPU op registers one overload per input pair)
      {"DIAdd", {kAny, kI32, kI8, kAny, kI32, kI8}, {kAny, kI32, kI8}, 6},
      {"DIBatchMatMul", {kAny, kI32, kI8, kI8, kI32, kI8, kBool}, {kI32, kI32, kI8}, 6},
      {"DIRequant", {kAny, kI32, kI8}, {kI8, kI32, kI8, kI32}, 3},
  };
  return kSignatures[static_cast<int>(op)];
}

DiAttrs DiAttrs::FromKernelInfo(const OrtKernelInfo* raw, DiOp op, bool device_inputs) {
  Ort::ConstKernelInfo info(raw);
  DiAttrs a;
  a.op = op;
  a.device_inputs = device_inputs;
  a.where = std::string("edgeq::") + Signature(op).name + " node '" + info.GetNodeName() + "'";
  if (op != DiOp::kBatchMatMul) {  // its output is wide int32, not requantized
    a.obits = ReadInt(info, "obits", a.where);
    ExpectRange(a.obits, 2, WideCodes(op) ? 16 : 8, "obits", a.where);
    a.qmax = (int64_t(1) << (a.obits - 1)) - 1;
  }
  if (WideCodes(op)) {  // ORT takes Y's element type from the graph: it must be the one obits implies
    const bool probs = op == DiOp::kClippedSoftmax;
    const ONNXTensorElementDataType want = a.obits > 8 ? (probs ? kU16 : kI16) : (probs ? kU8 : kI8);
    auto expect_codes = [&](size_t index, const char* name) {
      const ONNXTensorElementDataType got = info.GetOutputTypeInfo(index).GetTensorTypeAndShapeInfo().GetElementType();
      if (got != want)
        Fail(a.where, std::string(name) + " is " + TypeName(got) + ", but obits=" + std::to_string(a.obits) + " gives " +
                          TypeName(want) + " codes");
    };
    expect_codes(0, probs ? "P" : "Y");
    if (op == DiOp::kMatMul && info.GetOutputCount() > 3) expect_codes(3, "Y2");  // split's second part
  }
  if (op == DiOp::kNorm || op == DiOp::kSwiGLU || op == DiOp::kRequant) {
    a.clip_q15 = OptionalInt(raw, "clip_q15", integer::kClipOne);
    ExpectRange(a.clip_q15, 1, integer::kClipOne, "clip_q15", a.where);
    a.act_sym = OptionalInt(raw, "act_sym", 1);
    ExpectRange(a.act_sym, 0, 1, "act_sym", a.where);
    if (!a.act_sym && a.clip_q15 != integer::kClipOne)
      Fail(a.where, "a learned clip (clip_q15) needs symmetric codes (act_sym=1)");
    if (!a.act_sym && info.GetOutputCount() < 4) Fail(a.where, "act_sym=0 needs the zero-point output y_zero");
  }
  switch (op) {
    case DiOp::kMatMul:
      a.K = ReadInt(info, "K", a.where);
      a.N = ReadInt(info, "N", a.where);
      a.abits = ReadInt(info, "abits", a.where);
      a.wbits = ReadInt(info, "wbits", a.where);
      ExpectRange(a.K, 1, integer::kMaxK, "K", a.where);
      ExpectPositive(a.N, "N", a.where);
      ExpectRange(a.abits, 2, 16, "abits", a.where);
      ExpectRange(a.wbits, 2, 8, "wbits", a.where);
      a.split = OptionalInt(raw, "split", 0);
      if (a.split != 0) ExpectRange(a.split, 1, a.N - 1, "split", a.where);
      if (info.GetOutputCount() != (a.split != 0 ? 6 : 3))
        Fail(a.where, "split=" + std::to_string(a.split) + " needs " + (a.split ? "6 outputs (Y, y_m, y_e, Y2, y2_m, y2_e)"
                                                                                : "3 outputs (Y, y_m, y_e)") +
                          ", the node has " + std::to_string(info.GetOutputCount()));
      a.constant_inputs = CheckConstantWeights(raw, a);
      break;
    case DiOp::kClippedSoftmax:
      a.clip_q8 = ReadInt(info, "clip_q8", a.where);
      a.is_causal = ReadInt(info, "is_causal", a.where);
      ExpectRange(a.clip_q8, 0, 65535, "clip_q8", a.where);
      ExpectRange(a.is_causal, 0, 1, "is_causal", a.where);
      a.qmax = (int64_t(1) << a.obits) - 1;
      break;
    case DiOp::kNorm:
      a.eps_q60 = ReadInt(info, "eps_q60", a.where);
      if (a.eps_q60 < 0 || a.eps_q60 >= (int64_t(1) << 61))
        Fail(a.where, "attribute eps_q60=" + std::to_string(a.eps_q60) + " must be in [0, 2^61)");
      break;
    case DiOp::kBatchMatMul:
      a.trans_b = ReadInt(info, "trans_b", a.where);
      ExpectRange(a.trans_b, 0, 1, "trans_b", a.where);
      a.is_causal = OptionalInt(raw, "is_causal", 0);
      ExpectRange(a.is_causal, 0, 1, "is_causal", a.where);
      break;
    case DiOp::kSwiGLU:
      a.hadamard = OptionalInt(raw, "hadamard", 0);
      if (a.hadamard != 0 && (a.hadamard < 2 || a.hadamard > 4096 || (a.hadamard & (a.hadamard - 1)) != 0))
        Fail(a.where, "attribute hadamard=" + std::to_string(a.hadamard) + " must be 0 or a power of two in 2..4096");
      break;
    case DiOp::kRotary:
      a.interleaved = ReadInt(info, "interleaved", a.where);
      ExpectRange(a.interleaved, 0, 1, "interleaved", a.where);
      a.heads_first = OptionalInt(raw, "heads_first", 0);
      ExpectRange(a.heads_first, 0, 1, "heads_first", a.where);
      a.rotate = OptionalInt(raw, "rotate", 1);
      ExpectRange(a.rotate, 0, 1, "rotate", a.where);
      break;
    case DiOp::kRequant:
      a.heads_first = OptionalInt(raw, "heads_first", 0);
      ExpectRange(a.heads_first, 0, 1, "heads_first", a.where);
      break;
    default:
      break;
  }
  return a;
}

DiProblem PrepareIntegerOp(Ort::KernelContext& ctx, const DiAttrs& a) {
  const std::string& where = a.where;
  DiProblem p;
  std::vector<int64_t> out_shape;
  switch (a.op) {
    case DiOp::kMatMul: {
      p.x = ReadActivation(ctx, 0, "X", "x_m", "x_e", a);  // int8 or int16: one registration each (ORT checks)
      if (p.x.C != a.K)
        Fail(where, "X has shape " + ShapeText(p.x.shape) + ": last dim must equal attribute K=" + std::to_string(a.K));
      const ONNXTensorElementDataType x_want = a.abits > 8 ? kI16 : kI8;
      if (p.x.type != x_want)
        Fail(where, std::string("X is ") + TypeName(p.x.type) + ", but abits=" + std::to_string(a.abits) + " gives " +
                        TypeName(x_want) + " codes");
      p.W = WeightInput<int8_t>(ctx, a, 3, "W", {a.N, a.K}, "(N, K)", true);
      if (a.Constant(4) && a.Constant(5)) {
        p.ch_m = WeightInput<int32_t>(ctx, a, 4, "w_m", {a.N}, "(N)", true);
        p.ch_e = WeightInput<int8_t>(ctx, a, 5, "w_e", {a.N}, "(N)", true);
      } else {
        ReadChannelScales(ctx, 4, "w_m", "w_e", a.N, "(N)", a, p);
      }
      p.w_zero = WeightInput<int8_t>(ctx, a, 6, "w_zero", {a.N}, "(N)", false);
      const TensorView x_zero = ctx.GetInputCount() > 7 ? Input(ctx, 7, "x_zero", where) : TensorView{};
      const bool has_w_sum = a.Constant(8) || (ctx.GetInputCount() > 8 && ctx.GetInput(8) != nullptr);
      if ((x_zero.value != nullptr) != has_w_sum) Fail(where, "x_zero and w_sum come together");
      if (x_zero.value != nullptr) {
        ExpectShape(x_zero, "x_zero", WithLast(p.x.shape, 1), "(X's leading dims + [1])", where);
        p.x_zero = static_cast<const int32_t*>(x_zero.value.GetTensorRawData());
        p.w_sum = WeightInput<int32_t>(ctx, a, 8, "w_sum", {a.N}, "(N)", true);
      }
      const bool has_wz = p.w_zero != nullptr, has_xz = p.x_zero != nullptr;
      const int64_t limit = integer::DIMatMulMaxK(a.abits, has_wz, has_xz);
      if (a.K > limit)  // the int32 accumulator holds every sum_k (x - xz)(w - wz)
        Fail(where, "K=" + std::to_string(a.K) + (a.abits > 8 ? " at abits=" + std::to_string(a.abits) : "") +
                        (has_wz || has_xz ? std::string(" with ") + (has_wz ? "w_zero" : "") +
                                                (has_wz && has_xz ? " and " : "") + (has_xz ? "x_zero" : "")
                                          : "") +
                        " exceeds " + std::to_string(limit));
      if (a.abits > 8 && !a.device_inputs) {  // int16 codes: the bound above holds for codes within abits only
        ExpectInBits(static_cast<const int16_t*>(p.x.q), p.x.rows * a.K, a.abits, "X", where);
        if (has_xz) ExpectInBits(p.x_zero, p.x.rows, a.abits, "x_zero", where);
      }
      p.K = a.K;
      p.N = a.N;
      out_shape = WithLast(p.x.shape, a.split ? a.split : a.N);
      if (a.split) p.out2 = AllocateOutput(ctx, WithLast(p.x.shape, a.N - a.split), false, 3);
      break;
    }
    case DiOp::kClippedSoftmax:
      p.x = ReadActivation(ctx, 0, "X", "x_m", "x_e", a);  // int8 or int32: one registration each (ORT checks)
      if (p.x.C >= integer::SoftmaxMaxKeys(a.obits))  // the sum S of 2^30-scaled exps, and S * qmax < 2^64
        Fail(where, "X has " + std::to_string(p.x.C) + " keys, more than " +
                        std::to_string(integer::SoftmaxMaxKeys(a.obits) - 1) + " at obits=" + std::to_string(a.obits));
      PrepareMask(ctx, a, p, 3, p.x.shape, "X");
      if (a.is_causal && p.x.shape.size() < 2) Fail(where, "is_causal needs X of rank >= 2 ([..., Sq, Skv])");
      out_shape = p.x.shape;
      break;
    case DiOp::kNorm:
      p.x = ReadActivation(ctx, 0, "X", "x_m", "x_e", a);
      if (p.x.type != kI8 && p.x.type != kI16) Fail(where, std::string("X must be int8 or int16, got ") + TypeName(p.x.type));
      if (p.x.C > integer::kMaxK)  // the sum of squares stays below 2^31
        Fail(where, "X has " + std::to_string(p.x.C) + " channels, more than " + std::to_string(integer::kMaxK));
      ReadChannelScales(ctx, 3, "g_m", "g_e", p.x.C, "(C, X's last dim)", a, p);
      out_shape = p.x.shape;
      break;
    case DiOp::kSwiGLU:
    case DiOp::kAdd: {
      const bool add = a.op == DiOp::kAdd;
      p.x = add ? ReadActivation(ctx, 0, "A", "a_m", "a_e", a)
                : ReadActivation(ctx, 0, "gate", "gate_m", "gate_e", a);
      p.x2 = add ? ReadActivation(ctx, 3, "B", "b_m", "b_e", a)
                 : ReadActivation(ctx, 3, "up", "up_m", "up_e", a);
      ExpectSameShape(p.x, p.x2, add ? "A" : "gate", add ? "B" : "up", where);
      if (p.x.type != kI8 && p.x.type != kI16)
        Fail(where, std::string(add ? "A" : "gate") + " must be int8 or int16, got " + TypeName(p.x.type));
      if (p.x2.type != kI8 && p.x2.type != kI16)
        Fail(where, std::string(add ? "B" : "up") + " must be int8 or int16, got " + TypeName(p.x2.type));
      if (!add && p.x.type != p.x2.type)
        Fail(where, std::string("gate is ") + TypeName(p.x.type) + " but up is " + TypeName(p.x2.type));
      if (!add && a.hadamard != 0 && p.x.C % a.hadamard != 0)
        Fail(where, "hadamard=" + std::to_string(a.hadamard) + " does not divide the row of " + std::to_string(p.x.C) +
                        " values");
      out_shape = p.x.shape;
      break;
    }
    case DiOp::kRotary:
      PrepareRotary(ctx, a, p);
      out_shape = p.x.shape;
      if (a.heads_first) std::swap(out_shape[1], out_shape[2]);  // [B, H, S, D]
      out_shape[2] += p.past_len;                                // [B, H, P + S, D]
      break;
    case DiOp::kExp:
      p.x = ReadActivation(ctx, 0, "X", "x_m", "x_e", a);
      out_shape = p.x.shape;
      break;
    case DiOp::kBatchMatMul:
      out_shape = PrepareBatchMatMul(ctx, a, p);
      break;
    case DiOp::kRequant:
      p.x = ReadActivation(ctx, 0, "X", "x_m", "x_e", a);
      if (p.x.type != kI8 && p.x.type != kI32) Fail(where, std::string("X must be int8 or int32, got ") + TypeName(p.x.type));
      if (a.heads_first) {  // [B, G, S, D] -> [B, S, G * D]
        if (p.x.shape.size() != 4)
          Fail(where, "X has shape " + ShapeText(p.x.shape) + ", expected [B, G, S, D] (heads_first=1)");
        p.merged_rows = p.x.shape[1];
        p.merged_seq = p.x.shape[2];
        out_shape = {p.x.shape[0], p.x.shape[2], p.x.shape[1] * p.x.C};
        break;
      }
      if (p.x.shape.size() < 2) Fail(where, "X has shape " + ShapeText(p.x.shape) + ", expected [..., G, D]");
      p.merged_rows = p.x.shape[p.x.shape.size() - 2];
      out_shape.assign(p.x.shape.begin(), p.x.shape.end() - 1);
      out_shape.back() *= p.x.C;
      break;
  }
  p.out = AllocateOutput(ctx, out_shape, !a.act_sym);
  return p;
}

}  // namespace edgeq
