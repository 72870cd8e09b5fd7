// The integer-only I-LLM ops on the CPU execution provider. Every op is a loop over rows (ORT's intra-op pool)
// around the integer primitives of integer_math.h; DIMatMul first takes its int32 dot products with the blocked
// int8 GEMM of int8_gemm.h (shared with QuantLinear), as do DIBatchMatMul's Q.K^T and lm_head. Every kernel is
// exact: the true sums are bounded by the op's K * 2^14 < 2^31.
#include <algorithm>
#include <cstring>
#include <cstdlib>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "../integer_ops.h"
#include "cpu_ops.h"
#include "int8_gemm.h"

namespace edgeq {
namespace cpu {
namespace {

using namespace integer;

// A per-thread int64 row buffer.
int64_t* RowBuffer(int64_t n) {
  thread_local std::vector<int64_t> buffer;
  if (int64_t(buffer.size()) < n) buffer.resize(size_t(n));
  return buffer.data();
}

// Per-thread buffers of the few-row (decode) paths, kept between calls: a decode step runs some 200 DIMatMuls
// whose per-call vectors cost more in malloc/free than their requantization. Each Slot is a distinct buffer
// (used on the calling thread, never by the pool's tasks for themselves, so RowBuffer stays free for those).
enum class Slot { kValues, kRanges, kPlans, kShifts, kX16, kBytes, kParts };
template <typename T, Slot kSlot>
T* CallerBuffer(int64_t n) {
  thread_local std::vector<T> buffer;
  if (int64_t(buffer.size()) < n) buffer.resize(size_t(n));
  return buffer.data();
}

void StoreScale(const IntOutput& out, int64_t r, const Scale& s) {
  out.m[r] = int32_t(s.m);
  out.e[r] = int8_t(s.e);
}

// Requantizes v (one row) into row r of the output (Code: int8, or DIMatMul's, DINorm's and DIAdd's int16 codes);
// asymmetric codes with the row's zero point when the output has zero points (act_sym=0, AsymBits(qmax) bits).
template <typename Code = int8_t>
void StoreRow(const IntOutput& out, int64_t r, int64_t* v, int64_t n, int64_t mult, int64_t E, int64_t qmax,
              int64_t clip_q15 = kClipOne) {
  if (out.z != nullptr) {
    StoreScale(out, r, DynQuantAsymRow(v, n, mult, E, AsymBits(qmax), static_cast<Code*>(out.q) + r * n, out.z + r));
    return;
  }
  StoreScale(out, r, DynQuantRow(v, n, mult, E, qmax, static_cast<Code*>(out.q) + r * n, clip_q15));
}

// Requantization of rows of values value(r, c) with scale(r) = (multiplier, exponent): many rows, a row per task
// (DynQuantRow / WideQuantRow whole); fewer than kFewRows (decode: one token against 49,152 lm_head rows), as the
// CUDA ops do it: values and each chunk's min/max in parallel over (row, chunk), each row's plan from its chunks
// (integer_math.h's pieces of the same functions, so the bits are the same), then the codes in parallel.
constexpr int64_t kChunk = 4096, kFewRows = 8;  // rows of a decode step's linears stay whole
// Values that cost an int64 division each (DISwiGLU's sigmoid): a decode row of 1,536 split over the threads.
constexpr int64_t kDividingChunk = 256;
// An Exp2Neg (DIClippedSoftmax) costs some eight simple int64 operations: ParallelFor's work per key.
constexpr int64_t kExpWork = 8;

struct Chunks {
  int64_t rows, n, per, count;
  Chunks(int64_t rows, int64_t n, int64_t chunk = kChunk) : rows(rows), n(n) {
    const int64_t per_row = (n + chunk - 1) / chunk;
    per = (n + per_row - 1) / per_row;
    count = per_row;
  }
};

using Range = std::pair<int64_t, int64_t>;  // a row's (min, max) value

// Values into v [rows, n] and each (row, chunk)'s min and max; returns each row's (min, max).
template <typename Value>
const Range* RowValues(Ort::KernelContext& ctx, const Chunks& ch, const Value& value, int64_t* v) {
  Range* part = CallerBuffer<Range, Slot::kParts>(ch.rows * ch.count);
  auto fill = [&](int64_t t) {
    const int64_t r = t / ch.count, c0 = (t % ch.count) * ch.per, c1 = std::min(ch.n, c0 + ch.per);
    int64_t lo = INT64_MAX, hi = INT64_MIN, *row = v + r * ch.n;
    for (int64_t c = c0; c < c1; ++c) {
      row[c] = value(r, c);
      lo = std::min(lo, row[c]);
      hi = std::max(hi, row[c]);
    }
    part[t] = {lo, hi};
  };
  ParallelFor(ctx, ch.rows * ch.count, fill);
  Range* range = CallerBuffer<Range, Slot::kRanges>(ch.rows);
  std::fill(range, range + ch.rows, Range{INT64_MAX, INT64_MIN});
  for (int64_t t = 0; t < ch.rows * ch.count; ++t) {
    auto& [lo, hi] = range[t / ch.count];
    lo = std::min(lo, part[t].first);
    hi = std::max(hi, part[t].second);
  }
  return range;
}

// Many rows: finish(r, v, scale(r)) for each row r with its values value(r, 0..n-1) in a per-thread buffer v.
template <typename Value, typename RowScale, typename Finish>
void WholeRows(Ort::KernelContext& ctx, int64_t rows, int64_t n, const Value& value, const RowScale& scale,
               const Finish& finish) {
  auto row = [&](int64_t r) {
    int64_t* v = RowBuffer(n);
    for (int64_t c = 0; c < n; ++c) v[c] = value(r, c);
    finish(r, v, scale(r));
  };
  ParallelFor(ctx, rows, row, n);
}

// write(r, c, value at (r, c)) over every chunk in parallel.
template <typename Write>
void EachChunk(Ort::KernelContext& ctx, const Chunks& ch, const int64_t* v, const Write& write) {
  auto task = [&](int64_t t) {
    const int64_t r = t / ch.count, c0 = (t % ch.count) * ch.per, c1 = std::min(ch.n, c0 + ch.per);
    for (int64_t c = c0; c < c1; ++c) write(r, c, v[r * ch.n + c]);
  };
  ParallelFor(ctx, ch.rows * ch.count, task);
}

// The asymmetric codes of few rows from their values v and each row's (min, max): DynQuantAsymRow's pieces, so
// the bits are the whole-row function's (and the CUDA ops').
template <typename Code, typename RowScale>
void AsymChunks(Ort::KernelContext& ctx, const IntOutput& out, const Chunks& ch, const int64_t* v, const Range* range,
                int64_t qmax, const RowScale& scale) {
  AsymPlan* plans = CallerBuffer<AsymPlan, Slot::kPlans>(ch.rows);
  int64_t* shifts = CallerBuffer<int64_t, Slot::kShifts>(ch.rows);
  for (int64_t r = 0; r < ch.rows; ++r) {
    const int64_t lo = std::min<int64_t>(range[r].first, 0), hi = std::max<int64_t>(range[r].second, 0);
    const Dyadic s = scale(r);
    const int64_t sh = shifts[r] = AsymShift(lo, hi);
    plans[r] = PlanDynQuantAsym(RShr(lo, sh), RShr(hi, sh), sh, s.m, s.e, AsymBits(qmax));
    StoreScale(out, r, plans[r].scale);
    out.z[r] = int32_t(AsymZero(plans[r]));
  }
  Code* q = static_cast<Code*>(out.q);
  EachChunk(ctx, ch, v, [&](int64_t r, int64_t c, int64_t x) {
    q[r * ch.n + c] = Code(DynQuantAsymCode(RShr(x, shifts[r]), plans[r]));
  });
}

// The codes of few rows from their values v [rows, n] and each row's (min, max): DynQuantRow's (DynQuantAsymRow's)
// pieces, so the bits are the whole-row function's (and the CUDA ops').
template <typename Code, typename RowScale>
void FewRowCodes(Ort::KernelContext& ctx, const IntOutput& out, const Chunks& ch, const int64_t* v,
                 const Range* range, int64_t qmax, const RowScale& scale, int64_t clip_q15) {
  if (out.z != nullptr) return AsymChunks<Code>(ctx, out, ch, v, range, qmax, scale);
  QuantPlan* plans = CallerBuffer<QuantPlan, Slot::kPlans>(ch.rows);
  int64_t* shifts = CallerBuffer<int64_t, Slot::kShifts>(ch.rows);
  for (int64_t r = 0; r < ch.rows; ++r) {
    const auto [lo, hi] = range[r];
    const int64_t A = std::max(Abs(lo), Abs(hi));
    QuantPlan& plan = plans[r];
    shifts[r] = 0;
    if (A == 0) {
      plan = QuantPlan{};
      plan.scale = Scale{kZeroM, kZeroE, true};
    } else {
      const Dyadic s = scale(r);
      shifts[r] = DynQuantShift(A);
      plan = PlanDynQuant(std::max(RShr(hi, shifts[r]), -RShr(lo, shifts[r])), shifts[r], s.m, s.e, qmax, clip_q15);
    }
    StoreScale(out, r, plan.scale);
  }
  Code* q = static_cast<Code*>(out.q);
  EachChunk(ctx, ch, v, [&](int64_t r, int64_t c, int64_t x) {
    q[r * ch.n + c] = Code(DynQuantCode(RShr(x, shifts[r]), plans[r]));
  });
}

template <typename Code, typename Value, typename RowScale>
void QuantizeRows(Ort::KernelContext& ctx, const IntOutput& out, int64_t rows, int64_t n, int64_t qmax,
                  const Value& value, const RowScale& scale, int64_t clip_q15 = kClipOne, int64_t chunk = kChunk) {
  // DynQuantRow (DynQuantAsymRow for asymmetric codes) whole, a row per task
  if (rows >= kFewRows)
    return WholeRows(ctx, rows, n, value, scale, [&](int64_t r, int64_t* v, Dyadic s) {
      StoreRow<Code>(out, r, v, n, s.m, s.e, qmax, clip_q15);
    });
  const Chunks ch(rows, n, chunk);
  int64_t* v = CallerBuffer<int64_t, Slot::kValues>(rows * n);
  const Range* range = RowValues(ctx, ch, value, v);
  FewRowCodes<Code>(ctx, out, ch, v, range, qmax, scale, clip_q15);
}

template <typename Value, typename RowScale>
void WideRows(Ort::KernelContext& ctx, const IntOutput& out, int64_t rows, int64_t n, const Value& value,
              const RowScale& scale) {
  if (rows >= kFewRows)  // WideQuantRow whole, a row per task
    return WholeRows(ctx, rows, n, value, scale, [&](int64_t r, int64_t* v, Dyadic d) {
      StoreScale(out, r, WideQuantRow(v, n, d.m, d.e, static_cast<int32_t*>(out.q) + r * n));
    });
  const Chunks ch(rows, n);
  int64_t* v = CallerBuffer<int64_t, Slot::kValues>(rows * n);
  const Range* range = RowValues(ctx, ch, value, v);
  Scale* scales = CallerBuffer<Scale, Slot::kPlans>(rows);
  int64_t* shifts = CallerBuffer<int64_t, Slot::kShifts>(rows);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t A = std::max(Abs(range[r].first), Abs(range[r].second));
    Scale& s = scales[r];
    shifts[r] = 0;
    if (A == 0) {
      s = Scale{kZeroM, kZeroE, true};
    } else {
      const Dyadic d = scale(r);
      shifts[r] = WideQuantShift(A);
      s = WideQuantScale(shifts[r], d.m, d.e);
    }
    StoreScale(out, r, s);
  }
  int32_t* y = static_cast<int32_t*>(out.q);
  EachChunk(ctx, ch, v, [&](int64_t r, int64_t c, int64_t x) {
    y[r * n + c] = scales[r].zero ? 0 : int32_t(RShr(x, shifts[r]));
  });
}

// ---------------------------------------------------------------------------------------------------------
// DIMatMul

// ShiftBy(v, s) without its branch on the sign of s, which per-channel exponents make unpredictable.
inline int64_t ShiftByChannel(int64_t v, int64_t s) {
  const int64_t left = s > 0 ? s : 0, right = s < 0 ? std::min<int64_t>(-s, 62) : 0;
  const int64_t shifted = (v * (int64_t(1) << left) + ((int64_t(1) << right) >> 1)) >> right;  // RShr(v, right)
  return s <= -63 ? 0 : shifted;
}

#if defined(__AVX2__)
// The values ShiftByChannel(ZeroPointDot(dots[n - n0], ...) * ch_m[n], shift - ch_e[n]) of channels [n0, n1), four
// at a time, into row[n], with their min and max into lo and hi; returns the first channel left to the scalar loop.
// Every product is one of vpmuldq's exact signed 32 x 32 -> 64 ones: wz (int8) by the row factor and xz by w_sum
// (each below 2^31), and the zero-point dot itself (below 2^31 by DIMatMulMaxK) by its mantissa. AVX2 has no
// arithmetic 64-bit shift: x >> r is ((x ^ 2^63) >>> r) - (2^63 >>> r), exact for r < 64.
inline int64_t ChannelValuesAvx2(const int32_t* dots, int64_t n0, int64_t n1, const int8_t* w_zero, int64_t row_factor,
                                 int64_t xz, const int32_t* w_sum, const int32_t* ch_m, const int8_t* ch_e,
                                 int64_t shift, int64_t* row, int64_t& lo, int64_t& hi) {
  const __m256i rf = _mm256_set1_epi64x(row_factor), xzv = _mm256_set1_epi64x(xz), sh = _mm256_set1_epi64x(shift);
  const __m256i zero = _mm256_setzero_si256(), one = _mm256_set1_epi64x(1);
  const __m256i top = _mm256_set1_epi64x(INT64_MIN), flush = _mm256_set1_epi64x(-62);  // s below it: 0
  __m256i lo4 = _mm256_set1_epi64x(lo), hi4 = _mm256_set1_epi64x(hi);
  auto bytes4 = [](const int8_t* b) {
    int32_t four;
    std::memcpy(&four, b, sizeof(four));
    return _mm256_cvtepi8_epi64(_mm_cvtsi32_si128(four));
  };
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    __m256i sum = _mm256_cvtepi32_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(dots + (n - n0))));
    if (w_zero != nullptr) sum = _mm256_sub_epi64(sum, _mm256_mul_epi32(bytes4(w_zero + n), rf));
    if (w_sum != nullptr)
      sum = _mm256_sub_epi64(
          sum, _mm256_mul_epi32(_mm256_cvtepi32_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w_sum + n))),
                                xzv));
    const __m256i m = _mm256_cvtepi32_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ch_m + n)));
    const __m256i prod = _mm256_mul_epi32(sum, m);
    const __m256i s = _mm256_sub_epi64(sh, bytes4(ch_e + n));
    const __m256i left = _mm256_blendv_epi8(zero, s, _mm256_cmpgt_epi64(s, zero));
    const __m256i neg = _mm256_sub_epi64(zero, s);
    // Unlike the scalar shifts, vpsllvq/vpsrlvq are defined for counts of 64 and more (0), so right needs no cap at
    // 62: every lane it would change is flushed below.
    const __m256i right = _mm256_blendv_epi8(zero, neg, _mm256_cmpgt_epi64(neg, zero));
    const __m256i half = _mm256_srli_epi64(_mm256_sllv_epi64(one, right), 1);
    const __m256i x = _mm256_add_epi64(_mm256_sllv_epi64(prod, left), half);
    __m256i value = _mm256_sub_epi64(_mm256_srlv_epi64(_mm256_xor_si256(x, top), right), _mm256_srlv_epi64(top, right));
    value = _mm256_andnot_si256(_mm256_cmpgt_epi64(flush, s), value);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(row + n), value);
    lo4 = _mm256_blendv_epi8(lo4, value, _mm256_cmpgt_epi64(lo4, value));
    hi4 = _mm256_blendv_epi8(hi4, value, _mm256_cmpgt_epi64(value, hi4));
  }
  int64_t l[4], h[4];
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(l), lo4);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(h), hi4);
  for (int j = 0; j < 4; ++j) {
    lo = std::min(lo, l[j]);
    hi = std::max(hi, h[j]);
  }
  return n;
}
#endif

constexpr int64_t kTaskRows = 64;  // at most, weight rows of a few-row task

// x.W for asymmetric grids: sum_k (x - xz)(W - wz) = x.W - wz * (sum(x) - K * xz) - xz * sum(W), exact in int64
// (the result is below 2^31 by DIMatMulMaxK). row_factor = sum(x) - K * xz of the activation row; wz,
// xz (and with it w_sum's term) are 0 on a symmetric side.
inline int64_t ZeroPointDot(int64_t dot, int64_t wz, int64_t row_factor, int64_t xz, int64_t w_sum) {
  return dot - wz * row_factor - xz * w_sum;
}

// Y int8 (obits <= 8) or int16 (Code): the same requantization of P (< 2^62), whose reciprocal stays below 2^31
// for any qmax < 2^15 (DynQuantRow).
//
// Few rows (decode): one pass over the pool, each task taking its weight rows' dot products into a stack tile and
// turning them straight into the values and their min/max, instead of an int32 [M, N] product, a second pass for
// the values and the per-call vectors between them; then the codes as QuantizeRows' few-row path has them. With
// split, both parts' tasks share the one pass (each task within one part: its own Ea and ranges), then each part's
// codes.
template <typename X, typename Code>
void DIMatMulFew(Ort::KernelContext& ctx, const DiAttrs& a, Gemm gemm, const DiProblem& p) {
  const int64_t M = p.x.rows, K = a.K, N = p.N;
  const int parts = a.split != 0 ? 2 : 1;
  const int64_t n_first[2] = {0, a.split}, n_count[2] = {a.split != 0 ? a.split : N, N - a.split};
  const X* Xs = static_cast<const X*>(p.x.q);
  int64_t x_sum[kFewRows] = {};
  int32_t x_sum32[kFewRows] = {};
  for (int64_t r = 0; r < M; ++r) {
    x_sum[r] = std::accumulate(Xs + r * K, Xs + (r + 1) * K, int64_t(0));
    x_sum32[r] = int32_t(x_sum[r]);  // vpdpbusd's correction, int8 codes only: |sum| <= 128 K < 2^31 (kMaxK)
  }
  GemmInput g{nullptr, nullptr, x_sum32, p.W, K};
  ByteRow bytes;
  if constexpr (std::is_same_v<X, int16_t>) {
    gemm = ForInt16(gemm);
    g.x16 = Xs;
  } else {
    g.x = Xs;
    // One token (decode) on AVX2: the byte kernel, which needs no int16 copy.
    if (gemm == Gemm::kAvx2 && M == 1 && bytes.Prepare(Xs, K, CallerBuffer<int8_t, Slot::kBytes>(K))) {
      g.bytes = &bytes;
    } else if (gemm == Gemm::kAvx2 || gemm == Gemm::kAvx512) {
      int16_t* x16 = CallerBuffer<int16_t, Slot::kX16>(M * K);
      std::copy(Xs, Xs + M * K, x16);
      g.x16 = x16;
    }
  }
  // Per part a multiple of 4 tasks of equal rows (a multiple of kTileN), so that 2 or 4 threads get equal shares:
  // blocks of kBlockN rows left N = 192 (k_proj, v_proj) as 3 tasks for 2 threads.
  int64_t per[2] = {}, first_task[3] = {}, Ea[2] = {};
  for (int i = 0; i < parts; ++i) {
    const int64_t tasks = ((n_count[i] + kTaskRows - 1) / kTaskRows + 3) / 4 * 4;
    per[i] = ((n_count[i] + tasks - 1) / tasks + kTileN - 1) / kTileN * kTileN;
    first_task[i + 1] = first_task[i] + tasks;
    Ea[i] = AlignExponents(p.ch_e + n_first[i], n_count[i]);
  }
  const int64_t tasks = first_task[parts];
  // Part i's values: a block [M, n_count[i]] at M * n_first[i], the layout FewRowCodes reads.
  int64_t* v = CallerBuffer<int64_t, Slot::kValues>(M * N);
  Range* part = CallerBuffer<Range, Slot::kParts>(tasks * M);
  // Locals, not p's fields: the stores into v could alias those (int64_t) for all the compiler knows.
  const int8_t *w_zero = p.w_zero, *ch_e = p.ch_e;
  const int32_t *x_zero = p.x_zero, *w_sum = p.w_sum, *ch_m = p.ch_m;
  const int8_t* W = p.W;
  auto task = [&](int64_t t) {
    const int i = t >= first_task[1] ? 1 : 0;
    const int64_t n_part = n_first[i], local = std::min(n_count[i], (t - first_task[i]) * per[i]);
    const int64_t n0 = n_part + local, rows = std::min(per[i], n_count[i] - local), shift = Ea[i];
    int32_t acc[kFewRows * kTaskRows];
    GemmInput gt = g;
    gt.w = W + n0 * K;
    GemmBlockAny(gemm, gt, M, 0, rows, acc, kTaskRows);
    for (int64_t r = 0; r < M; ++r) {
      const int64_t xz = x_zero != nullptr ? x_zero[r] : 0, row_factor = x_sum[r] - K * xz;
      int64_t lo = INT64_MAX, hi = INT64_MIN, *row = v + M * n_part + r * n_count[i] - n_part;
      const int32_t* dots = acc + r * kTaskRows;  // channel n at n - n0
      int64_t n = n0;
#if defined(__AVX2__)
      n = ChannelValuesAvx2(dots, n0, n0 + rows, w_zero, row_factor, xz, x_zero != nullptr ? w_sum : nullptr, ch_m,
                            ch_e, shift, row, lo, hi);
#endif
      for (; n < n0 + rows; ++n) {
        const int64_t sum = ZeroPointDot(dots[n - n0], w_zero != nullptr ? w_zero[n] : 0, row_factor, xz,
                                         x_zero != nullptr ? w_sum[n] : 0);
        row[n] = ShiftByChannel(sum * ch_m[n], shift - ch_e[n]);
        lo = std::min(lo, row[n]);
        hi = std::max(hi, row[n]);
      }
      part[r * tasks + t] = {lo, hi};
    }
  };
  ParallelFor(ctx, tasks, task, M * std::max(per[0], per[1]) * K / 32);  // tiny products run inline
  Range* range = CallerBuffer<Range, Slot::kRanges>(M);
  for (int i = 0; i < parts; ++i) {
    for (int64_t r = 0; r < M; ++r) {
      range[r] = {INT64_MAX, INT64_MIN};
      for (int64_t t = first_task[i]; t < first_task[i + 1]; ++t) {
        range[r].first = std::min(range[r].first, part[r * tasks + t].first);
        range[r].second = std::max(range[r].second, part[r * tasks + t].second);
      }
    }
    FewRowCodes<Code>(ctx, i == 0 ? p.out : p.out2, Chunks(M, n_count[i]), v + M * n_first[i], range, a.qmax,
                      [&](int64_t r) { return Dyadic{p.x.m[r], p.x.e[r] + Ea[i]}; }, kClipOne);
  }
}

// Many rows: the product of one part (all of W, or one side of a split: MatMulPart) and its requantization.
template <typename X, typename Code>
void DIMatMulRows(Ort::KernelContext& ctx, const DiAttrs& a, Gemm gemm, const DiProblem& p) {
  const int64_t M = p.x.rows, K = a.K, N = p.N;
  const X* Xs = static_cast<const X*>(p.x.q);
  const std::vector<int32_t> acc = GroupedGemm(ctx, gemm, Xs, 1, M, N, K, [&](int64_t) { return p.W; });
  const int64_t Ea = AlignExponents(p.ch_e, N);
  std::vector<int64_t> row_factor(size_t(M), 0);  // ZeroPointDot's, needed for a weight grid with zero points
  for (int64_t r = 0; r < M && p.w_zero != nullptr; ++r)
    row_factor[r] = std::accumulate(Xs + r * K, Xs + (r + 1) * K, int64_t(0)) - K * (p.x_zero ? p.x_zero[r] : 0);
  auto dot = [&](int64_t r, int64_t n) {
    return ZeroPointDot(acc[r * N + n], p.w_zero != nullptr ? p.w_zero[n] : 0, row_factor[r],
                        p.x_zero != nullptr ? p.x_zero[r] : 0, p.x_zero != nullptr ? p.w_sum[n] : 0);
  };
  QuantizeRows<Code>(
      ctx, p.out, M, N, a.qmax,
      [&](int64_t r, int64_t n) { return ShiftBy(dot(r, n) * p.ch_m[n], Ea - p.ch_e[n]); },
      [&](int64_t r) { return Dyadic{p.x.m[r], p.x.e[r] + Ea}; });
}

// X: int8 codes, or int16 codes within abits > 8 (checked by PrepareIntegerOp, so the int32 sums stay exact).
template <typename X, typename Code>
void DIMatMul(Ort::KernelContext& ctx, const DiAttrs& a, Gemm gemm, const DiProblem& p) {
  if (p.x.rows < kFewRows) return DIMatMulFew<X, Code>(ctx, a, gemm, p);
  if (a.split == 0) return DIMatMulRows<X, Code>(ctx, a, gemm, p);
  for (int part = 0; part < 2; ++part) DIMatMulRows<X, Code>(ctx, a, gemm, MatMulPart(p, a.split, part));
}

// ---------------------------------------------------------------------------------------------------------
// Element-wise ops, one row per task

void DIExp(Ort::KernelContext& ctx, const DiAttrs& a, const DiProblem& p) {
  const int64_t C = p.x.C;
  auto row = [&](int64_t r) {
    const int8_t* q = static_cast<const int8_t*>(p.x.q) + r * C;
    int8_t* y = static_cast<int8_t*>(p.out.q) + r * C;
    const int64_t m = p.x.m[r], e = p.x.e[r];
    const int64_t top = *std::max_element(q, q + C);
    const Scale s = ExpScale(top, m, e, a.qmax);
    for (int64_t c = 0; c < C; ++c)
      y[c] = s.zero ? 0 : int8_t(RShr(Exp2Neg(ExpArg((top - q[c]) * m, e)) * a.qmax, 30));
    p.out.m[r] = int32_t(s.m);
    p.out.e[r] = int8_t(s.e);
  };
  ParallelFor(ctx, p.x.rows, row, C);
}

// Row r's mask row (nullptr without a mask) and its step along the keys, for scores of shape ``shape``.
const bool* MaskRow(const DiProblem& p, const std::vector<int64_t>& shape, int64_t r, int64_t& step) {
  step = 0;
  if (p.mask == nullptr) return nullptr;
  const int64_t rank = int64_t(shape.size());
  const bool* mask = p.mask;
  for (int64_t d = rank - 2, rest = r; d >= 0; --d) {
    mask += (rest % shape[d]) * p.mask_strides[d];
    rest /= shape[d];
  }
  step = p.mask_strides[rank - 1];
  return mask;
}

// X: int8 codes or int32 scores; P: uint8 or uint16 probability codes (obits).
template <typename T, typename P>
void DIClippedSoftmax(Ort::KernelContext& ctx, const DiAttrs& a, const DiProblem& p) {
  const int64_t C = p.x.C, rank = int64_t(p.x.shape.size());
  const int64_t Sq = rank >= 2 ? p.x.shape[rank - 2] : 1;
  const int64_t tc = a.clip_q8 ? RShr(a.clip_q8 * kLog2eQ30, 30 + 8 - kExpFrac) : kExpCap;
  auto row = [&](int64_t r) {
    const T* q = static_cast<const T*>(p.x.q) + r * C;
    P* y = static_cast<P*>(p.out.q) + r * C;
    int64_t mask_step;
    const bool* mask = MaskRow(p, p.x.shape, r, mask_step);
    const int64_t last_visible = a.is_causal ? r % Sq + C - Sq : C - 1;
    auto visible = [&](int64_t j) { return j <= last_visible && (mask == nullptr || mask[j * mask_step]); };
    int64_t top = 0;
    bool any = false;
    for (int64_t j = 0; j < C; ++j) {
      if (!visible(j)) continue;
      top = any ? Max(top, q[j]) : q[j];
      any = true;
    }
    if (!any) {
      std::fill(y, y + C, P(0));
      p.out.m[r] = int32_t(kZeroM);
      p.out.e[r] = int8_t(kZeroE);
      return;
    }
    const int64_t m = p.x.m[r], e = p.x.e[r];
    int64_t* E = RowBuffer(C);
    int64_t amax = 0;
    for (int64_t j = 0; j < C; ++j) {
      E[j] = visible(j) ? (top - q[j]) * m : -1;  // -1 marks a hidden key
      amax = Max(amax, E[j]);
    }
    const int64_t pre = Max(0, BitLen(uint64_t(amax)) - 31);
    uint64_t S = 0;
    for (int64_t j = 0; j < C; ++j) {
      if (E[j] < 0) {
        E[j] = 0;
        continue;
      }
      const int64_t t = Min(ShiftCapped(RShr(E[j], pre) * kLog2eQ30, 30 + e - kExpFrac - pre, kExpCap), tc);
      E[j] = Exp2Neg(t);
      S += uint64_t(E[j]);
    }
    for (int64_t j = 0; j < C; ++j) y[j] = P(RShr(E[j] * a.qmax, 30));
    const Dyadic d = Ratio(uint64_t(kOneQ30), S * uint64_t(a.qmax));
    const Scale s = Finish(d.m, d.e);
    if (s.zero) std::fill(y, y + C, P(0));
    p.out.m[r] = int32_t(s.m);
    p.out.e[r] = int8_t(s.e);
  };
  ParallelFor(ctx, p.x.rows, row, C * kExpWork);  // decode's few rows of keys still split over the threads
}

// X of int8 or int16 codes: ss < 2^47 either way (C < 2^17), RmsScale brings it to 31 bits. Y: int8 or int16 codes.
template <typename X, typename Code>
void DINorm(Ort::KernelContext& ctx, const DiAttrs& a, const DiProblem& p) {
  const int64_t C = p.x.C;
  const int64_t Ea = AlignExponents(p.ch_e, C);
  auto row = [&](int64_t r) {
    const X* q = static_cast<const X*>(p.x.q) + r * C;
    const int64_t m = p.x.m[r], e = p.x.e[r];
    int64_t ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += int64_t(q[c]) * q[c];
    int64_t* v = RowBuffer(C);
    if (ss == 0) {  // zeros in, zeros out
      std::fill(v, v + C, int64_t(0));
      StoreRow<Code>(p.out, r, v, C, 1, 0, a.qmax);
      return;
    }
    const Dyadic rms = RmsScale(ss, C, m, e, a.eps_q60);
    const Dyadic factor = Ratio(uint64_t(m), uint64_t(rms.m));
    for (int64_t c = 0; c < C; ++c) v[c] = ShiftBy(int64_t(q[c]) * p.ch_m[c], Ea - p.ch_e[c]);
    StoreRow<Code>(p.out, r, v, C, factor.m, Ea + factor.e + e - rms.e, a.qmax, a.clip_q15);
  };
  ParallelFor(ctx, p.x.rows, row, C);
}

// gate and up of int8 or int16 codes (both the same): q_g * sigmoid * q_u < 2^60 with int16 codes.
template <typename T>
void DISwiGLU(Ort::KernelContext& ctx, const DiAttrs& a, const DiProblem& p) {
  const int64_t C = p.x.C;
  const T *g = static_cast<const T*>(p.x.q), *u = static_cast<const T*>(p.x2.q);
  auto value = [&](int64_t r, int64_t c) {
    return int64_t(g[r * C + c]) * SigmoidQ30(g[r * C + c], p.x.m[r], p.x.e[r]) * u[r * C + c];
  };
  auto scale = [&](int64_t r) { return Dyadic{int64_t(p.x.m[r]) * p.x2.m[r], p.x.e[r] + p.x2.e[r] + 30}; };
  if (a.hadamard == 0)
    return QuantizeRows<int8_t>(ctx, p.out, p.x.rows, C, a.qmax, value, scale, a.clip_q15, kDividingChunk);
  // The rotation mixes the whole block: each row whole, a row per task (a decode step's one row on one thread).
  auto row = [&](int64_t r) {
    int64_t* v = RowBuffer(C);
    int64_t A = 0;
    for (int64_t c = 0; c < C; ++c) {
      v[c] = value(r, c);
      A = Max(A, Abs(v[c]));
    }
    const int64_t sh = HadamardShift(A, a.hadamard);
    for (int64_t c = 0; c < C && sh > 0; ++c) v[c] = RShr(v[c], sh);
    HadamardBlocks(v, C, a.hadamard);
    const Dyadic s = scale(r);
    StoreRow(p.out, r, v, C, s.m, s.e - sh, a.qmax, a.clip_q15);
  };
  ParallelFor(ctx, p.x.rows, row, C);
}

// X of int8 or int16 codes (rotate=0 copies codes: int8 only); the rotated pairs stay below 2^30 either way.
template <typename T>
void DIRotary(Ort::KernelContext& ctx, const DiAttrs& a, const DiProblem& p) {
  const int64_t S = p.x.shape[1], H = p.x.shape[2], D = p.x.shape[3], half = D / 2, P = p.past_len;
  if (P > 0) {  // the cache first in each (batch, head): P rows of codes and scales
    const int8_t* past = static_cast<const int8_t*>(p.past.q);
    int8_t* codes = static_cast<int8_t*>(p.out.q);
    for (int64_t slab = 0; slab < p.x.shape[0] * H; ++slab) {
      std::copy(past + slab * P * D, past + (slab + 1) * P * D, codes + slab * (P + S) * D);
      std::copy(p.past.m + slab * P, p.past.m + (slab + 1) * P, p.out.m + slab * (P + S));
      std::copy(p.past.e + slab * P, p.past.e + (slab + 1) * P, p.out.e + slab * (P + S));
    }
  }
  auto row = [&](int64_t r) {  // r = (b * S + s) * H + h; heads_first writes row (b * H + h) * (P + S) + P + s
    const T* q = static_cast<const T*>(p.x.q) + r * D;
    const int64_t token = r / H, scale = p.per_head_scales ? r : token;
    if (!a.rotate) {  // the layout alone: codes as they are, the token's scale for each head
      const int64_t out = RotaryOutputRow(r, S, H, a.heads_first, P);
      std::transform(q, q + D, static_cast<int8_t*>(p.out.q) + out * D, [](T c) { return int8_t(c); });
      p.out.m[out] = p.x.m[scale];
      p.out.e[out] = p.x.e[scale];
      return;
    }
    const int16_t* cs = p.cos + p.positions[token] * half;
    const int16_t* sn = p.sin + p.positions[token] * half;
    int64_t* v = RowBuffer(D);
    for (int64_t i = 0; i < half; ++i) {
      const int64_t ia = a.interleaved ? 2 * i : i, ib = a.interleaved ? 2 * i + 1 : i + half;
      v[ia] = int64_t(q[ia]) * cs[i] - int64_t(q[ib]) * sn[i];
      v[ib] = int64_t(q[ib]) * cs[i] + int64_t(q[ia]) * sn[i];
    }
    const int64_t out = RotaryOutputRow(r, S, H, a.heads_first, P);
    StoreRow(p.out, out, v, D, p.x.m[scale], p.x.e[scale] + kRopeFrac, a.qmax);
  };
  ParallelFor(ctx, p.x.rows, row, D);
}

// A and B of int8 or int16 codes each, Y int8 (obits <= 8) or int16: |q m| < 2^30, shifted left by at most
// the window (31 with any int16 side, 39 for int8 only) stays below 2^61.
template <typename TA, typename TB, typename TY>
void DIAdd(Ort::KernelContext& ctx, const DiAttrs& a, const DiProblem& p) {
  const int64_t C = p.x.C;
  const int64_t window = std::is_same<TA, int8_t>::value && std::is_same<TB, int8_t>::value ? kAddWindow : kAddWindow16;
  auto row = [&](int64_t r) {
    const TA* qa = static_cast<const TA*>(p.x.q) + r * C;
    const TB* qb = static_cast<const TB*>(p.x2.q) + r * C;
    const int64_t ma = p.x.m[r], ea = p.x.e[r], mb = p.x2.m[r], eb = p.x2.e[r];
    const int64_t E = Min(Max(ea, eb), Min(ea, eb) + window);
    int64_t* v = RowBuffer(C);
    for (int64_t c = 0; c < C; ++c) v[c] = ShiftBy(qa[c] * ma, E - ea) + ShiftBy(qb[c] * mb, E - eb);
    StoreRow<TY>(p.out, r, v, C, 1, E, a.qmax);
  };
  ParallelFor(ctx, p.x.rows, row, C);
}

template <typename TA, typename TB>
void DIAddOut(Ort::KernelContext& ctx, const DiAttrs& a, const DiProblem& p) {
  if (a.obits > 8) return DIAdd<TA, TB, int16_t>(ctx, a, p);
  return DIAdd<TA, TB, int8_t>(ctx, a, p);
}

void DIAddAny(Ort::KernelContext& ctx, const DiAttrs& a, const DiProblem& p) {
  const bool a8 = p.x.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8, b8 = p.x2.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
  if (a8 && b8) return DIAddOut<int8_t, int8_t>(ctx, a, p);
  if (a8) return DIAddOut<int8_t, int16_t>(ctx, a, p);
  if (b8) return DIAddOut<int16_t, int8_t>(ctx, a, p);
  return DIAddOut<int16_t, int16_t>(ctx, a, p);
}

// ---------------------------------------------------------------------------------------------------------
// DIBatchMatMul and DIRequant (attention), one output row per task

// P.V's v[n] = sum_k u[k] * B[k, n], u[k] = x[k] * b_m[k] aligned to Ea (the sums < 2^62: ContextShift), over the
// k with x[k] != 0. With AVX-512 DQ, 64 columns at a time in eight registers of int64 lanes (vpmullq): the keys
// stream through once per 64 columns.
template <typename A>
void ContextSums(const A* x, int64_t K, int64_t N, const int8_t* B, const int32_t* bm, const int8_t* be, int64_t Ea,
                 int64_t* v) {
  int64_t n0 = 0;
#if defined(__AVX512DQ__)
  for (; n0 + 64 <= N; n0 += 64) {
    __m512i acc[8];
    for (__m512i& a : acc) a = _mm512_setzero_si512();
    for (int64_t k = 0; k < K; ++k) {
      if (x[k] == 0) continue;
      const __m512i u = _mm512_set1_epi64(ShiftBy(int64_t(x[k]) * bm[k], Ea - be[k]));
      const int8_t* b = B + k * N + n0;
      for (int j = 0; j < 8; ++j) {
        const __m512i bv = _mm512_cvtepi8_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 8 * j)));
        acc[j] = _mm512_add_epi64(acc[j], _mm512_mullo_epi64(u, bv));
      }
    }
    for (int j = 0; j < 8; ++j) _mm512_storeu_si512(v + n0 + 8 * j, acc[j]);
  }
#endif
#if defined(__AVX2__)
  // AVX2 has no 64-bit multiply: u = uh 2^31 + ul with ul in [0, 2^31) and |uh| < 2^31 (|u| < 2^62), each half
  // times b[n] exact in vpmuldq's signed 32 x 32 -> 64 products; v = 2^31 sum(uh b) + sum(ul b) is the true sum,
  // below 2^62, and each partial sum is far from 2^63. 16 columns at a time (eight accumulator registers).
  for (; n0 + 16 <= N; n0 += 16) {
    __m256i hi[4], lo[4];
    for (int j = 0; j < 4; ++j) hi[j] = lo[j] = _mm256_setzero_si256();
    for (int64_t k = 0; k < K; ++k) {
      if (x[k] == 0) continue;
      const int64_t u = ShiftBy(int64_t(x[k]) * bm[k], Ea - be[k]);
      const __m256i uh = _mm256_set1_epi64x(u >> 31), ul = _mm256_set1_epi64x(u & 0x7fffffff);
      const int8_t* b = B + k * N + n0;
      for (int j = 0; j < 4; ++j) {
        int32_t four;
        std::memcpy(&four, b + 4 * j, sizeof(four));
        const __m256i bv = _mm256_cvtepi8_epi64(_mm_cvtsi32_si128(four));
        hi[j] = _mm256_add_epi64(hi[j], _mm256_mul_epi32(uh, bv));
        lo[j] = _mm256_add_epi64(lo[j], _mm256_mul_epi32(ul, bv));
      }
    }
    for (int j = 0; j < 4; ++j)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(v + n0 + 4 * j),
                          _mm256_add_epi64(_mm256_slli_epi64(hi[j], 31), lo[j]));
  }
#endif
  std::fill(v + n0, v + N, int64_t(0));
  for (int64_t k = 0; k < K && n0 < N; ++k) {
    if (x[k] == 0) continue;
    const int64_t uk = ShiftBy(int64_t(x[k]) * bm[k], Ea - be[k]);
    const int8_t* b = B + k * N;
    for (int64_t n = n0; n < N; ++n) v[n] += uk * b[n];
  }
}

// Q.K^T and lm_head after the dot products: each row's visible keys and their common exponent, then the wide
// requantization over the thread pool (WideRows: decode's single lm_head row of 49,152 is split in chunks). A row
// with no visible key is all zeros, as every value is 0.
void ScoresFromDots(Ort::KernelContext& ctx, const DiAttrs& a, const DiProblem& p, const std::vector<int64_t>& shape,
                    const std::vector<int32_t>& dots) {
  const int64_t M = p.M, N = p.N, rows = p.x.rows;
  struct Row {
    const bool* mask;
    int64_t step, last_visible, Ea;
    const int32_t* bm;
    const int8_t* be;
    bool visible(int64_t n) const { return n <= last_visible && (mask == nullptr || mask[n * step]); }
  };
  std::vector<Row> info(static_cast<size_t>(rows));
  auto prepare = [&](int64_t r) {
    Row& row = info[size_t(r)];
    const int64_t batch = p.b_batch[size_t(r / M)];
    row.mask = MaskRow(p, shape, r, row.step);
    row.last_visible = a.is_causal ? r % M + N - M : N - 1;
    row.bm = p.x2.m + batch * N;
    row.be = p.x2.e + batch * N;
    bool any = false;
    for (int64_t n = 0; n < N && !any; ++n) any = row.visible(n);
    row.Ea = any ? AlignExponentsWhere(row.be, N, [&](int64_t n) { return row.visible(n); }) : 0;
  };
  ParallelFor(ctx, rows, prepare, N / 8);  // a scan of the mask and the exponents
  WideRows(
      ctx, p.out, rows, N,
      [&](int64_t r, int64_t n) {
        const Row& row = info[size_t(r)];
        return row.visible(n) ? ShiftBy(int64_t(dots[size_t(r * N + n)]) * row.bm[n], row.Ea - row.be[n]) : int64_t(0);
      },
      [&](int64_t r) { return Dyadic{p.x.m[r], p.x.e[r] + info[size_t(r)].Ea}; });
}

template <typename A>
void DIBatchMatMul(Ort::KernelContext& ctx, const DiAttrs& a, Gemm gemm, const DiProblem& p) {
  const int64_t M = p.M, K = p.K, N = p.N;
  const int64_t b_rows = a.trans_b ? N : K;  // rows of one batch of B, each with its own scale
  std::vector<int64_t> out_shape(p.x.shape);
  out_shape.back() = N;
  // Q.K^T and lm_head (trans_b, int8 A): the dot products first, as DIMatMul's blocked SIMD GEMM per group of M
  // rows sharing a batch of B (decode's lm_head: 1 x 49152 x 576 over every thread); masked positions are
  // computed too and ignored below.
  if constexpr (std::is_same_v<A, int8_t>)
    if (a.trans_b) {
      const std::vector<int32_t> dots =
          GroupedGemm(ctx, gemm, static_cast<const int8_t*>(p.x.q), p.x.rows / M, M, N, K, [&](int64_t group) {
            return static_cast<const int8_t*>(p.x2.q) + p.b_batch[size_t(group)] * N * K;
          });
      return ScoresFromDots(ctx, a, p, out_shape, dots);
    }
  auto row = [&](int64_t r) {
    const A* x = static_cast<const A*>(p.x.q) + r * K;
    const int64_t batch = p.b_batch[size_t(r / M)];
    const int8_t* B = static_cast<const int8_t*>(p.x2.q) + batch * b_rows * (a.trans_b ? K : N);
    const int32_t* bm = p.x2.m + batch * b_rows;
    const int8_t* be = p.x2.e + batch * b_rows;
    int32_t* y = static_cast<int32_t*>(p.out.q) + r * N;
    int64_t* v = RowBuffer(N);
    bool any = false;
    int64_t Ea = 0;
    if (a.trans_b) {
      int64_t step;
      const bool* mask = MaskRow(p, out_shape, r, step);
      const int64_t last_visible = a.is_causal ? r % M + N - M : N - 1;
      auto visible = [&](int64_t n) { return n <= last_visible && (mask == nullptr || mask[n * step]); };
      for (int64_t n = 0; n < N && !any; ++n) any = visible(n);
      if (any) {
        Ea = AlignExponentsWhere(be, N, visible);
        for (int64_t n = 0; n < N; ++n) {
          if (!visible(n)) {
            v[n] = 0;
            continue;
          }
          int32_t acc = 0;
          const int8_t* w = B + n * K;
          for (int64_t k = 0; k < K; ++k) acc += int32_t(x[k]) * int32_t(w[k]);
          v[n] = ShiftBy(int64_t(acc) * bm[n], Ea - be[n]);
        }
      }
    } else {
      auto nonzero = [&](int64_t k) { return x[k] != 0; };
      for (int64_t k = 0; k < K && !any; ++k) any = nonzero(k);
      if (any) {
        Ea = AlignExponentsWhere(be, K, nonzero);
        uint64_t abs_sum = 0;
        int64_t e_lo = kEMax;
        for (int64_t k = 0; k < K; ++k)
          if (x[k] != 0) {
            abs_sum += uint64_t(x[k] < 0 ? -int64_t(x[k]) : int64_t(x[k]));
            e_lo = Min(e_lo, int64_t(be[k]));
          }
        Ea -= ContextShift(abs_sum, Ea - e_lo);
        ContextSums(x, K, N, B, bm, be, Ea, v);
      }
    }
    Scale s{kZeroM, kZeroE, true};
    if (any) s = WideQuantRow(v, N, p.x.m[r], p.x.e[r] + Ea, y);
    else std::fill(y, y + N, int32_t(0));
    p.out.m[r] = int32_t(s.m);
    p.out.e[r] = int8_t(s.e);
  };
  ParallelFor(ctx, p.x.rows, row, K * N);
}

template <typename T>
void DIRequant(Ort::KernelContext& ctx, const DiAttrs& a, const DiProblem& p) {
  const int64_t D = p.x.C, G = p.merged_rows, S = p.merged_seq;
  auto row = [&](int64_t r) {  // output row r merges G input rows (MergedRowsOf)
    const auto [first, stride] = MergedRowsOf(r, G, S, a.heads_first != 0);
    const int32_t* m = p.x.m + first;
    const int8_t* e = p.x.e + first;
    const int64_t Ea = AlignExponents(e, G, stride);
    int64_t* v = RowBuffer(G * D);
    for (int64_t g = 0; g < G; ++g) {
      const T* q = static_cast<const T*>(p.x.q) + (first + g * stride) * D;
      for (int64_t d = 0; d < D; ++d) v[g * D + d] = ShiftBy(int64_t(q[d]) * m[g * stride], Ea - e[g * stride]);
    }
    StoreRow(p.out, r, v, G * D, 1, Ea, a.qmax, a.clip_q15);
  };
  ParallelFor(ctx, p.x.rows / G, row, G * D);
}

// ---------------------------------------------------------------------------------------------------------
// ORT glue: one kernel per DiOp (the op types: DiCustomOp, integer_ops.h)

template <DiOp kOp>
struct Kernel {
  explicit Kernel(const OrtKernelInfo* info)
      : attrs(DiAttrs::FromKernelInfo(info, kOp)),
        gemm(kOp == DiOp::kMatMul || kOp == DiOp::kBatchMatMul ? ChooseGemm(attrs.where) : Gemm::kScalar) {}

  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    return StatusFrom([&] {
      Ort::KernelContext ctx(raw);
      const DiProblem p = PrepareIntegerOp(ctx, attrs);
      switch (kOp) {
        case DiOp::kMatMul: {
          const bool x16 = p.x.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16;
          if (attrs.obits > 8)
            return x16 ? DIMatMul<int16_t, int16_t>(ctx, attrs, gemm, p) : DIMatMul<int8_t, int16_t>(ctx, attrs, gemm, p);
          return x16 ? DIMatMul<int16_t, int8_t>(ctx, attrs, gemm, p) : DIMatMul<int8_t, int8_t>(ctx, attrs, gemm, p);
        }
        case DiOp::kExp: return DIExp(ctx, attrs, p);
        case DiOp::kClippedSoftmax:
          if (attrs.obits > 8) {  // uint16 probabilities
            if (p.x.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8)
              return DIClippedSoftmax<int8_t, uint16_t>(ctx, attrs, p);
            return DIClippedSoftmax<int32_t, uint16_t>(ctx, attrs, p);
          }
          if (p.x.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8) return DIClippedSoftmax<int8_t, uint8_t>(ctx, attrs, p);
          return DIClippedSoftmax<int32_t, uint8_t>(ctx, attrs, p);
        case DiOp::kNorm: {
          const bool x8 = p.x.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
          if (attrs.obits > 8)
            return x8 ? DINorm<int8_t, int16_t>(ctx, attrs, p) : DINorm<int16_t, int16_t>(ctx, attrs, p);
          return x8 ? DINorm<int8_t, int8_t>(ctx, attrs, p) : DINorm<int16_t, int8_t>(ctx, attrs, p);
        }
        case DiOp::kSwiGLU:
          if (p.x.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8) return DISwiGLU<int8_t>(ctx, attrs, p);
          return DISwiGLU<int16_t>(ctx, attrs, p);
        case DiOp::kRotary:
          if (p.x.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8) return DIRotary<int8_t>(ctx, attrs, p);
          return DIRotary<int16_t>(ctx, attrs, p);
        case DiOp::kAdd: return DIAddAny(ctx, attrs, p);
        case DiOp::kBatchMatMul:
          if (p.x.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8) return DIBatchMatMul<int8_t>(ctx, attrs, gemm, p);
          if (p.x.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16) return DIBatchMatMul<uint16_t>(ctx, attrs, gemm, p);
          return DIBatchMatMul<uint8_t>(ctx, attrs, gemm, p);
        case DiOp::kRequant:
          if (p.x.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8) return DIRequant<int8_t>(ctx, attrs, p);
          return DIRequant<int32_t>(ctx, attrs, p);
      }
    });
  }

  DiAttrs attrs;
  Gemm gemm;
};

}  // namespace

void RegisterIntegerOps(Ort::CustomOpDomain& domain) { AddIntegerOps<Kernel>(domain, "CPUExecutionProvider"); }

}  // namespace cpu
}  // namespace edgeq
