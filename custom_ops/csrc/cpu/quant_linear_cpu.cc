// edgeq::QuantLinear on the CPU execution provider: an integer GEMM.
//
// Activations are quantized per token first (the rounding of every step is the exporter's, so the codes are
// bit-identical to its Div/Round/Clip chain), widened to int16 and zero-padded to a multiple of 16. Work is
// then split across ORT's intra-op pool by blocks of kBlockN weight rows: a task widens its rows to int16
// once and takes their dot products with every activation row in register tiles of two activation rows by
// kTileN weight rows, so each activation load feeds four multiply-adds and each weight load two. The products
// go through vpmaddwd (int16 x int16, pairs summed into int32) where AVX2 exists: |q| <= 128 and |w| <= 128,
// so a pair never exceeds 2^15 and the int32 sums are exact for any K the op accepts. K is walked in chunks:
// the block's weight rows and two activation rows of one chunk stay in L1 while all activation rows pass, and
// each activation chunk, read from L2, serves all kBlockN weight rows before it is dropped. Zero points (w_zero,
// act_sym=0) never enter the loops: the epilogue corrects the int32 sums with each row's code sum and zero point
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

namespace edgeq {
namespace cpu {
namespace {

constexpr int64_t kTileN = 4;      // weight rows of one register tile
constexpr int64_t kBlockN = 16;    // weight rows of one task
constexpr int64_t kChunkK = 512;   // int16 elements: 16 weight rows + 2 activation rows = 18 KiB
constexpr int64_t kAlignK = 16;    // one 256-bit vector of int16

// The exporter computes each step in T: a float16 result is rounded to float16 before the next step.
template <typename T>
inline float RoundToT(float v) {
  if constexpr (std::is_same_v<T, float>) return v; else return HalfToFloat(FloatToHalf(v));
}

template <typename T>
inline float ScaleFloor() {
  if constexpr (std::is_same_v<T, float>) return kQlScaleFloor; else return HalfToFloat(kQlScaleFloorHalf);
}

// q[0, Kp) = the row's codes (zero past K), *q_sum their sum, *z its zero (0 when symmetric); returns s_x. One pass
// finds hi = max(max a, 0) and nlo = max(max -a, 0): max|a| for the symmetric rule, the range [-nlo, hi] for the
// asymmetric one (act_sym=0), whose codes u in [0, L] are stored as u - 2^(abits-1), the zero point likewise (the
// CUDA quantize kernel's rule, step for step).
template <typename T>
float QuantizeRow(const T* a, int64_t K, int64_t Kp, int abits, bool sym, int16_t* q, int32_t* q_sum, int32_t* z) {
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
    q[k] = int16_t(int(std::min(std::max(r, cmin), cmax)) - mid);
    sum += q[k];
  }
  std::fill(q + K, q + Kp, int16_t(0));
  *q_sum = sum;
  *z = int32_t(zp) - mid;
  return s;
}

// Row n of B as int16 values, zero past K.
void WidenRow(const int8_t* row, int64_t K, int64_t Kp, bool packed, int16_t* out) {
  if (packed) {
    const int64_t pairs = K / 2;
    for (int64_t j = 0; j < pairs; ++j) {
      const int8_t b = row[j];
      out[2 * j] = int16_t(int8_t(uint8_t(b) << 4) >> 4);  // low nibble, sign-extended
      out[2 * j + 1] = int16_t(b >> 4);                     // high nibble (arithmetic shift)
    }
    if (K % 2) out[K - 1] = int16_t(int8_t(uint8_t(row[pairs]) << 4) >> 4);
  } else {
    for (int64_t k = 0; k < K; ++k) out[k] = row[k];
  }
  std::fill(out + K, out + Kp, int16_t(0));
}

#if defined(__AVX2__)
inline int32_t HorizontalSum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}
#endif

// acc[i * kBlockN + r] += sum_{k < len} a_i[k] * w[r * ldw + k] for MR activation rows and kTileN weight
// rows; len % 16 == 0.
template <int MR>
inline void DotTile(const int16_t* a0, const int16_t* a1, const int16_t* w, int64_t ldw, int64_t len, int32_t* acc) {
#if defined(__AVX2__)
  __m256i sum[MR][kTileN];
  for (int i = 0; i < MR; ++i)
    for (int r = 0; r < kTileN; ++r) sum[i][r] = _mm256_setzero_si256();
  for (int64_t k = 0; k < len; k += kAlignK) {
    __m256i wv[kTileN];
    for (int r = 0; r < kTileN; ++r) wv[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * ldw + k));
    const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a0 + k));
    for (int r = 0; r < kTileN; ++r) sum[0][r] = _mm256_add_epi32(sum[0][r], _mm256_madd_epi16(x0, wv[r]));
    if constexpr (MR == 2) {
      const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a1 + k));
      for (int r = 0; r < kTileN; ++r) sum[1][r] = _mm256_add_epi32(sum[1][r], _mm256_madd_epi16(x1, wv[r]));
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int r = 0; r < kTileN; ++r) acc[i * kBlockN + r] += HorizontalSum(sum[i][r]);
#else
  const int16_t* a[2] = {a0, a1};
  for (int i = 0; i < MR; ++i)
    for (int r = 0; r < kTileN; ++r) {
      int32_t s = 0;
      for (int64_t k = 0; k < len; ++k) s += int32_t(a[i][k]) * int32_t(w[r * ldw + k]);
      acc[i * kBlockN + r] += s;
    }
#endif
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
struct Task {
  const QlAttrs* attrs;
  int64_t M, Kp;
  const T* A;
  int16_t* q;      // [M, Kp]
  float* s_x;      // [M]
  int32_t* q_sum;  // [M]
  int32_t* z;      // [M] per-token zero (0 when act_sym)
  const QlProblem* p;
};

template <typename T>
void QuantizeTask(void* data, size_t m) {
  auto& t = *static_cast<const Task<T>*>(data);
  const QlAttrs& a = *t.attrs;
  t.s_x[m] = QuantizeRow<T>(t.A + int64_t(m) * a.K, a.K, t.Kp, int(a.abits), a.act_sym, t.q + int64_t(m) * t.Kp,
                            t.q_sum + m, t.z + m);
}

template <typename T>
void GemmTask(void* data, size_t block) {
  auto& t = *static_cast<const Task<T>*>(data);
  const QlAttrs& a = *t.attrs;
  const int64_t K = a.K, N = a.N, M = t.M, Kp = t.Kp;
  const int64_t n0 = int64_t(block) * kBlockN, rows = std::min(kBlockN, N - n0);

  thread_local std::vector<int16_t> w;
  thread_local std::vector<int32_t> acc;
  w.resize(size_t(kBlockN * Kp));
  for (int64_t r = 0; r < kBlockN; ++r) {
    if (r < rows) WidenRow(t.p->B + (n0 + r) * a.row_bytes, K, Kp, a.packed(), w.data() + r * Kp);
    else std::fill(w.begin() + r * Kp, w.begin() + (r + 1) * Kp, int16_t(0));
  }
  acc.assign(size_t(M * kBlockN), 0);
  const int64_t tiles = (rows + kTileN - 1) / kTileN;  // rows past N are zero weights: only skip whole tiles
  for (int64_t k0 = 0; k0 < Kp; k0 += kChunkK) {
    const int64_t len = std::min(kChunkK, Kp - k0);
    int64_t m = 0;
    for (; m + 1 < M; m += 2)
      for (int64_t g = 0; g < tiles; ++g)
        DotTile<2>(t.q + m * Kp + k0, t.q + (m + 1) * Kp + k0, w.data() + g * kTileN * Kp + k0, Kp, len,
                   acc.data() + m * kBlockN + g * kTileN);
    if (m < M)
      for (int64_t g = 0; g < tiles; ++g)
        DotTile<1>(t.q + m * Kp + k0, nullptr, w.data() + g * kTileN * Kp + k0, Kp, len,
                   acc.data() + m * kBlockN + g * kTileN);
  }
  float ws[kBlockN];
  for (int64_t r = 0; r < rows; ++r) ws[r] = ToFloat(static_cast<const T*>(t.p->w_scales)[n0 + r]);
  for (int64_t m = 0; m < M; ++m) {
    T* y = static_cast<T*>(t.p->Y) + m * N + n0;
    for (int64_t r = 0; r < rows; ++r) {
      const float scale = Opaque(t.s_x[m] * ws[r]);
      y[r] = FromFloat<T>(float(QlCorrected(acc[m * kBlockN + r], *t.p, K, n0 + r, t.q_sum[m], t.z[m])) * scale);
    }
  }
}

template <typename T>
void Compute(Ort::KernelContext& ctx, const QlAttrs& attrs, const QlProblem& p) {
  const int64_t Kp = (attrs.K + kAlignK - 1) / kAlignK * kAlignK;
  std::vector<int16_t> q(size_t(p.M * Kp));
  std::vector<float> s_x(size_t(p.M));
  std::vector<int32_t> q_sum(size_t(p.M)), z(size_t(p.M), 0);
  Task<T> task{&attrs, p.M, Kp, static_cast<const T*>(p.A), q.data(), s_x.data(), q_sum.data(), z.data(), &p};
  ctx.ParallelFor(QuantizeTask<T>, size_t(p.M), 0, &task);
  ctx.ParallelFor(GemmTask<T>, size_t((attrs.N + kBlockN - 1) / kBlockN), 0, &task);
}

struct Kernel {
  explicit Kernel(const OrtKernelInfo* info) : attrs(QlAttrs::FromKernelInfo(info)) {}

  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    return StatusFrom([&] {
      Ort::KernelContext ctx(raw);
      QlProblem p = PrepareQuantLinear(ctx, attrs);
      if (p.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) Compute<float>(ctx, attrs, p);
      else Compute<uint16_t>(ctx, attrs, p);
    });
  }

  QlAttrs attrs;
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
