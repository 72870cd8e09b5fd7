// edgeq::GroupQuantMatMul on the CPU execution provider.
//
// Work is split across ORT's intra-op thread pool by blocks of kRows output rows, so each task reads its rows
// of W from memory once whatever M is.
//  - M <= kGemvRows (decode): each group's codes are decoded 8 at a time straight into vector registers and
//    multiplied with A there (AVX2: broadcast, per-lane shift, mask, convert), the scale applied per group.
//  - larger M: the block's rows are decoded once into float (scale * (code - zp)) and then dotted with every
//    row of A; those loops are plain loops over contiguous floats that the compiler vectorises.
// Without AVX2+FMA the decode path falls back to the second scheme.
#include <algorithm>
#include <cstring>
#include <vector>

#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "../group_quant_matmul.h"
#include "cpu_ops.h"

namespace edgeq {
namespace cpu {
namespace {

constexpr int64_t kRows = 4;

inline float HalfToFloat(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      int e = -1;
      uint32_t m = mant;
      do { m <<= 1; ++e; } while ((m & 0x400u) == 0);
      bits = sign | (uint32_t(127 - 15 - e) << 23) | ((m & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
#endif
}

inline uint16_t FloatToHalf(float f) {
#if defined(__F16C__)
  return _cvtss_sh(f, 0);  // 0 = round to nearest even
#else
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) return uint16_t(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0));
  if (absx >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65520: infinity
  if (absx < 0x38800000u) {  // result is subnormal or zero
    if (absx < 0x33000000u) return uint16_t(sign);
    const uint32_t shift = 126 - (absx >> 23);  // 14..24
    const uint32_t mant = (absx & 0x7fffffu) | 0x800000u;
    uint32_t h = mant >> (shift);
    const uint32_t rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) ++h;
    return uint16_t(sign | h);
  }
  uint32_t h = ((absx >> 13) - (112u << 10));
  const uint32_t rem = absx & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) ++h;
  return uint16_t(sign | h);
#endif
}

#if defined(__AVX2__) && defined(__FMA__)
#define EDGEQ_CPU_GEMV 1
constexpr int64_t kGemvRows = 4;

// Codes 0..7 of an 8-code chunk (BITS bytes, little-endian bitstream) as floats.
template <int BITS>
inline __m256 Decode8(const uint8_t* p) {
  if constexpr (BITS == 8) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  } else {
    // Assembled from byte loads: a 2- or 3-byte memcpy into a word goes through the stack and stalls store
    // forwarding (3-bit ran 6x slower than 4-bit that way).
    uint32_t v = uint32_t(p[0]) | uint32_t(p[1]) << 8;
    if constexpr (BITS >= 3) v |= uint32_t(p[2]) << 16;
    if constexpr (BITS >= 4) v |= uint32_t(p[3]) << 24;
    const __m256i shifts = _mm256_setr_epi32(0, BITS, 2 * BITS, 3 * BITS, 4 * BITS, 5 * BITS, 6 * BITS, 7 * BITS);
    const __m256i codes = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(v)), shifts),
                                           _mm256_set1_epi32((1 << BITS) - 1));
    return _mm256_cvtepi32_ps(codes);
  }
}

inline float HorizontalSum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

// Y[m, n] for m < MM and one row n; A is float [MM, K].
template <int BITS, int MM>
inline void GemvRow(const float* A, int64_t K, const uint8_t* row, int64_t gs, int64_t ng, int64_t group_bytes,
                    const float* scales, const uint8_t* zps, float default_zp, float* out) {
  __m256 acc[MM];
  float tail[MM];
  for (int m = 0; m < MM; ++m) {
    acc[m] = _mm256_setzero_ps();
    tail[m] = 0.f;
  }
  for (int64_t g = 0; g < ng; ++g) {
    const uint8_t* bytes = row + g * group_bytes;
    const int64_t k0 = g * gs, in_k = std::min(gs, K - k0), chunks = in_k / 8;
    const float zp = zps ? float(zps[g]) : default_zp;
    const __m256 zpv = _mm256_set1_ps(zp);
    __m256 part[MM];
    for (int m = 0; m < MM; ++m) part[m] = _mm256_setzero_ps();
    for (int64_t c = 0; c < chunks; ++c) {
      const __m256 w = _mm256_sub_ps(Decode8<BITS>(bytes + c * BITS), zpv);
      for (int m = 0; m < MM; ++m) part[m] = _mm256_fmadd_ps(_mm256_loadu_ps(A + m * K + k0 + 8 * c), w, part[m]);
    }
    const __m256 sv = _mm256_set1_ps(scales[g]);
    for (int m = 0; m < MM; ++m) acc[m] = _mm256_fmadd_ps(sv, part[m], acc[m]);
    // The last group may end inside an 8-code chunk (K off the grid): those few codes one by one.
    for (int64_t k = k0 + 8 * chunks; k < k0 + in_k; ++k) {
      const int64_t bit = (k - k0) * BITS;
      uint32_t v = bytes[bit >> 3];
      if ((bit & 7) + BITS > 8) v |= uint32_t(bytes[(bit >> 3) + 1]) << 8;
      const float w = scales[g] * (float((v >> (bit & 7)) & ((1u << BITS) - 1)) - zp);
      for (int m = 0; m < MM; ++m) tail[m] += A[m * K + k] * w;
    }
  }
  for (int m = 0; m < MM; ++m) out[m] = HorizontalSum(acc[m]) + tail[m];
}
#endif

// Decodes one group of `gs` codes into out[i] = scale * (code_i - zp).
template <int BITS>
inline void DecodeGroup(const uint8_t* bytes, int64_t gs, float scale, float zp, float* out) {
  if constexpr (BITS == 8) {
    for (int64_t i = 0; i < gs; ++i) out[i] = (float(bytes[i]) - zp) * scale;
  } else if constexpr (BITS == 4) {
    for (int64_t j = 0; j < gs / 2; ++j) {
      out[2 * j] = (float(bytes[j] & 0xf) - zp) * scale;
      out[2 * j + 1] = (float(bytes[j] >> 4) - zp) * scale;
    }
  } else if constexpr (BITS == 2) {
    for (int64_t j = 0; j < gs / 4; ++j) {
      const uint8_t b = bytes[j];
      out[4 * j] = (float(b & 3) - zp) * scale;
      out[4 * j + 1] = (float((b >> 2) & 3) - zp) * scale;
      out[4 * j + 2] = (float((b >> 4) & 3) - zp) * scale;
      out[4 * j + 3] = (float(b >> 6) - zp) * scale;
    }
  } else {
    // 8 codes fill exactly BITS bytes, so each 8-code chunk starts on a byte boundary.
#if defined(EDGEQ_CPU_GEMV)
    const __m256 zpv = _mm256_set1_ps(zp), sv = _mm256_set1_ps(scale);
    for (int64_t c = 0; c < gs / 8; ++c)
      _mm256_storeu_ps(out + 8 * c, _mm256_mul_ps(_mm256_sub_ps(Decode8<BITS>(bytes + c * BITS), zpv), sv));
    return;
#endif
    for (int64_t c = 0; c < gs / 8; ++c) {
      uint32_t v = 0;
      for (int b = 0; b < BITS; ++b) v |= uint32_t(bytes[c * BITS + b]) << (8 * b);
      for (int i = 0; i < 8; ++i) out[8 * c + i] = (float((v >> (i * BITS)) & ((1u << BITS) - 1)) - zp) * scale;
    }
  }
}

template <typename T>
struct Task {
  const GqmmAttrs* attrs;
  int64_t M;
  const float* A;  // [M, K], already float
  const uint8_t* B;
  const T* scales;
  const uint8_t* zero_points;
  T* Y;
};

template <typename T>
inline float ToFloat(T v) {
  if constexpr (std::is_same_v<T, float>) return v; else return HalfToFloat(v);
}

template <typename T>
inline T FromFloat(float v) {
  if constexpr (std::is_same_v<T, float>) return v; else return FloatToHalf(v);
}

template <typename T, int BITS>
void RunBlock(const Task<T>& t, int64_t block) {
  const GqmmAttrs& a = *t.attrs;
  const int64_t K = a.K, N = a.N, gs = a.group_size, ng = a.n_groups, padded = ng * gs;
  const int64_t n0 = block * kRows, rows = std::min(kRows, N - n0);
  const float default_zp = float(1 << (BITS - 1));
#if defined(EDGEQ_CPU_GEMV)
  if (t.M <= kGemvRows) {
    float scales[512], out[kGemvRows];
    std::vector<float> big_scales;
    float* sc = scales;
    if (ng > 512) {
      big_scales.resize(size_t(ng));
      sc = big_scales.data();
    }
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t n = n0 + r;
      for (int64_t g = 0; g < ng; ++g) sc[g] = ToFloat(t.scales[n * ng + g]);
      const uint8_t* row = t.B + n * ng * a.group_bytes;
      const uint8_t* zps = t.zero_points ? t.zero_points + n * ng : nullptr;
      switch (t.M) {
        case 1: GemvRow<BITS, 1>(t.A, K, row, gs, ng, a.group_bytes, sc, zps, default_zp, out); break;
        case 2: GemvRow<BITS, 2>(t.A, K, row, gs, ng, a.group_bytes, sc, zps, default_zp, out); break;
        case 3: GemvRow<BITS, 3>(t.A, K, row, gs, ng, a.group_bytes, sc, zps, default_zp, out); break;
        default: GemvRow<BITS, 4>(t.A, K, row, gs, ng, a.group_bytes, sc, zps, default_zp, out); break;
      }
      for (int64_t m = 0; m < t.M; ++m) t.Y[m * N + n] = FromFloat<T>(out[m]);
    }
    return;
  }
#endif

  thread_local std::vector<float> w;
  w.resize(size_t(kRows * padded));
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t n = n0 + r;
    const uint8_t* row = t.B + n * ng * a.group_bytes;
    for (int64_t g = 0; g < ng; ++g) {
      const float zp = t.zero_points ? float(t.zero_points[n * ng + g]) : default_zp;
      DecodeGroup<BITS>(row + g * a.group_bytes, gs, ToFloat(t.scales[n * ng + g]), zp, w.data() + r * padded + g * gs);
    }
  }
  const float* w0 = w.data();
  const float* w1 = w0 + padded;
  const float* w2 = w1 + padded;
  const float* w3 = w2 + padded;
  for (int64_t m = 0; m < t.M; ++m) {
    const float* am = t.A + m * K;
    T* ym = t.Y + m * N + n0;
    if (rows == kRows) {
      float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (int64_t k = 0; k < K; ++k) {
        const float x = am[k];
        s0 += x * w0[k];
        s1 += x * w1[k];
        s2 += x * w2[k];
        s3 += x * w3[k];
      }
      ym[0] = FromFloat<T>(s0);
      ym[1] = FromFloat<T>(s1);
      ym[2] = FromFloat<T>(s2);
      ym[3] = FromFloat<T>(s3);
    } else {
      for (int64_t r = 0; r < rows; ++r) {
        const float* wr = w0 + r * padded;
        float s = 0;
        for (int64_t k = 0; k < K; ++k) s += am[k] * wr[k];
        ym[r] = FromFloat<T>(s);
      }
    }
  }
}

template <typename T, int BITS>
void RunTask(void* data, size_t block) {
  RunBlock<T, BITS>(*static_cast<const Task<T>*>(data), int64_t(block));
}

template <typename T>
void Compute(Ort::KernelContext& ctx, const GqmmAttrs& attrs, const GqmmProblem& p) {
  std::vector<float> a_float;
  const float* A;
  if constexpr (std::is_same_v<T, float>) {
    A = static_cast<const float*>(p.A);
  } else {
    const uint16_t* src = static_cast<const uint16_t*>(p.A);
    a_float.resize(size_t(p.M * attrs.K));
    for (size_t i = 0; i < a_float.size(); ++i) a_float[i] = HalfToFloat(src[i]);
    A = a_float.data();
  }
  Task<T> task{&attrs, p.M, A, p.B, static_cast<const T*>(p.scales), p.zero_points, static_cast<T*>(p.Y)};
  void (*fn)(void*, size_t) = nullptr;
  switch (attrs.bits) {
    case 2: fn = RunTask<T, 2>; break;
    case 3: fn = RunTask<T, 3>; break;
    case 4: fn = RunTask<T, 4>; break;
    case 8: fn = RunTask<T, 8>; break;
  }
  const size_t blocks = size_t((attrs.N + kRows - 1) / kRows);
  ctx.ParallelFor(fn, blocks, 0, &task);
}

struct Kernel {
  explicit Kernel(const OrtKernelInfo* info) : attrs(GqmmAttrs::FromKernelInfo(info)) {}

  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    return StatusFrom([&] {
      Ort::KernelContext ctx(raw);
      GqmmProblem p = PrepareGroupQuantMatMul(ctx, attrs);
      if (p.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) Compute<float>(ctx, attrs, p);
      else Compute<uint16_t>(ctx, attrs, p);
    });
  }

  GqmmAttrs attrs;
};

struct Op : Ort::CustomOpBase<Op, Kernel, /*WithStatus=*/true> {
  Op() { OrtCustomOp::InferOutputShapeFn = InferGroupQuantMatMul; }
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return StatusFrom([&] { *kernel = new Kernel(info); });
  }
  const char* GetName() const { return kGroupQuantMatMul; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return 4; }
  ONNXTensorElementDataType GetInputType(size_t index) const { return GqmmInputType(index); }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return GqmmInputCharacteristic(index);
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED; }
};

}  // namespace

void RegisterOps(Ort::CustomOpDomain& domain) {
  static Op group_quant_matmul;
  domain.Add(&group_quant_matmul);
  RegisterQuantLinear(domain);
}

}  // namespace cpu
}  // namespace edgeq
