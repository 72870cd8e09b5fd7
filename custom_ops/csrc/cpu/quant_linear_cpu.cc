// edgeq::QuantLinear on the CPU execution provider: an integer GEMM.
//
// Activations are quantized per token first (the rounding of every step is the exporter's, so the codes are
// bit-identical to its Div/Round/Clip chain) into int8 codes; then the integer ops' int8 GEMM (int8_gemm.h: VNNI,
// AVX-512 or AVX2 tiles, tasks of kBlockN weight rows on ORT's intra-op pool) takes their int32 dot products with
// the weights, packed 4-bit rows unpacked to int8 per task first, and each task finishes its block with the
// epilogue. |q| <= 128 and |w| <= 128, so the int32 sums are exact for any K the op accepts. Zero points (w_zero,
// act_sym=0) never enter the GEMM: the epilogue corrects the int32 sums with each row's code sum and zero point
// (QlCorrected).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

#include "../quant_linear.h"
#include "cpu_ops.h"
#include "float16.h"
#include "int8_gemm.h"

namespace edgeq {
namespace cpu {
namespace {

// The exporter computes each step in T: a float16 result is rounded to float16 before the next step.
template <typename T>
inline float RoundToT(float v) {
  if constexpr (std::is_same_v<T, float>) return v; else return HalfToFloat(FloatToHalf(v));
}

template <typename T>
inline float ScaleFloor() {
  if constexpr (std::is_same_v<T, float>) return kQlScaleFloor; else return HalfToFloat(kQlScaleFloorHalf);
}

// q[0, K) = the row's codes, *q_sum their sum, *z its zero (0 when symmetric); returns s_x. One pass finds
// hi = max(max a, 0) and nlo = max(max -a, 0): max|a| for the symmetric rule, the range [-nlo, hi] for the
// asymmetric one (act_sym=0), whose codes u in [0, L] are stored as u - 2^(abits-1), the zero point likewise (the
// CUDA quantize kernel's rule, step for step).
template <typename T>
float QuantizeRow(const T* a, int64_t K, int abits, bool sym, int8_t* q, int32_t* q_sum, int32_t* z) {
  float hi = 0.f, nlo = 0.f;
  for (int64_t k = 0; k < K; ++k) {
    const float v = ToFloat(a[k]);
    hi = std::max(hi, v);
    nlo = std::max(nlo, -v);
  }
  float s, zp, cmin, cmax;
  int mid;
  if (sym) {
    const int qmax = (1 << (abits - 1)) - 1;
    s = std::max(RoundToT<T>(std::max(hi, nlo) / float(qmax)), ScaleFloor<T>());
    zp = 0.f, cmin = float(-qmax - 1), cmax = float(qmax), mid = 0;
  } else {
    const int levels = (1 << abits) - 1;
    s = std::max(RoundToT<T>(RoundToT<T>(hi + nlo) / float(levels)), ScaleFloor<T>());
    zp = std::nearbyint(RoundToT<T>(nlo / s)), cmin = 0.f, cmax = float(levels), mid = 1 << (abits - 1);
  }
  int32_t sum = 0;
  for (int64_t k = 0; k < K; ++k) {
    const float r = std::nearbyint(RoundToT<T>(ToFloat(a[k]) / s)) + zp;  // half to even, the ONNX Round
    q[k] = int8_t(int(std::min(std::max(r, cmin), cmax)) - mid);
    sum += q[k];
  }
  *q_sum = sum;
  *z = int32_t(zp) - mid;
  return s;
}

// A packed row of B (value 2j in the low nibble of byte j, 2j+1 in the high one) as int8 values.
void UnpackRow(const int8_t* row, int64_t K, int8_t* out) {
  const int64_t pairs = K / 2;
  for (int64_t j = 0; j < pairs; ++j) {
    const int8_t b = row[j];
    out[2 * j] = int8_t(int8_t(uint8_t(b) << 4) >> 4);  // low nibble, sign-extended
    out[2 * j + 1] = int8_t(b >> 4);                     // high nibble (arithmetic shift)
  }
  if (K % 2) out[K - 1] = int8_t(int8_t(uint8_t(row[pairs]) << 4) >> 4);
}

// The epilogue's rounding is part of the op's contract: Y = acc * (s_x * w_scale), the scale product first. The
// build allows reassociation, under which the compiler turns that into (acc * w_scale) * s_x; an empty asm
// statement makes the product opaque to it.
inline float Opaque(float v) {
#if defined(__x86_64__) || defined(__i386__)
  asm("" : "+x"(v));
  return v;
#else
  volatile float kept = v;
  return kept;
#endif
}

template <typename T>
void Compute(Ort::KernelContext& ctx, const QlAttrs& a, Gemm gemm, const QlProblem& p) {
  const int64_t M = p.M, K = a.K, N = a.N;
  const T* A = static_cast<const T*>(p.A);
  std::vector<int8_t> q(static_cast<size_t>(M * K));
  std::vector<float> s_x(static_cast<size_t>(M));
  std::vector<int32_t> q_sum(static_cast<size_t>(M)), z(static_cast<size_t>(M), 0);
  auto quantize = [&](int64_t m) {
    s_x[m] = QuantizeRow<T>(A + m * K, K, int(a.abits), a.act_sym, q.data() + m * K, &q_sum[m], &z[m]);
  };
  ParallelFor(ctx, M, quantize);
  const GemmOperands ops(gemm, q.data(), M, K);
  auto block = [&](int64_t b) {
    const int64_t n0 = b * kBlockN, rows = std::min(kBlockN, N - n0);
    const int8_t* w = p.B + n0 * a.row_bytes;
    thread_local std::vector<int8_t> unpacked;
    if (a.packed()) {
      unpacked.resize(size_t(kBlockN * K));
      for (int64_t r = 0; r < rows; ++r) UnpackRow(p.B + (n0 + r) * a.row_bytes, K, unpacked.data() + r * K);
      w = unpacked.data();
    }
    thread_local std::vector<int32_t> acc;
    acc.resize(size_t(M * kBlockN));
    GemmBlockAny(gemm, ops.For(0, w, K), M, 0, rows, acc.data(), kBlockN);
    float ws[kBlockN];
    for (int64_t r = 0; r < rows; ++r) ws[r] = ToFloat(static_cast<const T*>(p.w_scales)[n0 + r]);
    for (int64_t m = 0; m < M; ++m) {
      T* y = static_cast<T*>(p.Y) + m * N + n0;
      for (int64_t r = 0; r < rows; ++r) {
        const float scale = Opaque(s_x[m] * ws[r]);
        y[r] = FromFloat<T>(float(QlCorrected(acc[m * kBlockN + r], p, K, n0 + r, q_sum[m], z[m])) * scale);
      }
    }
  };
  ParallelFor(ctx, (N + kBlockN - 1) / kBlockN, block);
}

struct Kernel {
  explicit Kernel(const OrtKernelInfo* info) : attrs(QlAttrs::FromKernelInfo(info)), gemm(ChooseGemm(attrs.where)) {}

  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    return StatusFrom([&] {
      Ort::KernelContext ctx(raw);
      QlProblem p = PrepareQuantLinear(ctx, attrs);
      if (p.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) Compute<float>(ctx, attrs, gemm, p);
      else Compute<uint16_t>(ctx, attrs, gemm, p);
    });
  }

  QlAttrs attrs;
  Gemm gemm;  // EDGEQ_DIMATMUL_KERNEL pins it, as for the integer ops
};

struct Op : Ort::CustomOpBase<Op, Kernel, /*WithStatus=*/true> {
  Op() { OrtCustomOp::InferOutputShapeFn = InferQuantLinear; }
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return StatusFrom([&] { *kernel = new Kernel(info); });
  }
  const char* GetName() const { return kQuantLinear; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return kQlInputs; }
  ONNXTensorElementDataType GetInputType(size_t index) const { return QlInputType(index); }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return QlInputCharacteristic(index);
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED; }
};

}  // namespace

void RegisterQuantLinear(Ort::CustomOpDomain& domain) {
  static Op quant_linear;
  domain.Add(&quant_linear);
}

}  // namespace cpu
}  // namespace edgeq
