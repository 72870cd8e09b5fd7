// The I-LLM integer ops on the CUDA execution provider: the CPU ops' checks of types and shapes on the host
// (PrepareIntegerOp), then the kernels of integer_ops_kernels.cu on ORT's compute stream. Everything a kernel
// needs besides the tensors travels by value in DiArgs, so the ops can be captured in a CUDA graph.
#include <algorithm>
#include <string>

#include "../integer_ops.h"
#include "cuda_ops.h"
#include "cuda_scratch.h"
#include "integer_ops_kernels.h"

namespace edgeq {
namespace cuda {
namespace {

DiGemm DiGemmFromEnv(const std::string& where) {
  static const char* const names[] = {"cublas", "rows", "tiled"};
  static const DiGemm values[] = {DiGemm::kCublas, DiGemm::kRows, DiGemm::kTiled};
  return KernelFromEnv("EDGEQ_DI_GEMM", names, values, DiGemm::kAuto, where);
}

DiCode CodeOf(ONNXTensorElementDataType type) {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return DiCode::kUInt8;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16: return DiCode::kInt16;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16: return DiCode::kUInt16;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return DiCode::kInt32;
    default: return DiCode::kInt8;
  }
}

DiTensor TensorOf(const IntInput& x) {
  DiTensor t;
  t.q = x.q;
  t.code = CodeOf(x.type);
  t.m = x.m;
  t.e = x.e;
  t.rows = x.rows;
  t.C = x.C;
  return t;
}

// The scores' shape (for the mask and the causal rule) and the mask's strides, by value.
void CopyShape(const std::vector<int64_t>& shape, const DiProblem& p, DiArgs& args, const std::string& where) {
  if (shape.size() > size_t(kDiMaxRank))
    throw InvalidArgument(where + ": rank " + std::to_string(shape.size()) + " exceeds the CUDA op's " +
                          std::to_string(kDiMaxRank));
  args.rank = int(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) {
    args.shape[i] = shape[i];
    if (p.mask != nullptr) args.mask_strides[i] = p.mask_strides[i];
  }
  args.mask = p.mask;
}

DiArgs ArgsOf(const DiAttrs& a, const DiProblem& p) {
  DiArgs args;
  args.op = a.op;
  args.qmax = a.qmax;
  args.clip_q8 = a.clip_q8;
  args.is_causal = a.is_causal;
  args.eps_q60 = a.eps_q60;
  args.interleaved = a.interleaved;
  args.trans_b = a.trans_b;
  args.abits = a.abits;
  args.hadamard = a.hadamard;
  args.clip_q15 = a.clip_q15;
  args.x = TensorOf(p.x);
  args.x2 = TensorOf(p.x2);
  args.y = p.out.q;
  args.y_m = p.out.m;
  args.y_e = p.out.e;
  args.y_z = p.out.z;
  args.y_code = a.op == DiOp::kClippedSoftmax ? (a.obits > 8 ? DiCode::kUInt16 : DiCode::kUInt8)
                : a.op == DiOp::kBatchMatMul  ? DiCode::kInt32
                : a.obits > 8                 ? DiCode::kInt16
                                              : DiCode::kInt8;
  args.W = p.W;
  args.w_zero = p.w_zero;
  args.x_zero = p.x_zero;
  args.w_sum = p.w_sum;
  args.ch_m = p.ch_m;
  args.ch_e = p.ch_e;
  args.K = a.K;
  args.N = p.N;  // DIMatMul: of its part (MatMulPart)
  switch (a.op) {
    case DiOp::kClippedSoftmax: CopyShape(p.x.shape, p, args, a.where); break;
    case DiOp::kRotary:
      args.positions = p.positions;
      args.cos = p.cos;
      args.sin = p.sin;
      args.S = p.x.shape[1];
      args.H = p.x.shape[2];
      args.D = p.x.shape[3];
      args.P = p.cos_rows;
      args.per_head_scales = p.per_head_scales;
      args.heads_first = a.heads_first != 0;
      args.rotate = a.rotate != 0;
      args.past = TensorOf(p.past);
      args.past_len = p.past_len;
      args.B = p.x.shape[0];
      break;
    case DiOp::kBatchMatMul: {
      std::vector<int64_t> out(p.x.shape);
      out.back() = p.N;
      CopyShape(out, p, args, a.where);
      args.M = p.M;
      args.K = p.K;
      args.N = p.N;
      args.groups = p.x.rows / p.M;
      // group g of A takes B's batch as PrepareIntegerOp's b_batch does, computed on the device from its mapping
      args.batch_rank = int(p.b_strides.size());
      for (int i = 0; i < args.batch_rank; ++i) {
        args.batch_dims[i] = p.x.shape[size_t(i)];
        args.batch_group[i] = p.b_groups[size_t(i)];
        args.b_strides[i] = p.b_strides[size_t(i)];
      }
      break;
    }
    case DiOp::kRequant:
      args.G = p.merged_rows;
      args.heads_first = a.heads_first != 0;
      args.S = p.merged_seq;
      break;
    default: break;
  }
  return args;
}

template <DiOp kOp>
struct Kernel {
  explicit Kernel(const OrtKernelInfo* info)
      : attrs(DiAttrs::FromKernelInfo(info, kOp, /*device_inputs=*/true)), gemm(DiGemmFromEnv(attrs.where)) {}

  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    return StatusFrom([&] {
      Ort::KernelContext ctx(raw);
      const DiProblem p = PrepareIntegerOp(ctx, attrs);
      // DIMatMul's split: its two parts one after the other on the stream, sharing the scratch
      const bool split = kOp == DiOp::kMatMul && attrs.split != 0;
      DiArgs launches[2];
      const int count = split ? 2 : 1;
      if (split)
        for (int i = 0; i < count; ++i) launches[i] = ArgsOf(attrs, MatMulPart(p, attrs.split, i));
      else
        launches[0] = ArgsOf(attrs, p);
      size_t bytes = 0;
      for (int i = 0; i < count; ++i) bytes = std::max(bytes, IntegerOpScratchBytes(launches[i]));
      Scratch scratch(ctx, /*input=*/0, bytes, attrs.where);
      for (int i = 0; i < count; ++i)
        if (const char* error = LaunchIntegerOp(launches[i], gemm, ctx.GetGPUComputeStream(), scratch.data))
          throw std::runtime_error(attrs.where + ": CUDA launch failed: " + error);
    });
  }

  DiAttrs attrs;
  DiGemm gemm;
};

}  // namespace

void RegisterIntegerOps(Ort::CustomOpDomain& domain) { AddIntegerOps<Kernel>(domain, "CUDAExecutionProvider"); }

}  // namespace cuda
}  // namespace edgeq
