// The integer primitives of the I-LLM ops (DIMatMul, DIExp, DIClippedSoftmax, DINorm, DISwiGLU, DIRotary,
// DIAdd), shared by the CPU kernels and the CUDA ones: plain C++ without ORT, every function usable on
// the device. Each one is the C++ twin of the function of the same name in custom_ops/reference_integer.py
// (the ground truth; its docstrings state the math and the bounds that keep int64 from overflowing). Rounding
// is round half up, floor(x + 1/2), everywhere. No floating point.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define EDGEQ_HD __host__ __device__
#else
#define EDGEQ_HD
#endif

namespace edgeq {
namespace integer {

constexpr int kScaleBits = 15;                     // mantissas lie in [1, 2^15); outputs in [2^14, 2^15)
constexpr int64_t kMMax = (int64_t(1) << kScaleBits) - 1;
constexpr int64_t kEMin = -128, kEMax = 127;        // the int8 exponent
constexpr int64_t kZeroM = int64_t(1) << (kScaleBits - 1), kZeroE = kEMax;  // scale of an all-zero row
constexpr int64_t kLog2eQ30 = 1549082005;           // round(log2(e) * 2^30)
constexpr int kExpFrac = 24;                        // base-2 exponents in Q24
constexpr int64_t kExpCap = int64_t(1) << 30;       // 64.0 in Q24: 2^-64 is 0 in Q30
constexpr int64_t kOneQ30 = int64_t(1) << 30;
constexpr int64_t kExp2C1 = -742586372, kExp2C2 = 248204643, kExp2C3 = -42537209;  // 2^-f, Q30
constexpr int kRopeFrac = 14;                       // rotary tables in Q14
constexpr int64_t kClipOne = int64_t(1) << 15;      // clip_q15 of no clipping (1.0 in Q15)
// DIAdd's exact alignment: |q m| < 2^22 for int8 codes (2^30 for int16), shifted left by at most the window,
// stays below 2^61, so the sum of both sides stays below 2^62.
constexpr int64_t kAlignWindow = 16, kAddWindow = 39, kAddWindow16 = 31;
constexpr int64_t kMaxK = (int64_t(1) << 17) - 1;   // DIMatMul: K * 128 * 128 < 2^31
constexpr int64_t kMaxKZero = (int64_t(1) << 16) - 1;  // DIMatMul with w_zero: K * 128 * 255 < 2^31
constexpr int64_t kMaxKXZero = (int64_t(1) << 15) - 1;  // ... with x_zero: K * 255 * 255 < 2^31

// DIMatMul's largest K: every sum_k (x - xz)(w - wz) below 2^31, so the int32 accumulator is exact and acc * w_m
// stays below 2^46. X's codes span 2^(b-1) per side (b = 8 for int8 codes whatever abits, else abits: int16 codes
// must lie in abits), a bit more with x_zero; W's 2^7, a bit more with either zero point. kMaxK, kMaxKZero and
// kMaxKXZero are its int8 values.
EDGEQ_HD constexpr int64_t DIMatMulMaxK(int64_t abits, bool w_zero, bool x_zero) {
  const int64_t x_bits = (abits > 8 ? abits : 8) - 1 + (x_zero ? 1 : 0), w_bits = 7 + (w_zero || x_zero ? 1 : 0);
  return (int64_t(1) << (31 - x_bits - w_bits)) - 1;
}
static_assert(DIMatMulMaxK(8, false, false) == kMaxK && DIMatMulMaxK(8, true, false) == kMaxKZero &&
              DIMatMulMaxK(8, false, true) == kMaxKXZero && DIMatMulMaxK(8, true, true) == kMaxKXZero);
constexpr int64_t kMaxBatchK = (int64_t(1) << 16) - 1;  // DIBatchMatMul: 255 * 128 * K < 2^31, P.V sums < 2^62
constexpr int kWideBits = 30;                       // DIBatchMatMul's int32 outputs: |y| <= 2^30

EDGEQ_HD inline int BitLen(uint64_t x) {
#if defined(__CUDA_ARCH__)
  return 64 - __clzll(static_cast<long long>(x));
#else
  return x ? 64 - __builtin_clzll(x) : 0;
#endif
}

// Keys a DIClippedSoftmax row may hold: its exp sum S (each exp <= 2^30) below 2^54, and S * qmax below 2^64 for
// the 2^obits - 1 of wide probabilities.
EDGEQ_HD constexpr int64_t SoftmaxMaxKeys(int64_t obits) {
  return obits <= 10 ? int64_t(1) << 24 : int64_t(1) << (34 - obits);
}

// How far P.V lowers its common exponent Ea so that sum_k u[k] * B[k, n] stays below 2^62: that sum is below
// sum_k |A[m, k]| * 2^15 * 2^max_shift * 2^7 (max_shift: the largest left shift of a kept key's u[k]). Int8 and uint8
// A never need it (255 * K < 2^24, shifts <= 16), nor uint16 probabilities summing to about 2^16.
EDGEQ_HD inline int64_t ContextShift(uint64_t a_abs_sum, int64_t max_shift) {
  const int64_t bits = BitLen(a_abs_sum) + (max_shift > 0 ? max_shift : 0) + 22 - 62;
  return bits > 0 ? bits : 0;
}

EDGEQ_HD inline int64_t Abs(int64_t v) { return v < 0 ? -v : v; }
EDGEQ_HD inline int64_t Min(int64_t a, int64_t b) { return a < b ? a : b; }
EDGEQ_HD inline int64_t Max(int64_t a, int64_t b) { return a > b ? a : b; }

// DIRotary's output row of input row r = (b * S + s) * H + h: r itself, or (b * H + h) * (past + S) + past + s with
// heads_first (the rows of a past cache of `past` positions first in each head).
EDGEQ_HD inline int64_t RotaryOutputRow(int64_t r, int64_t S, int64_t H, bool heads_first, int64_t past = 0) {
  const int64_t token = r / H;
  return heads_first ? (token / S * H + r % H) * (past + S) + past + token % S : r;
}

// floor(v / 2^s + 1/2) for s >= 0; |v| <= 2^62, so s >= 63 gives 0.
EDGEQ_HD inline int64_t RShr(int64_t v, int64_t s) {
  if (s <= 0) return v;
  if (s >= 63) return 0;
  return (v + (int64_t(1) << (s - 1))) >> s;
}

// v * 2^s: a left shift for s >= 0 (the caller bounds the result below 2^62), RShr(v, -s) below.
EDGEQ_HD inline int64_t ShiftBy(int64_t v, int64_t s) { return s >= 0 ? v * (int64_t(1) << s) : RShr(v, -s); }

// min(cap, round(v * 2^-s)) for v >= 0, cap a power of two, any s.
EDGEQ_HD inline int64_t ShiftCapped(int64_t v, int64_t s, int64_t cap) {
  if (s >= 0) return Min(RShr(v, s), cap);
  const int64_t ls = -s;
  if (ls >= BitLen(uint64_t(cap))) return v > 0 ? cap : 0;
  return v > (cap >> ls) ? cap : v << ls;
}

struct Dyadic {
  int64_t m = 0, e = 0;
};

// (m, k) with m * 2^-k ~ num / den: k the largest integer with round(num * 2^k / den) < 2^15, m that rounding
// (so m in [2^14, 2^15)). num, den in [1, 2^63).
EDGEQ_HD inline Dyadic Ratio(uint64_t num, uint64_t den) {
  using u128 = unsigned __int128;
  int64_t k = kScaleBits - BitLen(num) + BitLen(den);
  for (;;) {
    u128 m;
    if (k >= 0) {
      m = ((u128(num) << (k + 1)) + den) / (u128(den) << 1);
    } else {
      const u128 d = u128(den) << -k;
      m = ((u128(num) << 1) + d) / (d << 1);
    }
    if (m <= u128(kMMax)) return Dyadic{int64_t(m), k};
    --k;
  }
}

// A computed scale fitted into the int8 exponent: above 127 the mantissa is shifted down (zero == true when it
// reaches 0: the row becomes zeros with the zero-row scale); below -128 the scale saturates at (2^15-1, -128).
struct Scale {
  int64_t m = 0, e = 0;
  bool zero = false;
};

EDGEQ_HD inline Scale Finish(int64_t m, int64_t e) {
  if (e > kEMax) {
    m = RShr(m, e - kEMax);
    if (m == 0) return Scale{kZeroM, kZeroE, true};
    return Scale{m, kEMax, false};
  }
  if (e < kEMin) return Scale{kMMax, kEMin, false};
  return Scale{m, e, false};
}

// DISwiGLU's hadamard: the shift that keeps a row of max |v| = A below 2^61 through an unnormalized Walsh-Hadamard
// transform of `block` values (a power of two: the sums grow by at most `block`), and that transform, in place over
// consecutive blocks of v [n] (Sylvester order: the matrix [[H, H], [H, -H]]), exact in int64.
EDGEQ_HD inline int64_t HadamardShift(int64_t A, int64_t block) {
  return Max(0, BitLen(uint64_t(A)) + BitLen(uint64_t(block)) - 1 - 61);
}

EDGEQ_HD inline void HadamardBlocks(int64_t* v, int64_t n, int64_t block) {
  for (int64_t b0 = 0; b0 < n; b0 += block)
    for (int64_t h = 1; h < block; h *= 2)
      for (int64_t i = b0; i < b0 + block; i += 2 * h)
        for (int64_t j = i; j < i + h; ++j) {
          const int64_t x = v[j], y = v[j + h];
          v[j] = x + y;
          v[j + h] = x - y;
        }
}

// DynQuantRow in pieces, so that a row spread over many threads (the CUDA kernels) computes the same bits:
// DynQuantShift(A) of the row's max |v| (A > 0), PlanDynQuant of the max |RShr(v, sh)| (RShr is monotone, so that
// max is also max(RShr(max v), -RShr(min v))), then DynQuantCode of each RShr(v, sh).
struct QuantPlan {
  int64_t S = 0, R = 0, half = 0, qmax = 0;
  Scale scale;
};

EDGEQ_HD inline int64_t DynQuantShift(int64_t A) { return Max(0, BitLen(uint64_t(A)) - 31); }

// R <= qmax * 2^S / 2^(bitlen(A)-1) < 2^31 for every qmax < 2^15 (S shrinks by a bit per code bit above 8),
// so |v * R| <= 2^31 * 2^31 = 2^62. clip_q15 < 2^15: the range is A * clip (at least 1) instead of A, and the
// values beyond it saturate at +-qmax (a learned activation clip; v stays below 2^31, so the bound holds).
EDGEQ_HD inline QuantPlan PlanDynQuant(int64_t A, int64_t sh, int64_t mult, int64_t E, int64_t qmax,
                                       int64_t clip_q15 = kClipOne) {
  if (clip_q15 < kClipOne) A = Max(1, RShr(A * clip_q15, 15));
  QuantPlan p;
  p.qmax = qmax;
  p.S = BitLen(uint64_t(A)) + 23 - Max(0, BitLen(uint64_t(qmax)) - 7);
  p.R = ((qmax << p.S) + (A >> 1)) / A;
  p.half = int64_t(1) << (p.S - 1);
  const Dyadic r = Ratio(uint64_t(A) * uint64_t(mult), uint64_t(qmax));
  p.scale = Finish(r.m, r.e + E - sh);
  return p;
}

EDGEQ_HD inline int64_t DynQuantCode(int64_t shifted, const QuantPlan& p) {
  return p.scale.zero ? 0 : Max(-p.qmax, Min(p.qmax, (shifted * p.R + p.half) >> p.S));
}

// Per-row dynamic quantization of v * mult * 2^-E (|v| <= 2^62, mult in [1, 2^32)) into codes in
// [-qmax, qmax] (written to q) and the returned scale; see reference_integer.dyn_quant.
template <typename Code>
EDGEQ_HD inline Scale DynQuantRow(int64_t* v, int64_t n, int64_t mult, int64_t E, int64_t qmax, Code* q,
                                  int64_t clip_q15 = kClipOne) {
  int64_t A = 0;
  for (int64_t i = 0; i < n; ++i) A = Max(A, Abs(v[i]));
  if (A == 0) {
    for (int64_t i = 0; i < n; ++i) q[i] = 0;
    return Scale{kZeroM, kZeroE, true};
  }
  const int64_t sh = DynQuantShift(A);
  if (sh > 0) {
    A = 0;
    for (int64_t i = 0; i < n; ++i) {
      v[i] = RShr(v[i], sh);
      A = Max(A, Abs(v[i]));
    }
  }
  const QuantPlan p = PlanDynQuant(A, sh, mult, E, qmax, clip_q15);
  for (int64_t i = 0; i < n; ++i) q[i] = Code(DynQuantCode(v[i], p));
  return p.scale;
}

// DynQuantAsymRow in pieces (as DynQuantRow's), so the CUDA kernels that spread a row over threads compute the
// same bits: AsymShift of the row's range [lo, hi] (lo = min(v, 0), hi = max(v, 0)); PlanDynQuantAsym of the
// shifted range (RShr is monotone and keeps 0, so that is [RShr(lo, sh), RShr(hi, sh)]); DynQuantAsymCode of each
// RShr(v, sh). A plan with scale.zero set writes codes 0 and zero point 0 (an all-zero or underflowing row).
struct AsymPlan {
  int64_t S = 0, R = 0, half = 0, zp = 0, levels = 0, mid = 0;
  Scale scale{kZeroM, kZeroE, true};
};

EDGEQ_HD inline int64_t AsymShift(int64_t lo, int64_t hi) {
  const uint64_t full_span = uint64_t(hi) - uint64_t(lo);  // up to 2^63: unsigned
  return full_span == 0 ? 0 : Max(0, BitLen(full_span) - 31);
}

EDGEQ_HD inline AsymPlan PlanDynQuantAsym(int64_t lo, int64_t hi, int64_t sh, int64_t mult, int64_t E, int64_t bits) {
  AsymPlan p;
  p.levels = (int64_t(1) << bits) - 1;
  p.mid = int64_t(1) << (bits - 1);
  const int64_t span = hi - lo;  // < 2^32 after the shift
  if (span == 0) return p;
  const Dyadic r = Ratio(uint64_t(span) * uint64_t(mult), uint64_t(p.levels));
  p.scale = Finish(r.m, r.e + E - sh);
  if (p.scale.zero) return p;
  p.S = BitLen(uint64_t(span)) + 23 - Max(0, BitLen(uint64_t(p.levels)) - 7);
  p.R = ((p.levels << p.S) + (span >> 1)) / span;
  p.half = int64_t(1) << (p.S - 1);
  p.zp = (-lo * p.R + p.half) >> p.S;
  return p;
}

EDGEQ_HD inline int64_t DynQuantAsymCode(int64_t shifted, const AsymPlan& p) {
  return p.scale.zero ? 0 : Max(0, Min(p.levels, ((shifted * p.R + p.half) >> p.S) + p.zp)) - p.mid;
}

EDGEQ_HD inline int64_t AsymZero(const AsymPlan& p) { return p.scale.zero ? 0 : p.zp - p.mid; }

// The asymmetric code width of an op whose symmetric codes would span [-qmax, qmax] (the ops keep qmax).
EDGEQ_HD inline int64_t AsymBits(int64_t qmax) { return BitLen(uint64_t(qmax)) + 1; }

// Per-row asymmetric dynamic quantization of v * mult * 2^-E over [min(v, 0), max(v, 0)] (|v| <= 2^62, mult in
// [1, 2^32)): codes u - 2^(bits-1) into q, the zero point zp - 2^(bits-1) into *zero, the scale returned; see
// reference_integer.dyn_quant_asym (an all-zero or underflowing row: codes 0, zero point 0, the zero-row scale).
template <typename Code>
EDGEQ_HD inline Scale DynQuantAsymRow(int64_t* v, int64_t n, int64_t mult, int64_t E, int64_t bits, Code* q,
                                      int32_t* zero) {
  int64_t hi = 0, lo = 0;
  for (int64_t i = 0; i < n; ++i) {
    hi = Max(hi, v[i]);
    lo = Min(lo, v[i]);
  }
  const int64_t sh = AsymShift(lo, hi);
  if (sh > 0)
    for (int64_t i = 0; i < n; ++i) v[i] = RShr(v[i], sh);
  const AsymPlan p = PlanDynQuantAsym(RShr(lo, sh), RShr(hi, sh), sh, mult, E, bits);
  for (int64_t i = 0; i < n; ++i) q[i] = Code(DynQuantAsymCode(v[i], p));
  *zero = int32_t(AsymZero(p));
  return p.scale;
}

// WideQuantRow in pieces (as DynQuantRow's): the shift for a row of max |v| = A > 0, and the row's scale.
EDGEQ_HD inline int64_t WideQuantShift(int64_t A) { return Max(0, BitLen(uint64_t(A)) - kWideBits); }

EDGEQ_HD inline Scale WideQuantScale(int64_t sh, int64_t mult, int64_t E) {
  const Dyadic r = Ratio(uint64_t(mult), 1);
  return Finish(r.m, r.e + E - sh);
}

// A row of v * mult * 2^-E (|v| < 2^62, mult in [1, 2^15)) as int32 values of at most kWideBits bits and a
// normalized scale (mult shifted into [2^14, 2^15), exact); see reference_integer.wide_quant.
EDGEQ_HD inline Scale WideQuantRow(const int64_t* v, int64_t n, int64_t mult, int64_t E, int32_t* y) {
  int64_t A = 0;
  for (int64_t i = 0; i < n; ++i) A = Max(A, Abs(v[i]));
  Scale s{kZeroM, kZeroE, true};
  if (A != 0) {
    const int64_t sh = WideQuantShift(A);
    s = WideQuantScale(sh, mult, E);
    for (int64_t i = 0; i < n; ++i) y[i] = s.zero ? 0 : int32_t(RShr(v[i], sh));
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = 0;
  }
  return s;
}

// The common exponent of the exponents e[i] with keep(i) (at least one): as AlignExponents.
template <typename Keep>
EDGEQ_HD inline int64_t AlignExponentsWhere(const int8_t* e, int64_t n, Keep keep) {
  int64_t lo = kEMax + 1, hi = kEMin - 1;
  for (int64_t i = 0; i < n; ++i)
    if (keep(i)) {
      lo = Min(lo, e[i]);
      hi = Max(hi, e[i]);
    }
  return Min(hi, lo + kAlignWindow);
}

// 2^-(t / 2^24) in Q30 for 0 <= t <= kExpCap: cubic in the fraction (Horner, rounded shifts), then the integer
// part as a rounding right shift.
EDGEQ_HD inline int64_t Exp2Neg(int64_t t) {
  const int64_t f = t & ((int64_t(1) << kExpFrac) - 1);
  int64_t p = RShr(kExp2C3 * f, kExpFrac) + kExp2C2;
  p = RShr(p * f, kExpFrac) + kExp2C1;
  p = RShr(p * f, kExpFrac) + kOneQ30;
  return RShr(p, t >> kExpFrac);
}

// The Q24 base-2 exponent magnitude of a * 2^-e (a in [0, 2^31]): min(kExpCap, round(a * log2(e))).
EDGEQ_HD inline int64_t ExpArg(int64_t a, int64_t e) { return ShiftCapped(a * kLog2eQ30, 30 + e - kExpFrac, kExpCap); }

// DIExp's row scale exp(top * m * 2^-e) / qmax: the exponent top * m * log2(e) rounded to Q24 (saturated at
// +-2^62), its integer part into the exponent, 2^fraction = 2 * 2^-(1 - fraction) by Exp2Neg.
EDGEQ_HD inline Scale ExpScale(int64_t top, int64_t m, int64_t e, int64_t qmax) {
  const int64_t w = top * m * kLog2eQ30;  // |w| < 2^54
  const int64_t s = 30 + e - kExpFrac;
  int64_t z;
  if (s >= 0) z = RShr(w, s);
  else if (BitLen(uint64_t(Abs(w))) - s <= 62) z = w * (int64_t(1) << -s);
  else z = w > 0 ? (int64_t(1) << 62) : -(int64_t(1) << 62);
  const int64_t whole = z >> kExpFrac, frac = z & ((int64_t(1) << kExpFrac) - 1);
  const int64_t p2 = frac == 0 ? kOneQ30 : 2 * Exp2Neg((int64_t(1) << kExpFrac) - frac);
  const Dyadic r = Ratio(uint64_t(p2), uint64_t(qmax));
  return Finish(r.m, r.e + 30 - whole);
}

// sigmoid(q * m * 2^-e) in Q30: round(2^60 / (2^30 + E)) for q >= 0, its complement below; E = 2^30 exp(-|x|).
EDGEQ_HD inline int64_t SigmoidQ30(int64_t q, int64_t m, int64_t e) {
  const int64_t D = kOneQ30 + Exp2Neg(ExpArg(Abs(q) * m, e));
  const int64_t R = ((int64_t(1) << 61) + D) / (2 * D);
  return q >= 0 ? R : kOneQ30 - R;
}

// The common exponent of per-channel exponents: min(max e, min e + kAlignWindow); channel n is shifted by
// Ea - e[n] (ShiftBy).
EDGEQ_HD inline int64_t AlignExponents(const int8_t* e, int64_t n, int64_t stride = 1) {
  int64_t lo = e[0], hi = e[0];
  for (int64_t i = 1; i < n; ++i) {
    lo = Min(lo, e[i * stride]);
    hi = Max(hi, e[i * stride]);
  }
  return Min(hi, lo + kAlignWindow);
}

// DIRequant's input rows of output row r: first + g * stride for g < G. X [..., G, D] gives r * G and 1;
// heads_first (X [B, G, S, D], attention's layout) gives token r = b * S + s the rows (b * G + g) * S + s.
struct MergedRows {
  int64_t first, stride;
};
EDGEQ_HD inline MergedRows MergedRowsOf(int64_t r, int64_t G, int64_t S, bool heads_first) {
  return heads_first ? MergedRows{r / S * G * S + r % S, S} : MergedRows{r * G, 1};
}

// a * 2^-ea + b * 2^-eb (a, b in [0, 2^61)) as v * 2^-ev with v < 2^62; see reference_integer.add_positive.
EDGEQ_HD inline Dyadic AddPositive(int64_t a, int64_t ea, int64_t b, int64_t eb) {
  if (b == 0) return Dyadic{a, ea};
  if (a == 0) return Dyadic{b, eb};
  int64_t x = a, ex = ea, y = b, ey = eb;
  if (ex < ey) {
    x = b, ex = eb, y = a, ey = ea;
  }
  const int64_t d = ex - ey, room = 61 - BitLen(uint64_t(y));
  if (d <= room) return Dyadic{x + (y << d), ex};
  return Dyadic{RShr(x, d - room) + (y << room), ex - (d - room)};
}

// floor(sqrt(n)), bit by bit.
EDGEQ_HD inline int64_t ISqrt(uint64_t n) {
  uint64_t r = 0, bit = uint64_t(1) << 62;
  while (bit > n) bit >>= 2;
  while (bit != 0) {
    if (n >= r + bit) {
      n -= r + bit;
      r = (r >> 1) + bit;
    } else {
      r >>= 1;
    }
    bit >>= 2;
  }
  return int64_t(r);
}

// (r, er): r * 2^-er ~ sqrt(mean((q m 2^-e)^2) + eps_q60 * 2^-60), r in [2^30, 2^31), for a row whose
// sum of squares ss is not 0; see reference_integer.rms_scale.
// ss < 2^31 for int8 codes (used as is); int16 codes give up to 2^30 * C < 2^47, rounded to 31 bits first (p)
// so that T = ss * m^2 < 2^61 either way.
EDGEQ_HD inline Dyadic RmsScale(int64_t ss, int64_t C, int64_t m, int64_t e, int64_t eps_q60) {
  const int64_t p = Max(0, BitLen(uint64_t(ss)) - 31);
  const int64_t T = RShr(ss, p) * m * m;
  const int64_t s1 = 61 - BitLen(uint64_t(T));
  const Dyadic V = AddPositive((T << s1) / C, 2 * e + s1 - p, eps_q60, 60);
  int64_t s2 = 62 - BitLen(uint64_t(V.m));
  if ((V.e + s2) & 1) --s2;
  const int64_t v2 = s2 >= 0 ? V.m << s2 : RShr(V.m, -s2);
  return Dyadic{ISqrt(uint64_t(v2)), (V.e + s2) / 2};
}

}  // namespace integer
}  // namespace edgeq
