// edgeq::GroupQuantMatMul on the CPU execution provider.
//
// Work is split across ORT's intra-op thread pool by blocks of kRows output rows: each task decodes its rows
// of W once into float (scale * (code - zp), exact up to one rounding) and then takes their dot products with
// every row of A, so a block's weights are read from memory once whatever M is. The inner loops are plain
// loops over contiguous floats that the compiler vectorises (built with -O3 -march and reassociation allowed).
#include <algorithm>
#include <cstring>
#include <vector>

#if defined(__F16C__)
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
    for (int64_t c = 0; c < gs / 8; ++c) {
      uint32_t v = 0;
      std::memcpy(&v, bytes + c * BITS, BITS);
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
}

}  // namespace cpu
}  // namespace edgeq
