// The int8 x int8 -> int32 GEMM of the CPU kernels (DIMatMul, DIBatchMatMul, QuantLinear): tasks of kBlockN weight
// rows on ORT's intra-op pool, register tiles of 4 (AVX-512) or 2 (AVX2) activation rows x kTileN weight rows, with
// AVX-512 VNNI (vpdpbusd, 64 products per instruction), AVX-512 BW or AVX2 (vpmaddwd on int16, 32 or 16 lanes)
// where the build has them. Exact while every true sum fits int32 (K * 2^14 < 2^31 for int8 codes). DIMatMul's
// int16 activations (abits > 8) take the vpmaddwd kernels as they are (a pair of products stays below 2^23) or the
// scalar one, never vpdpbusd. Header-only: each kernel file compiles its own copy (internal linkage).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "../op_checks.h"
#include "../ort_api.h"

namespace edgeq {
namespace cpu {
namespace {

constexpr int64_t kBlockN = 64;  // weight rows of one GEMM task
constexpr int kTileM = 2, kTileN = 4;

// Loops of fewer elements of cheap work run inline: waking the pool and waiting for it costs a few microseconds,
// more than such a loop (decode's rotary heads, its attention rows of one token).
constexpr int64_t kInlineWork = 2048;

// Runs f(i) for i in [0, n) on ORT's intra-op thread pool; inline (without the pool's hand-off) for one task, or
// when the tasks' work_per_task elements add up to less than kInlineWork (the default never does).
template <typename F>
void ParallelFor(Ort::KernelContext& ctx, int64_t n, F& f, int64_t work_per_task = kInlineWork) {
  if (n == 1) return f(0);
  if (n * work_per_task < kInlineWork) {
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
  ctx.ParallelFor([](void* data, size_t i) { (*static_cast<F*>(data))(int64_t(i)); }, size_t(n), 0, &f);
}

// The GEMM kernels: acc[i * acc_stride + j] = sum_k x[i * K + k] * w[j * K + k] for a tile of MR activation
// rows and NR weight rows, each exact in int32. EDGEQ_DIMATMUL_KERNEL=auto|vnni|avx512|avx2|scalar (read at session
// creation) pins one; auto takes the widest this build has.
enum class Gemm { kScalar, kAvx2, kAvx512, kVnni };

// One int8 activation row (decode) as AVX2's one-row byte kernel (RowAvx2Bytes) takes it: each -128 raised to
// -127, so that sign(w) * x' stays a byte, and the positions raised, whose weights the row's sum gives back (x = x' -
// 1 there). More than kMaxRaised such codes leave the call to the int16 kernel (Prepare returns false); a decode row
// holds one or two (its minimum, on an asymmetric grid).
struct ByteRow {
  static constexpr int kMaxRaised = 8;
  const int8_t* x = nullptr;  // [K]
  int32_t raised[kMaxRaised];
  int count = 0;
  bool Prepare(const int8_t* X, int64_t K, int8_t* out) {
    for (int64_t k = 0; k < K; ++k) {
      const bool low = X[k] == -128;
      if (low) {
        if (count == kMaxRaised) return false;
        raised[count++] = int32_t(k);
      }
      out[k] = low ? int8_t(-127) : X[k];
    }
    x = out;
    return true;
  }
};

struct GemmInput {
  const int8_t* x;       // activation codes [M, K] (null for int16 codes)
  const int16_t* x16;    // the same widened to int16 (kAvx2, kAvx512), or the int16 codes themselves
  const int32_t* x_sum;  // sum_k x[m, k] per row (kVnni only)
  const int8_t* w;       // weight codes [N, K]
  int64_t K;
  const ByteRow* bytes = nullptr;  // kAvx2's one-row byte kernel for one activation row (M = 1), or null
};

template <typename X, int MR, int NR>
void TileScalarOf(const X* xs, const GemmInput& g, int64_t m, int64_t n, int32_t* acc, int64_t acc_stride) {
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      const X* x = xs + (m + i) * g.K;
      const int8_t* w = g.w + (n + j) * g.K;
      int32_t sum = 0;
      for (int64_t k = 0; k < g.K; ++k) sum += int32_t(x[k]) * int32_t(w[k]);
      acc[i * acc_stride + j] = sum;
    }
}

template <int MR, int NR>
void TileScalar(const GemmInput& g, int64_t m, int64_t n, int32_t* acc, int64_t acc_stride) {
  if (g.x == nullptr) return TileScalarOf<int16_t, MR, NR>(g.x16, g, m, n, acc, acc_stride);
  TileScalarOf<int8_t, MR, NR>(g.x, g, m, n, acc, acc_stride);
}

#if defined(__AVX2__)
constexpr bool kHaveAvx2 = true;

inline int32_t HorizontalSum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

// vpmaddwd on int16: activations widened once, weights in registers; a pair of products is at most 2^15.
template <int MR, int NR>
void TileAvx2(const GemmInput& g, int64_t m, int64_t n, int32_t* acc, int64_t acc_stride) {
  const int64_t K = g.K;
  const int16_t* x = g.x16 + m * K;
  const int8_t* w = g.w + n * K;
  __m256i s[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) s[i][j] = _mm256_setzero_si256();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m256i wv[NR];
    for (int j = 0; j < NR; ++j)
      wv[j] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + j * K + k)));
    for (int i = 0; i < MR; ++i) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i * K + k));
      for (int j = 0; j < NR; ++j) s[i][j] = _mm256_add_epi32(s[i][j], _mm256_madd_epi16(xv, wv[j]));
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      int32_t sum = HorizontalSum(s[i][j]);
      for (int64_t t = k; t < K; ++t) sum += int32_t(x[i * K + t]) * int32_t(w[j * K + t]);
      acc[i * acc_stride + j] = sum;
    }
}

// One activation row against one weight row in bytes: vpmaddubsw of |w| (at most 128, unsigned) by sign(w) * x'
// (x' of ByteRow: at least -127, so its negation is a byte too) gives pairs of at most 2 * 128 * 127 < 2^15, so
// the 16-bit sums never saturate, and vpmaddwd by ones widens them to int32: exact, and 32 products per step
// against the int16 kernel's 16 (no widening of the weights).
inline int32_t RowAvx2Bytes(const int8_t* x, const int8_t* w, int64_t K, const int32_t* raised, int count) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
  int64_t k = 0;
  auto step = [&](__m256i& s, int64_t at) {
    const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + at));
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + at));
    s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(wv), _mm256_sign_epi8(xv, wv)),
                                              ones));
  };
  for (; k + 64 <= K; k += 64) {  // two sums: the adds of one chain would wait on each other
    step(s0, k);
    step(s1, k + 32);
  }
  if (k + 32 <= K) {
    step(s0, k);
    k += 32;
  }
  int32_t sum = HorizontalSum(_mm256_add_epi32(s0, s1));
  for (; k < K; ++k) sum += int32_t(x[k]) * int32_t(w[k]);
  for (int i = 0; i < count; ++i) sum -= int32_t(w[raised[i]]);
  return sum;
}
#else
constexpr bool kHaveAvx2 = false;
#endif

#if defined(__AVX512BW__) && defined(__AVX512VL__)
constexpr bool kHaveAvx512 = true;

// TileAvx2 at twice the width (vpmaddwd on 32 int16 lanes), for AVX-512 machines without VNNI. K tails are
// masked loads (zeros).
template <int MR, int NR>
void TileAvx512(const GemmInput& g, int64_t m, int64_t n, int32_t* acc, int64_t acc_stride) {
  const int64_t K = g.K;
  const int16_t* x = g.x16 + m * K;
  const int8_t* w = g.w + n * K;
  __m512i s[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) s[i][j] = _mm512_setzero_si512();
  for (int64_t k = 0; k < K; k += 32) {
    const __mmask32 mask = K - k >= 32 ? ~__mmask32(0) : (__mmask32(1) << (K - k)) - 1;
    __m512i wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(mask, w + j * K + k));
    for (int i = 0; i < MR; ++i) {
      const __m512i xv = _mm512_maskz_loadu_epi16(mask, x + i * K + k);
      for (int j = 0; j < NR; ++j) s[i][j] = _mm512_add_epi32(s[i][j], _mm512_madd_epi16(xv, wv[j]));
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i * acc_stride + j] = _mm512_reduce_add_epi32(s[i][j]);
}
#else
constexpr bool kHaveAvx512 = false;
#endif

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
constexpr bool kHaveVnni = true;

// vpdpbusd takes unsigned x signed bytes: the weights are flipped to w + 128 (xor 0x80) and the sum corrected
// by 128 * sum_k x. The lanes wrap modulo 2^32 (vpdpbusd does not saturate), and since the true dot product
// fits int32, the wrapped result is exact. K tails are masked loads (zeros).
template <int MR, int NR>
void TileVnni(const GemmInput& g, int64_t m, int64_t n, int32_t* acc, int64_t acc_stride) {
  const int64_t K = g.K;
  const int8_t* x = g.x + m * K;
  const int8_t* w = g.w + n * K;
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  __m512i s[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) s[i][j] = _mm512_setzero_si512();
  for (int64_t k = 0; k < K; k += 64) {
    const __mmask64 mask = K - k >= 64 ? ~__mmask64(0) : (__mmask64(1) << (K - k)) - 1;
    __m512i wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, w + j * K + k), flip);
    for (int i = 0; i < MR; ++i) {
      const __m512i xv = _mm512_maskz_loadu_epi8(mask, x + i * K + k);
      for (int j = 0; j < NR; ++j) s[i][j] = _mm512_dpbusd_epi32(s[i][j], wv[j], xv);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j)  // the lane sum wraps like the lanes; the true result fits int32
      acc[i * acc_stride + j] =
          int32_t(uint32_t(_mm512_reduce_add_epi32(s[i][j])) - 128u * uint32_t(g.x_sum[m + i]));
}
#else
constexpr bool kHaveVnni = false;
#endif

Gemm ChooseGemm(const std::string& where) {
  const char* pinned = std::getenv("EDGEQ_DIMATMUL_KERNEL");
  const std::string choice = pinned != nullptr ? pinned : "auto";
  if (choice == "auto")
    return kHaveVnni ? Gemm::kVnni : kHaveAvx512 ? Gemm::kAvx512 : kHaveAvx2 ? Gemm::kAvx2 : Gemm::kScalar;
  if (choice == "scalar") return Gemm::kScalar;
  if (choice == "avx2" && kHaveAvx2) return Gemm::kAvx2;
  if (choice == "avx512" && kHaveAvx512) return Gemm::kAvx512;
  if (choice == "vnni" && kHaveVnni) return Gemm::kVnni;
  if (choice == "avx2" || choice == "avx512" || choice == "vnni")
    checks::Fail(where, "EDGEQ_DIMATMUL_KERNEL=" + choice + ": this build has no " +
                            (choice == "vnni" ? "AVX-512 VNNI" : choice == "avx512" ? "AVX-512 BW" : "AVX2"));
  checks::Fail(where, "EDGEQ_DIMATMUL_KERNEL=" + choice + " is not one of auto, vnni, avx512, avx2, scalar");
}

// The kernel for int16 activations: vpdpbusd takes bytes, so VNNI builds use their AVX-512 BW kernel.
constexpr Gemm ForInt16(Gemm gemm) {
  return gemm != Gemm::kVnni ? gemm : kHaveAvx512 ? Gemm::kAvx512 : kHaveAvx2 ? Gemm::kAvx2 : Gemm::kScalar;
}

// acc rows m.. of the weight rows [n0, n0 + rows): tiles of kTileN weight rows, then single rows.
template <Gemm kGemm, int MR>
void GemmRows(const GemmInput& g, int64_t m, int64_t n0, int64_t rows, int32_t* acc, int64_t N) {
  auto tile = [&](auto nr, int64_t n) {
    constexpr int NR = decltype(nr)::value;
    int32_t* out = acc + m * N + n;
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
    if constexpr (kGemm == Gemm::kVnni) return TileVnni<MR, NR>(g, m, n, out, N);
#endif
#if defined(__AVX512BW__) && defined(__AVX512VL__)
    if constexpr (kGemm == Gemm::kAvx512) return TileAvx512<MR, NR>(g, m, n, out, N);
#endif
#if defined(__AVX2__)
    if constexpr (kGemm == Gemm::kAvx2) return TileAvx2<MR, NR>(g, m, n, out, N);
#endif
    TileScalar<MR, NR>(g, m, n, out, N);
  };
  // One activation row (decode) streams one weight row at a time, whatever the kernel: four interleaved rows halved
  // the bandwidth on an AVX2 EPYC VM (K = 576, 28 MB of weights, one thread: 4 GB/s vs 8) and cost the VNNI kernel a
  // third of a decode step on an AVX-512 VNNI EPYC (16.0 -> 11.0 ms); cache-resident weights favour the 4-row tile,
  // but decode streams every weight from memory once per token.
  constexpr bool kStreamOne = MR == 1 && kGemm != Gemm::kScalar;
  constexpr int NR = kStreamOne ? 1 : kTileN;
  int64_t n = n0;
#if defined(__AVX2__)
  if constexpr (kStreamOne && kGemm == Gemm::kAvx2) {
    // Software prefetch some 4 KB ahead of the row being read: the hardware prefetcher alone left the single-row
    // stream short of the memory bandwidth (decode at one thread on the AVX2 EPYC VM: the tile's perf samples fell
    // by about 40%, the step's CPU time by some 10%). On the AVX-512 EPYC the same prefetch slowed the VNNI stream
    // (scripts/vnni_gemv_stream.cc, K = 1,536: 15-18 GB/s with it, 19-21 without), so the wider kernels go without.
    // A prefetch never faults, so the rows past the end of W cost nothing; the address is formed as an integer.
    const int64_t ahead = (4096 + g.K - 1) / g.K * g.K;
    const uintptr_t base = reinterpret_cast<uintptr_t>(g.w);
    for (; n < n0 + rows; ++n) {
      const uintptr_t next = base + uintptr_t(n * g.K + ahead);
      for (int64_t c = 0; c < g.K; c += 64)
        _mm_prefetch(reinterpret_cast<const char*>(next + uintptr_t(c)), _MM_HINT_T0);
      if (g.bytes != nullptr)  // set for one activation row only: m = 0
        acc[m * N + n] = RowAvx2Bytes(g.bytes->x, g.w + n * g.K, g.K, g.bytes->raised, g.bytes->count);
      else
        tile(std::integral_constant<int, 1>{}, n);
    }
    return;
  }
#endif
  for (; n + NR <= n0 + rows; n += NR) tile(std::integral_constant<int, NR>{}, n);
  for (; n < n0 + rows; ++n) tile(std::integral_constant<int, 1>{}, n);
}

// acc [M, N] (row stride N) = x [M, K] . w[n0 .. n0 + rows)^T.
template <Gemm kGemm>
void GemmBlock(const GemmInput& g, int64_t M, int64_t n0, int64_t rows, int32_t* acc, int64_t N) {
  int64_t m = 0;
  // 32 zmm registers hold a 4 x 4 tile (16 sums, 4 weight vectors, 1 activation vector); AVX2's 16 ymm hold 2 x 4.
  constexpr int MR = kGemm == Gemm::kVnni || kGemm == Gemm::kAvx512 ? 2 * kTileM : kTileM;
  for (; m + MR <= M; m += MR) GemmRows<kGemm, MR>(g, m, n0, rows, acc, N);
  if constexpr (MR > kTileM)
    for (; m + kTileM <= M; m += kTileM) GemmRows<kGemm, kTileM>(g, m, n0, rows, acc, N);
  for (; m < M; ++m) GemmRows<kGemm, 1>(g, m, n0, rows, acc, N);
}

void GemmBlockAny(Gemm gemm, const GemmInput& g, int64_t M, int64_t n0, int64_t rows, int32_t* acc, int64_t N) {
  switch (gemm) {
    case Gemm::kVnni: return GemmBlock<Gemm::kVnni>(g, M, n0, rows, acc, N);
    case Gemm::kAvx512: return GemmBlock<Gemm::kAvx512>(g, M, n0, rows, acc, N);
    case Gemm::kAvx2: return GemmBlock<Gemm::kAvx2>(g, M, n0, rows, acc, N);
    default: return GemmBlock<Gemm::kScalar>(g, M, n0, rows, acc, N);
  }
}

// What the chosen kernel needs besides the codes: int16 copies (vpmaddwd) or row sums (vpdpbusd's correction).
// int16 codes (DIMatMul at abits > 8) are read where they are.
struct GemmOperands {
  const int8_t* x = nullptr;
  const int16_t* x16 = nullptr;  // int16 codes
  std::vector<int16_t> widened;  // int8 codes widened
  std::vector<int32_t> x_sum;
  GemmOperands(Gemm gemm, const int8_t* X, int64_t rows, int64_t K) : x(X) {
    if (gemm == Gemm::kAvx2 || gemm == Gemm::kAvx512) widened.assign(X, X + rows * K);
    if (gemm == Gemm::kVnni) {
      x_sum.resize(size_t(rows));
      for (int64_t m = 0; m < rows; ++m) x_sum[m] = std::accumulate(X + m * K, X + (m + 1) * K, int32_t(0));
    }
  }
  GemmOperands(Gemm, const int16_t* X, int64_t, int64_t) : x16(X) {}
  GemmInput For(int64_t row0, const int8_t* W, int64_t K) const {
    const int16_t* x16s = widened.empty() ? x16 : widened.data();
    return {x ? x + row0 * K : nullptr, x16s ? x16s + row0 * K : nullptr,
            x_sum.empty() ? nullptr : x_sum.data() + row0, W, K};
  }
};

// The int32 products of `groups` groups of M rows of X [groups * M, K] (int8, or int16 codes), each group against
// its own B (b_of(group): [N, K]), into [groups * M, N]; parallel over (group, block of kBlockN rows of B), so one
// row against many (decode) still uses every thread.
template <typename X, typename BOf>
std::vector<int32_t> GroupedGemm(Ort::KernelContext& ctx, Gemm gemm, const X* Xs, int64_t groups, int64_t M,
                                 int64_t N, int64_t K, BOf b_of) {
  if constexpr (std::is_same_v<X, int16_t>) gemm = ForInt16(gemm);
  const int64_t blocks = (N + kBlockN - 1) / kBlockN;
  std::vector<int32_t> acc(size_t(groups * M * N));
  const GemmOperands ops(gemm, Xs, groups * M, K);
  auto task = [&](int64_t t) {
    const int64_t group = t / blocks, n0 = (t % blocks) * kBlockN;
    GemmBlockAny(gemm, ops.For(group * M, b_of(group), K), M, n0, std::min(kBlockN, N - n0),
                 acc.data() + group * M * N, N);
  };
  ParallelFor(ctx, groups * blocks, task);
  return acc;
}

}  // namespace
}  // namespace cpu
}  // namespace edgeq
