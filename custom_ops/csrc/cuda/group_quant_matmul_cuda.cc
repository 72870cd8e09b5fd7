// edgeq::GroupQuantMatMul on the CUDA execution provider: checks inputs on the host, then enqueues the kernels
// (group_quant_matmul_kernels.cu) on the stream ORT computes on, so the op orders with its neighbours and can
// be captured in a CUDA graph.
#include <string>

#include "../group_quant_matmul.h"
#include "cuda_ops.h"
#include "cuda_scratch.h"
#include "group_quant_matmul_kernels.h"

namespace edgeq {
namespace cuda {
namespace {

GqmmKernel GqmmKernelFromEnv(const std::string& where) {
  static const char* const names[] = {"decode", "decode-rows", "decode-mma", "decode-h2", "gemm", "tiled", "generic"};
  static const GqmmKernel values[] = {GqmmKernel::kDecode,      GqmmKernel::kDecodeRows, GqmmKernel::kDecodeMma,
                                      GqmmKernel::kDecodeHalf2, GqmmKernel::kGemm,       GqmmKernel::kTiled,
                                      GqmmKernel::kGeneric};
  return KernelFromEnv("EDGEQ_GQMM_KERNEL", names, values, GqmmKernel::kAuto, where);
}

struct Kernel {
  explicit Kernel(const OrtKernelInfo* info)
      : attrs(GqmmAttrs::FromKernelInfo(info)), choice(GqmmKernelFromEnv(attrs.where)) {}

  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    return StatusFrom([&] {
      Ort::KernelContext ctx(raw);
      GqmmProblem p = PrepareGroupQuantMatMul(ctx, attrs);
      GqmmArgs args;
      args.half = p.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
      args.M = p.M;
      args.N = attrs.N;
      args.K = attrs.K;
      args.bits = attrs.bits;
      args.group_size = attrs.group_size;
      args.n_groups = attrs.n_groups;
      args.group_bytes = attrs.group_bytes;
      args.A = p.A;
      args.B = p.B;
      args.scales = p.scales;
      args.zero_points = p.zero_points;
      args.Y = p.Y;
      if (const char* refusal = GroupQuantMatMulRefusal(args, choice))
        throw InvalidArgument(attrs.where + ": EDGEQ_GQMM_KERNEL=" + GroupQuantMatMulKernelName(args, choice) + " " +
                              refusal + " (M=" + std::to_string(args.M) + ", K=" + std::to_string(args.K) + ")");
      Scratch scratch(ctx, /*input=*/1, GroupQuantMatMulScratchBytes(args, choice), attrs.where);
      const char* error = LaunchGroupQuantMatMul(args, choice, ctx.GetGPUComputeStream(), scratch.data);
      if (error) throw std::runtime_error(attrs.where + ": CUDA launch failed: " + error);
    });
  }

  GqmmAttrs attrs;
  GqmmKernel choice;
};

struct Op : Ort::CustomOpBase<Op, Kernel, /*WithStatus=*/true> {
  Op() { OrtCustomOp::InferOutputShapeFn = InferGroupQuantMatMul; }
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return StatusFrom([&] { *kernel = new Kernel(info); });
  }
  const char* GetName() const { return kGroupQuantMatMul; }
  const char* GetExecutionProviderType() const { return "CUDAExecutionProvider"; }
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

}  // namespace cuda
}  // namespace edgeq
