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

// Stat codes j < count of one row bitstream (`bits` wide, code j at bits [j*bits, (j+1)*bits)) as floats. out
// has room for count rounded up to 8; the entries past count are junk.
inline void DecodeStatCodes(const uint8_t* row, int64_t row_bytes, int64_t bits, int64_t count, float* out) {
  const uint32_t mask = (1u << bits) - 1;
#if defined(EDGEQ_CPU_GEMV)
  // 8 codes fill `bits` bytes, so chunk c starts at byte c*bits; codes 0-3 lie in its low 32 bits, 4-7 in the
  // 32 bits from bit 4*bits on.
  const int b = int(bits);
  const __m256i shifts = _mm256_setr_epi32(0, b, 2 * b, 3 * b, 0, b, 2 * b, 3 * b);
  const __m256i maskv = _mm256_set1_epi32(int(mask));
  for (int64_t c = 0; 8 * c < count; ++c) {
    const int64_t off = c * bits;
    uint64_t v = 0;
    if (off + 8 <= row_bytes) {
      std::memcpy(&v, row + off, 8);
    } else {
      for (int64_t i = off; i < row_bytes; ++i) v |= uint64_t(row[i]) << (8 * (i - off));
    }
    const __m256i words = _mm256_setr_m128i(_mm_set1_epi32(int(uint32_t(v))), _mm_set1_epi32(int(uint32_t(v >> (4 * b)))));
    const __m256i codes = _mm256_and_si256(_mm256_srlv_epi32(words, shifts), maskv);
    _mm256_storeu_ps(out + 8 * c, _mm256_cvtepi32_ps(codes));
  }
#else
  for (int64_t j = 0; j < count; ++j) {
    const int64_t bit = j * bits;
    uint32_t v = row[bit >> 3];
    if ((bit & 7) + bits > 8) v |= uint32_t(row[(bit >> 3) + 1]) << 8;
    out[j] = float((v >> (bit & 7)) & mask);
  }
#endif
}

// The per-row float scales and zeros of one task's rows, with its row block's statistics kept as floats.
class RowStats {
 public:
  RowStats(const SpqrAttrs& a, const SpqrProblem& p) : a_(a), p_(p) {
    const size_t padded = size_t((a.n_groups + 7) / 8 * 8);
    for (auto* v : {&ss_, &zs_, &sz_, &zz_, &scale_codes_, &zero_codes_, &scales_, &zeros_}) v->resize(padded);
  }

  // Decodes row n's s[j] and z[j]; returns its codes.
  const uint8_t* Load(int64_t n) {
    const int64_t ng = a_.n_groups, block = n / a_.stat_group_size;
    if (block != block_) {
      const uint16_t* st = p_.stats + block * ng * 4;
      for (int64_t j = 0; j < ng; ++j) {
        ss_[j] = HalfToFloat(st[4 * j]);
        zs_[j] = HalfToFloat(st[4 * j + 1]);
        sz_[j] = HalfToFloat(st[4 * j + 2]);
        zz_[j] = HalfToFloat(st[4 * j + 3]);
      }
      block_ = block;
    }
    const int64_t sb = a_.stat_row_bytes;
    DecodeStatCodes(p_.scale_codes + n * sb, sb, a_.stat_bits, ng, scale_codes_.data());
    DecodeStatCodes(p_.zero_codes + n * sb, sb, a_.stat_bits, ng, zero_codes_.data());
    for (int64_t j = 0; j < ng; ++j) {
      scales_[j] = ss_[j] * (scale_codes_[j] - zs_[j]);
      zeros_[j] = sz_[j] * (zero_codes_[j] - zz_[j]);
    }
    return p_.codes + n * ng * a_.group_bytes;
  }

  const float* scales() const { return scales_.data(); }
  const float* zeros() const { return zeros_.data(); }

 private:
  const SpqrAttrs& a_;
  const SpqrProblem& p_;
  int64_t block_ = -1;
  std::vector<float> ss_, zs_, sz_, zz_, scale_codes_, zero_codes_, scales_, zeros_;
};

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
  const float* A;  // [M, K], already float
};

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
    float out[kGemvRows];
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* codes = stats.Load(n);
      GemvRows<BITS>(M, t.A, K, codes, a.group_size, a.n_groups, a.group_bytes, stats.scales(), stats.zeros(), out);
      for (int32_t i = p.row_ptr[n]; i < p.row_ptr[n + 1]; ++i) {
        const float value = HalfToFloat(p.values[i]);
        const float* a_col = t.A + p.cols[i];
        for (int64_t m = 0; m < M; ++m) out[m] += a_col[m * K] * value;
      }
      for (int64_t m = 0; m < M; ++m) Y[m * N + n] = FromFloat<T>(out[m]);
    }
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
  std::vector<float> a_float;
  Task<T> task{&a, &p, FloatRows<T>(p.A, p.M * a.K, a_float)};
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
        Task<float> task{&attrs, &p, nullptr};
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

template <bool Dequantize>
struct Op : Ort::CustomOpBase<Op<Dequantize>, Kernel<Dequantize>, /*WithStatus=*/true> {
  Op() { this->InferOutputShapeFn = Dequantize ? InferSpQRDequantize : InferSpQRMatMul; }
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return StatusFrom([&] { *kernel = new Kernel<Dequantize>(info); });
  }
  const char* GetName() const { return Dequantize ? kSpQRDequantize : kSpQRMatMul; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return kSpqrWeightInputs + (Dequantize ? 0 : 1); }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return Dequantize ? SpqrDequantizeInputType(index) : SpqrMatMulInputType(index);
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const {
    return Dequantize ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  }
};

}  // namespace

void RegisterSpQR(Ort::CustomOpDomain& domain) {
  static Op<false> matmul;
  static Op<true> dequantize;
  domain.Add(&matmul);
  domain.Add(&dequantize);
}

}  // namespace cpu
}  // namespace edgeq
