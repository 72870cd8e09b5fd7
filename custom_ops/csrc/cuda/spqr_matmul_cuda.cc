// edgeq::SpQRMatMul and edgeq::SpQRDequantize on the CUDA execution provider: checks shapes and types on the host
// (spqr_matmul.h), then enqueues the kernels (spqr_matmul_kernels.cu) on the stream ORT computes on, so the ops
// order with their neighbours and can be captured in a CUDA graph. The contents of row_ptr and cols stay on the
// device and are not checked here (that would need a copy to the host and a synchronization): the kernels clamp
// them instead, so malformed indices give wrong outliers but never a read outside the inputs.
#include <string>

#include "../spqr_matmul.h"
#include "cuda_ops.h"
#include "cuda_scratch.h"
#include "spqr_matmul_kernels.h"

namespace edgeq {
namespace cuda {
namespace {

SpqrKernel SpqrKernelFromEnv(const std::string& where) {
  static const char* const names[] = {"decode", "gemm", "generic"};
  static const SpqrKernel values[] = {SpqrKernel::kDecode, SpqrKernel::kGemm, SpqrKernel::kGeneric};
  return KernelFromEnv("EDGEQ_SPQR_KERNEL", names, values, SpqrKernel::kAuto, where);
}

SpqrArgs ArgsOf(const SpqrAttrs& a, const SpqrProblem& p) {
  SpqrArgs args;
  args.half = p.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
  args.M = p.M;
  args.N = a.N;
  args.K = a.K;
  args.bits = a.bits;
  args.group_size = a.group_size;
  args.stat_bits = a.stat_bits;
  args.stat_group_size = a.stat_group_size;
  args.n_groups = a.n_groups;
  args.group_bytes = a.group_bytes;
  args.stat_row_bytes = a.stat_row_bytes;
  args.nnz = p.nnz;
  args.A = p.A;
  args.codes = p.codes;
  args.scale_codes = p.scale_codes;
  args.zero_codes = p.zero_codes;
  args.stats = p.stats;
  args.row_ptr = p.row_ptr;
  args.cols = p.cols;
  args.values = p.values;
  args.Y = p.Y;
  return args;
}

template <bool Dequantize>
struct Kernel {
  explicit Kernel(const OrtKernelInfo* info)
      : attrs(SpqrAttrs::FromKernelInfo(info, Dequantize ? kSpQRDequantize : kSpQRMatMul)),
        choice(Dequantize ? SpqrKernel::kAuto : SpqrKernelFromEnv(attrs.where)) {}

  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    return StatusFrom([&] {
      Ort::KernelContext ctx(raw);
      const SpqrProblem p = Dequantize ? PrepareSpQRDequantize(ctx, attrs) : PrepareSpQRMatMul(ctx, attrs);
      const SpqrArgs args = ArgsOf(attrs, p);
      const char* error = nullptr;
      if constexpr (Dequantize) {
        error = LaunchSpqrDequantize(args, ctx.GetGPUComputeStream());
      } else {
        const SpqrKernel chosen = PickSpqrKernel(args, choice);
        if (const char* refusal = SpqrKernelRefusal(args, chosen))
          throw InvalidArgument(attrs.where + ": EDGEQ_SPQR_KERNEL=" + SpqrKernelName(chosen) + " " + refusal +
                                " (M=" + std::to_string(args.M) + ", K=" + std::to_string(args.K) + ")");
        Scratch scratch(ctx, /*input=*/1, SpqrMatMulScratchBytes(args, chosen), attrs.where);
        error = LaunchSpqrMatMul(args, chosen, ctx.GetGPUComputeStream(), scratch.data);
      }
      if (error) throw std::runtime_error(attrs.where + ": CUDA launch failed: " + error);
    });
  }

  SpqrAttrs attrs;
  SpqrKernel choice;
};

}  // namespace

void RegisterSpQR(Ort::CustomOpDomain& domain) { AddSpqrOps<Kernel>(domain, "CUDAExecutionProvider"); }

}  // namespace cuda
}  // namespace edgeq
