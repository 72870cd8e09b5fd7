// edgeq::SpQRMatMul and edgeq::SpQRDequantize on the CPU execution provider.
//
// Work is split across ORT's intra-op thread pool by tasks of kTaskRows output rows. A task converts the
// second-level statistics of its row block (float16 [G1, 4]) to float once, then per row decodes the row's
// first-level stat codes 8 at a time (AVX2) into s[j] = ss * (scale_code - zs) and z[j] = sz * (zero_code - zz),
// which is all GroupQuantMatMul's row decoders need (group_decode.h):
//  - M <= kGemvRows: the row's codes are decoded in registers and multiplied with A there (GemvRow), and the
//    row's outliers add A[:, col] * value to the same accumulators before Y is written.
//  - larger M: blocks of 4 rows are decoded once into float, the outliers added into the decoded rows, and the
//    block dotted with every row of A.
// SpQRDequantize decodes the task's rows the same way and writes them transposed into W_T [K, N].
// The sparse indices are checked (CheckSpqrSparseIndices) before any work, so no read leaves the inputs.
#include <algorithm>
#include <cstring>
#include <vector>

#include "../spqr_matmul.h"
#include "cpu_ops.h"
#include "group_decode.h"

namespace edgeq {
namespace cpu {
namespace {

constexpr int64_t kTaskRows = 16;  // a typical stat_group_size: one statistics block per task
constexpr int64_t kDecodeRows = 4;  // rows of one decoded block (DotDecodedRows)

// Code j of a row bitstream of `bits`-wide codes (code j in bits [j*bits, (j+1)*bits)).
inline uint32_t StatCode(const uint8_t* row, int64_t bits, int64_t j) {
  const int64_t bit = j * bits;
  uint32_t v = row[bit >> 3];
  if ((bit & 7) + bits > 8) v |= uint32_t(row[(bit >> 3) + 1]) << 8;
  return (v >> (bit & 7)) & ((1u << bits) - 1);
}

#if defined(EDGEQ_CPU_GEMV)
// Codes 8c..8c+7 of a row bitstream, as floats; `readable` bytes from the row's start belong to the tensor.
// 8 codes fill `bits` bytes, so chunk c starts at byte c*bits. Up to 4 bits the 8 codes lie in its low 32 bits
// (shifts 0, b, ..., 7b); wider, codes 0-3 lie there and 4-7 in the 32 bits from bit 4b on (shifts 0, b, 2b,
// 3b twice): StatShifts. The rows of a tensor are contiguous, so only the tensor's last row ends on bytes loaded
// one by one; lanes past the row's codes are junk (the next row's bits, or 0 at the tensor's end).
inline __m256i StatShifts(int64_t bits) {
  const int b = int(bits), h = bits <= 4 ? 4 * b : 0;
  return _mm256_setr_epi32(0, b, 2 * b, 3 * b, h, h + b, h + 2 * b, h + 3 * b);
}

inline __m256 StatCodes8(const uint8_t* row, int64_t readable, int64_t bits, int64_t c, __m256i shifts,
                         __m256i mask) {
  const int64_t off = c * bits;
  uint64_t v = 0;
  if (off + 8 <= readable) {
    std::memcpy(&v, row + off, 8);
  } else {
    for (int64_t i = off; i < readable; ++i) v |= uint64_t(row[i]) << (8 * (i - off));
  }
  const __m256i words = bits <= 4 ? _mm256_set1_epi32(int(uint32_t(v)))
                                  : _mm256_setr_m128i(_mm_set1_epi32(int(uint32_t(v))),
                                                      _mm_set1_epi32(int(uint32_t(v >> (4 * bits)))));
  return _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(words, shifts), mask));
}
#endif

// The float scales s[j] and zeros z[j] of one row at a time, for the rows of one task; the statistics of the
// current row block are kept as float (SoA, zero past n_groups so that padded lanes give s = z = 0). Its arrays
// are the thread's, reused from task to task.
class RowStats {
 public:
  RowStats(const SpqrAttrs& a, const SpqrProblem& p) : a_(a), p_(p), v_(Scratch()) {
    for (auto& v : v_) v.resize(size_t(Padded(a.n_groups)));
  }

  static int64_t Padded(int64_t n_groups) { return (n_groups + 7) / 8 * 8; }

  // Row n's s[j] and z[j] into scales() and zeros(); returns the row's codes.
  const uint8_t* Load(int64_t n) {
    SwitchBlock(n / a_.stat_group_size);
#if defined(EDGEQ_CPU_GEMV)
    float* __restrict s = v_[4].data();
    float* __restrict z = v_[5].data();
    return Decode(n, [&](int64_t j, __m256 sv, __m256 zv) {
      _mm256_storeu_ps(s + j, sv);
      _mm256_storeu_ps(z + j, zv);
    });
#else
    const int64_t sb = a_.stat_row_bytes, bits = a_.stat_bits;
    for (int64_t j = 0; j < a_.n_groups; ++j) {
      v_[4][j] = v_[0][j] * (float(StatCode(p_.scale_codes + n * sb, bits, j)) - v_[1][j]);
      v_[5][j] = v_[2][j] * (float(StatCode(p_.zero_codes + n * sb, bits, j)) - v_[3][j]);
    }
    return p_.codes + n * a_.n_groups * a_.group_bytes;
#endif
  }

#if defined(EDGEQ_CPU_GEMV)
  // Row n's s[j] into scales(), and zero_terms[m] = sum_j s[j] * z[j] * group_sums[m][j] for m < MM, what a GEMV
  // without zeros (GemvRow<., ., false>) leaves to subtract; group_sums rows are Padded(n_groups) long, zero
  // past n_groups. Returns the row's codes.
  template <int MM>
  const uint8_t* LoadFolded(int64_t n, const float* group_sums, float* zero_terms) {
    SwitchBlock(n / a_.stat_group_size);
    float* __restrict s = v_[4].data();
    const int64_t stride = Padded(a_.n_groups);
    __m256 terms[MM];
    for (int m = 0; m < MM; ++m) terms[m] = _mm256_setzero_ps();
    const uint8_t* codes = Decode(n, [&](int64_t j, __m256 sv, __m256 zv) {
      _mm256_storeu_ps(s + j, sv);
      const __m256 product = _mm256_mul_ps(sv, zv);
      for (int m = 0; m < MM; ++m)
        terms[m] = _mm256_fmadd_ps(product, _mm256_loadu_ps(group_sums + m * stride + j), terms[m]);
    });
    for (int m = 0; m < MM; ++m) zero_terms[m] = HorizontalSum(terms[m]);
    return codes;
  }
#endif

  const float* scales() const { return v_[4].data(); }
  const float* zeros() const { return v_[5].data(); }

 private:
  using Arrays = std::vector<float>[6];  // ss, zs, sz, zz of the row block; s, z of the row
  static Arrays& Scratch() {
    thread_local Arrays arrays;
    return arrays;
  }

  // Converts row block `block`'s float16 statistics [n_groups, 4] to the four float arrays, unless they hold it.
  void SwitchBlock(int64_t block) {
    if (block == block_) return;
    block_ = block;
    const int64_t ng = a_.n_groups;
    const uint16_t* st = p_.stats + block * ng * 4;
    float* __restrict ss = v_[0].data();
    float* __restrict zs = v_[1].data();
    float* __restrict sz = v_[2].data();
    float* __restrict zz = v_[3].data();
    int64_t j = 0;
#if defined(EDGEQ_CPU_GEMV) && defined(__F16C__)
    // 8 groups = 32 halves at a time, transposed from (ss, zs, sz, zz) per group to one vector per statistic.
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (; j + 8 <= ng; j += 8) {
      __m256 r[4];
      for (int i = 0; i < 4; ++i)  // r[i]: groups j+2i and j+2i+1
        r[i] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(st + 4 * j + 8 * i)));
      const __m256 lo01 = _mm256_unpacklo_ps(r[0], r[1]), hi01 = _mm256_unpackhi_ps(r[0], r[1]);
      const __m256 lo23 = _mm256_unpacklo_ps(r[2], r[3]), hi23 = _mm256_unpackhi_ps(r[2], r[3]);
      // Each shuffle holds groups in the order 0 2 4 6 1 3 5 7; the permutation restores 0..7.
      _mm256_storeu_ps(ss + j, _mm256_permutevar8x32_ps(_mm256_shuffle_ps(lo01, lo23, 0x44), order));
      _mm256_storeu_ps(zs + j, _mm256_permutevar8x32_ps(_mm256_shuffle_ps(lo01, lo23, 0xEE), order));
      _mm256_storeu_ps(sz + j, _mm256_permutevar8x32_ps(_mm256_shuffle_ps(hi01, hi23, 0x44), order));
      _mm256_storeu_ps(zz + j, _mm256_permutevar8x32_ps(_mm256_shuffle_ps(hi01, hi23, 0xEE), order));
    }
#endif
    for (; j < ng; ++j) {
      ss[j] = HalfToFloat(st[4 * j]);
      zs[j] = HalfToFloat(st[4 * j + 1]);
      sz[j] = HalfToFloat(st[4 * j + 2]);
      zz[j] = HalfToFloat(st[4 * j + 3]);
    }
    for (; j < Padded(ng); ++j) ss[j] = zs[j] = sz[j] = zz[j] = 0.f;
  }

#if defined(EDGEQ_CPU_GEMV)
  // Calls emit(j, s[j..j+8), z[j..j+8)) for j = 0, 8, ... < n_groups; returns row n's codes.
  template <typename Emit>
  const uint8_t* Decode(int64_t n, Emit&& emit) {
    const int64_t sb = a_.stat_row_bytes, bits = a_.stat_bits, readable = (a_.N - n) * sb;
    const uint8_t* scale_row = p_.scale_codes + n * sb;
    const uint8_t* zero_row = p_.zero_codes + n * sb;
    const float* __restrict ss = v_[0].data();
    const float* __restrict zs = v_[1].data();
    const float* __restrict sz = v_[2].data();
    const float* __restrict zz = v_[3].data();
    const int b = int(bits);
    const __m256i shifts = StatShifts(bits);
    const __m256i mask = _mm256_set1_epi32((1 << b) - 1);
    const int64_t ng = a_.n_groups;
    for (int64_t c = 0; 8 * c < ng; ++c) {
      const int64_t j = 8 * c;
      const __m256 sc = StatCodes8(scale_row, readable, bits, c, shifts, mask);
      const __m256 zc = StatCodes8(zero_row, readable, bits, c, shifts, mask);
      emit(j, _mm256_mul_ps(_mm256_loadu_ps(ss + j), _mm256_sub_ps(sc, _mm256_loadu_ps(zs + j))),
           _mm256_mul_ps(_mm256_loadu_ps(sz + j), _mm256_sub_ps(zc, _mm256_loadu_ps(zz + j))));
    }
    return p_.codes + n * a_.n_groups * a_.group_bytes;
  }
#endif

  const SpqrAttrs& a_;
  const SpqrProblem& p_;
  Arrays& v_;
  int64_t block_ = -1;
};

// out[m] += sum of A[m, cols[i]] * values[i] over row n's outliers, for m < MM. Four independent sums per row
// of A, so that the multiply-adds of consecutive outliers overlap (an AVX2 gather of 8 was three times slower).
template <int MM>
inline void AddOutliers(const SpqrProblem& p, int64_t n, const float* A, int64_t K, float* out) {
  float sum[4][MM] = {};
  int32_t i = p.row_ptr[n];
  const int32_t end = p.row_ptr[n + 1];
  auto add = [&](int chain, int32_t at) {
    const float value = HalfToFloat(p.values[at]);
    const float* a = A + p.cols[at];
    for (int m = 0; m < MM; ++m) sum[chain][m] += a[m * K] * value;
  };
  for (; i + 4 <= end; i += 4)
    for (int chain = 0; chain < 4; ++chain) add(chain, i + chain);
  for (; i < end; ++i) add(0, i);
  for (int m = 0; m < MM; ++m) out[m] += (sum[0][m] + sum[1][m]) + (sum[2][m] + sum[3][m]);
}

// Row n dense-decoded into w[0, n_groups * group_size), its outliers added.
template <int BITS>
void DecodeSpqrRow(const SpqrAttrs& a, const SpqrProblem& p, RowStats& stats, int64_t n, float* w) {
  const uint8_t* codes = stats.Load(n);
  DecodeRow<BITS>(codes, a.group_size, a.n_groups, a.group_bytes, stats.scales(), stats.zeros(), w);
  for (int32_t i = p.row_ptr[n]; i < p.row_ptr[n + 1]; ++i) w[p.cols[i]] += HalfToFloat(p.values[i]);
}

template <typename T>
struct Task {
  const SpqrAttrs* attrs;
  const SpqrProblem* p;
  const float* A;           // [M, K], already float
  const float* group_sums;  // [M, RowStats::Padded(n_groups)]: sum of A[m, k] over group j (GEMV path)
};

#if defined(EDGEQ_CPU_GEMV)
// Y[:, n0:n1) for MM rows of A: each row's codes decoded in registers without zeros (GemvRow), its zero term
// from the statistics pass (LoadFolded), and its outliers, summed before Y is written.
template <typename T, int BITS, int MM>
void GemvBlock(const Task<T>& t, RowStats& stats, int64_t n0, int64_t n1) {
  const SpqrAttrs& a = *t.attrs;
  T* Y = static_cast<T*>(t.p->Y);
  for (int64_t n = n0; n < n1; ++n) {
    float zero_terms[MM], out[MM];
    const uint8_t* codes = stats.LoadFolded<MM>(n, t.group_sums, zero_terms);
    GemvRow<BITS, MM, /*kZeros=*/false>(t.A, a.K, codes, a.group_size, a.n_groups, a.group_bytes, stats.scales(),
                                         nullptr, out);
    for (int m = 0; m < MM; ++m) out[m] -= zero_terms[m];
    AddOutliers<MM>(*t.p, n, t.A, a.K, out);
    for (int m = 0; m < MM; ++m) Y[m * a.N + n] = FromFloat<T>(out[m]);
  }
}
#endif

template <typename T, int BITS>
void MatMulBlock(void* data, size_t block) {
  const Task<T>& t = *static_cast<const Task<T>*>(data);
  const SpqrAttrs& a = *t.attrs;
  const SpqrProblem& p = *t.p;
  const int64_t K = a.K, N = a.N, M = p.M, padded = a.n_groups * a.group_size;
  const int64_t n0 = int64_t(block) * kTaskRows, n1 = std::min(N, n0 + kTaskRows);
  T* Y = static_cast<T*>(p.Y);
  RowStats stats(a, p);
#if defined(EDGEQ_CPU_GEMV)
  if (M <= kGemvRows) {
    WithGemvRows(M, [&](auto mm) { GemvBlock<T, BITS, decltype(mm)::value>(t, stats, n0, n1); });
    return;
  }
#endif
  thread_local std::vector<float> w;
  w.resize(size_t(kDecodeRows * padded));
  for (int64_t s = n0; s < n1; s += kDecodeRows) {
    const int64_t rows = std::min(kDecodeRows, n1 - s);
    for (int64_t r = 0; r < rows; ++r) DecodeSpqrRow<BITS>(a, p, stats, s + r, w.data() + r * padded);
    DotDecodedRows<T>(w.data(), padded, rows, t.A, M, K, Y, N, s);
  }
}

template <int BITS>
void DequantizeBlock(void* data, size_t block) {
  const Task<float>& t = *static_cast<const Task<float>*>(data);
  const SpqrAttrs& a = *t.attrs;
  const SpqrProblem& p = *t.p;
  const int64_t K = a.K, N = a.N, padded = a.n_groups * a.group_size;
  const int64_t n0 = int64_t(block) * kTaskRows, rows = std::min(kTaskRows, N - n0);
  RowStats stats(a, p);
  thread_local std::vector<float> w;
  w.resize(size_t(kTaskRows * padded));
  for (int64_t r = 0; r < rows; ++r) DecodeSpqrRow<BITS>(a, p, stats, n0 + r, w.data() + r * padded);
  float* W_T = static_cast<float*>(p.Y);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t r = 0; r < rows; ++r) W_T[k * N + n0 + r] = w[r * padded + k];
}

template <typename T>
void RunMatMul(Ort::KernelContext& ctx, const SpqrAttrs& a, const SpqrProblem& p) {
  std::vector<float> a_float, group_sums;
  Task<T> task{&a, &p, FloatRows<T>(p.A, p.M * a.K, a_float), nullptr};
#if defined(EDGEQ_CPU_GEMV)
  if (p.M <= kGemvRows) {
    const int64_t stride = RowStats::Padded(a.n_groups);
    group_sums.assign(size_t(p.M * stride), 0.f);
    for (int64_t m = 0; m < p.M; ++m)
      for (int64_t j = 0; j < a.n_groups; ++j) {
        const int64_t k1 = std::min(a.K, (j + 1) * a.group_size);
        for (int64_t k = j * a.group_size; k < k1; ++k) group_sums[m * stride + j] += task.A[m * a.K + k];
      }
    task.group_sums = group_sums.data();
  }
#endif
  void (*fn)(void*, size_t) = nullptr;
  WithBits(a.bits, [&](auto bits) { fn = MatMulBlock<T, decltype(bits)::value>; });
  ctx.ParallelFor(fn, size_t((a.N + kTaskRows - 1) / kTaskRows), 0, &task);
}

// One kernel class for both ops: `Dequantize` picks the op.
template <bool Dequantize>
struct Kernel {
  explicit Kernel(const OrtKernelInfo* info)
      : attrs(SpqrAttrs::FromKernelInfo(info, Dequantize ? kSpQRDequantize : kSpQRMatMul)) {}

  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    return StatusFrom([&] {
      Ort::KernelContext ctx(raw);
      const SpqrProblem p = Dequantize ? PrepareSpQRDequantize(ctx, attrs) : PrepareSpQRMatMul(ctx, attrs);
      CheckSpqrSparseIndices(attrs, p.row_ptr, p.cols, p.nnz);
      if constexpr (Dequantize) {
        Task<float> task{&attrs, &p, nullptr, nullptr};
        void (*fn)(void*, size_t) = nullptr;
        WithBits(attrs.bits, [&](auto bits) { fn = DequantizeBlock<decltype(bits)::value>; });
        ctx.ParallelFor(fn, size_t((attrs.N + kTaskRows - 1) / kTaskRows), 0, &task);
      } else if (p.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
        RunMatMul<float>(ctx, attrs, p);
      } else {
        RunMatMul<uint16_t>(ctx, attrs, p);
      }
    });
  }

  SpqrAttrs attrs;
};

}  // namespace

void RegisterSpQR(Ort::CustomOpDomain& domain) { AddSpqrOps<Kernel>(domain, "CPUExecutionProvider"); }

}  // namespace cpu
}  // namespace edgeq
