// edgeq::GroupQuantMatMul on the CUDA execution provider: checks inputs on the host, then enqueues the kernels
// (group_quant_matmul_kernels.cu) on the stream ORT computes on, so the op orders with its neighbours and can
// be captured in a CUDA graph.
#include <cstdlib>
#include <cstring>
#include <string>

#include "../group_quant_matmul.h"
#include "cuda_ops.h"
#include "group_quant_matmul_kernels.h"

namespace edgeq {
namespace cuda {
namespace {

GqmmKernel KernelFromEnv(const std::string& where) {
  // EDGEQ_GQMM_KERNEL pins one kernel for tests and benchmarks; read when the session is created.
  const char* value = std::getenv("EDGEQ_GQMM_KERNEL");
  if (value == nullptr || *value == '\0' || std::strcmp(value, "auto") == 0) return GqmmKernel::kAuto;
  if (std::strcmp(value, "decode") == 0) return GqmmKernel::kDecode;
  if (std::strcmp(value, "tiled") == 0) return GqmmKernel::kTiled;
  if (std::strcmp(value, "generic") == 0) return GqmmKernel::kGeneric;
  if (std::strcmp(value, "gemm") == 0) return GqmmKernel::kGemm;
  if (std::strcmp(value, "decode-rows") == 0) return GqmmKernel::kDecodeRows;
  throw InvalidArgument(where + ": EDGEQ_GQMM_KERNEL=" + value +
                        " is not one of auto, decode, decode-rows, gemm, tiled, generic");
}

// Device memory from the kernel context's allocator for the duration of one Compute.
struct Scratch {
  Scratch(Ort::KernelContext& ctx, size_t bytes, const std::string& where) {
    if (bytes == 0) return;
    Ort::ConstMemoryInfo b_memory = ctx.GetInput(1).GetTensorMemoryInfo();
    Ort::MemoryInfo cuda("Cuda", OrtArenaAllocator, b_memory.GetDeviceId(), OrtMemTypeDefault);
    allocator = ctx.GetAllocator(*static_cast<const OrtMemoryInfo*>(cuda));
    if (allocator == nullptr) throw std::runtime_error(where + ": no CUDA allocator for the scratch buffer");
    data = allocator->Alloc(allocator, bytes);
    if (data == nullptr) throw std::runtime_error(where + ": could not allocate " + std::to_string(bytes) + " bytes");
  }
  ~Scratch() {
    if (allocator == nullptr) return;
    if (data) allocator->Free(allocator, data);
    Ort::GetApi().ReleaseAllocator(allocator);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  OrtAllocator* allocator = nullptr;
  void* data = nullptr;
};

struct Kernel {
  explicit Kernel(const OrtKernelInfo* info)
      : attrs(GqmmAttrs::FromKernelInfo(info)), choice(KernelFromEnv(attrs.where)) {}

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
      if ((choice == GqmmKernel::kDecode || choice == GqmmKernel::kDecodeRows) && (args.M > 8 || args.K % 128 != 0))
        throw InvalidArgument(attrs.where + ": EDGEQ_GQMM_KERNEL=decode needs M <= 8 and K % 128 == 0, got M=" +
                              std::to_string(args.M) + ", K=" + std::to_string(args.K));
      // The gemm kernel's dequantized W comes from ORT's allocator for the input's device; the arena may hand
      // it to the next kernel right after we enqueue, which is safe because every user runs on this one stream.
      Scratch scratch(ctx, GroupQuantMatMulScratchBytes(args, choice), attrs.where);
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
}

}  // namespace cuda
}  // namespace edgeq
