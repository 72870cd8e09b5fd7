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
#include <vector>

#include "../group_quant_matmul.h"
#include "cpu_ops.h"
#include "group_decode.h"

namespace edgeq {
namespace cpu {
namespace {

constexpr int64_t kRows = 4;

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

template <typename T, int BITS>
void RunBlock(const Task<T>& t, int64_t block) {
  const GqmmAttrs& a = *t.attrs;
  const int64_t K = a.K, N = a.N, gs = a.group_size, ng = a.n_groups, padded = ng * gs;
  const int64_t n0 = block * kRows, rows = std::min(kRows, N - n0);
  const float default_zp = float(1 << (BITS - 1));
  thread_local std::vector<float> scales, zeros, w;
  scales.resize(size_t(ng));
  zeros.resize(size_t(ng));
  auto load_row = [&](int64_t n) {
    for (int64_t g = 0; g < ng; ++g) {
      scales[g] = ToFloat(t.scales[n * ng + g]);
      zeros[g] = t.zero_points ? float(t.zero_points[n * ng + g]) : default_zp;
    }
    return t.B + n * ng * a.group_bytes;
  };
#if defined(EDGEQ_CPU_GEMV)
  if (t.M <= kGemvRows) {
    float out[kGemvRows];
    for (int64_t n = n0; n < n0 + rows; ++n) {
      GemvRows<BITS>(t.M, t.A, K, load_row(n), gs, ng, a.group_bytes, scales.data(), zeros.data(), out);
      for (int64_t m = 0; m < t.M; ++m) t.Y[m * N + n] = FromFloat<T>(out[m]);
    }
    return;
  }
#endif
  w.resize(size_t(kRows * padded));
  for (int64_t r = 0; r < rows; ++r)
    DecodeRow<BITS>(load_row(n0 + r), gs, ng, a.group_bytes, scales.data(), zeros.data(), w.data() + r * padded);
  DotDecodedRows<T>(w.data(), padded, rows, t.A, t.M, K, t.Y, N, n0);
}

template <typename T, int BITS>
void RunTask(void* data, size_t block) {
  RunBlock<T, BITS>(*static_cast<const Task<T>*>(data), int64_t(block));
}

template <typename T>
void Compute(Ort::KernelContext& ctx, const GqmmAttrs& attrs, const GqmmProblem& p) {
  std::vector<float> a_float;
  const float* A = FloatRows<T>(p.A, p.M * attrs.K, a_float);
  Task<T> task{&attrs, p.M, A, p.B, static_cast<const T*>(p.scales), p.zero_points, static_cast<T*>(p.Y)};
  void (*fn)(void*, size_t) = nullptr;
  WithBits(attrs.bits, [&](auto bits) { fn = RunTask<T, decltype(bits)::value>; });
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
  RegisterSpQR(domain);
  RegisterIntegerOps(domain);
}

}  // namespace cpu
}  // namespace edgeq
