// Decoding group-quantized weight rows on the CPU, shared by the GroupQuantMatMul and SpQRMatMul kernels:
// float16 conversion, 8 codes at a time into AVX2 registers (Decode8), a GEMV over one row decoded in registers
// (GemvRow), one group decoded into floats (DecodeGroup), and the dot products of a block of decoded rows with
// every row of A (DotDecodedRows). Codes are little-endian bitstreams per group (custom_ops/schema.py).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "float16.h"

namespace edgeq {
namespace cpu {

// f(std::integral_constant<int, V>{}) for the first V of Values equal to `value`; nothing when none is.
template <int... Values, typename F>
inline void WithConstant(int64_t value, F&& f) {
  (void)((value == Values && (f(std::integral_constant<int, Values>{}), true)) || ...);
}

// f(std::integral_constant<int, BITS>{}) for the code width `bits` (others are refused by the attribute checks).
template <typename F>
inline void WithBits(int64_t bits, F&& f) {
  WithConstant<2, 3, 4, 8>(bits, f);
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

// acc[m] += scale * sum over `chunks` 8-code chunks of one group (codes k0.. of A's rows) of A[m, k] * (code - zp).
template <int BITS, int MM, bool kZeros>
inline void GemvGroup(const float* A, int64_t K, const uint8_t* bytes, int64_t k0, int64_t chunks, float scale,
                      float zp, __m256* acc) {
  const __m256 zpv = _mm256_set1_ps(zp);
  __m256 part[MM];
  for (int m = 0; m < MM; ++m) part[m] = _mm256_setzero_ps();
  for (int64_t c = 0; c < chunks; ++c) {
    __m256 w = Decode8<BITS>(bytes + c * BITS);
    if constexpr (kZeros) w = _mm256_sub_ps(w, zpv);
    for (int m = 0; m < MM; ++m) part[m] = _mm256_fmadd_ps(_mm256_loadu_ps(A + m * K + k0 + 8 * c), w, part[m]);
  }
  const __m256 sv = _mm256_set1_ps(scale);
  for (int m = 0; m < MM; ++m) acc[m] = _mm256_fmadd_ps(sv, part[m], acc[m]);
}

// Y[m, n] for m < MM and one row n: sum_k A[m, k] * scales[g] * (code[k] - zeros[g]), g = k / gs; A is float
// [MM, K], row the row's ng groups of group_bytes. Without kZeros the zeros are left out (zeros unread): the
// caller subtracts sum_g scales[g] * zeros[g] * sum_{k in g} A[m, k] itself, one vector op per code fewer.
template <int BITS, int MM, bool kZeros = true>
inline void GemvRow(const float* A, int64_t K, const uint8_t* row, int64_t gs, int64_t ng, int64_t group_bytes,
                    const float* scales, const float* zeros, float* out) {
  __m256 acc[MM];
  for (int m = 0; m < MM; ++m) acc[m] = _mm256_setzero_ps();
  // Whole groups first, with no bound to check per group.
  const int64_t whole = K / gs;
  for (int64_t g = 0; g < whole; ++g)
    GemvGroup<BITS, MM, kZeros>(A, K, row + g * group_bytes, g * gs, gs / 8, scales[g], kZeros ? zeros[g] : 0.f, acc);
  float tail[MM] = {};
  if (whole < ng) {
    // The last group ends at K: its whole 8-code chunks, then those few codes one by one.
    const int64_t g = whole, k0 = g * gs, chunks = (K - k0) / 8;
    const uint8_t* bytes = row + g * group_bytes;
    const float zp = kZeros ? zeros[g] : 0.f;
    GemvGroup<BITS, MM, kZeros>(A, K, bytes, k0, chunks, scales[g], zp, acc);
    for (int64_t k = k0 + 8 * chunks; k < K; ++k) {
      const int64_t bit = (k - k0) * BITS;
      uint32_t v = bytes[bit >> 3];
      if ((bit & 7) + BITS > 8) v |= uint32_t(bytes[(bit >> 3) + 1]) << 8;
      const float w = scales[g] * (float((v >> (bit & 7)) & ((1u << BITS) - 1)) - zp);
      for (int m = 0; m < MM; ++m) tail[m] += A[m * K + k] * w;
    }
  }
  for (int m = 0; m < MM; ++m) out[m] = HorizontalSum(acc[m]) + tail[m];
}

// f(std::integral_constant<int, MM>{}) for M = 1..kGemvRows rows of A (a larger M runs as kGemvRows).
template <typename F>
inline void WithGemvRows(int64_t M, F&& f) {
  WithConstant<1, 2, 3, 4>(std::min(M, kGemvRows), f);
}

// GemvRow for M = 1..kGemvRows rows of A, picked at run time.
template <int BITS>
inline void GemvRows(int64_t M, const float* A, int64_t K, const uint8_t* row, int64_t gs, int64_t ng,
                     int64_t group_bytes, const float* scales, const float* zeros, float* out) {
  WithGemvRows(M, [&](auto mm) { GemvRow<BITS, decltype(mm)::value>(A, K, row, gs, ng, group_bytes, scales, zeros, out); });
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

// A row of ng groups decoded into out[0, ng * gs): out[k] = scales[g] * (code[k] - zeros[g]), g = k / gs.
template <int BITS>
inline void DecodeRow(const uint8_t* row, int64_t gs, int64_t ng, int64_t group_bytes, const float* scales,
                      const float* zeros, float* out) {
  for (int64_t g = 0; g < ng; ++g) DecodeGroup<BITS>(row + g * group_bytes, gs, scales[g], zeros[g], out + g * gs);
}

// A as float [M, K]: the input itself for float32, converted into `storage` for float16.
template <typename T>
const float* FloatRows(const void* A, int64_t count, std::vector<float>& storage) {
  if constexpr (std::is_same_v<T, float>) {
    return static_cast<const float*>(A);
  } else {
    const uint16_t* src = static_cast<const uint16_t*>(A);
    storage.resize(size_t(count));
    for (size_t i = 0; i < storage.size(); ++i) storage[i] = HalfToFloat(src[i]);
    return storage.data();
  }
}

// Y[m, n0 + r] = A[m, :K] . w[r * stride, + K) for r < rows (at most 4) and every m < M; Y is [M, N].
template <typename T>
void DotDecodedRows(const float* w, int64_t stride, int64_t rows, const float* A, int64_t M, int64_t K, T* Y,
                    int64_t N, int64_t n0) {
  const float* w0 = w;
  const float* w1 = w0 + stride;
  const float* w2 = w1 + stride;
  const float* w3 = w2 + stride;
  for (int64_t m = 0; m < M; ++m) {
    const float* am = A + m * K;
    T* ym = Y + m * N + n0;
    if (rows == 4) {
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
        const float* wr = w0 + r * stride;
        float s = 0;
        for (int64_t k = 0; k < K; ++k) s += am[k] * wr[k];
        ym[r] = FromFloat<T>(s);
      }
    }
  }
}

}  // namespace cpu
}  // namespace edgeq
