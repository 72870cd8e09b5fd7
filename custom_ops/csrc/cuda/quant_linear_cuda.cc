// edgeq::QuantLinear on the CUDA execution provider: checks inputs on the host, then enqueues the per-token
// quantization and the integer GEMM (quant_linear_kernels.cu) on ORT's compute stream, with the quantized
// activations in scratch memory from ORT's allocator.
#include <cstdlib>
#include <cstring>
#include <string>

#include "../quant_linear.h"
#include "cuda_ops.h"
#include "quant_linear_kernels.h"

namespace edgeq {
namespace cuda {
namespace {

struct KernelChoice {
  const char* name;
  QlKernel kernel;
};
constexpr KernelChoice kChoices[] = {
    {"auto", QlKernel::kAuto},         {"decode", QlKernel::kDecode}, {"wgmma", QlKernel::kWgmma},
    {"mma", QlKernel::kMma},
    {"mma256", QlKernel::kMma256},     {"mma128", QlKernel::kMma128}, {"mma128x64", QlKernel::kMma128x64},
    {"mma64", QlKernel::kMma64},       {"cublas", QlKernel::kCublas}, {"triton", QlKernel::kTriton},
    {"generic", QlKernel::kGeneric}};

QlKernel KernelFromEnv(const std::string& where) {
  // EDGEQ_QL_KERNEL pins one GEMM kernel for tests and benchmarks; read when the session is created.
  const char* value = std::getenv("EDGEQ_QL_KERNEL");
  if (value == nullptr || *value == '\0') return QlKernel::kAuto;
  std::string known;
  for (const KernelChoice& c : kChoices) {
    if (std::strcmp(value, c.name) == 0) return c.kernel;
    known += std::string(known.empty() ? "" : ", ") + c.name;
  }
  throw InvalidArgument(where + ": EDGEQ_QL_KERNEL=" + value + " is not one of " + known);
}

// Device memory from the kernel context's allocator for the duration of one Compute. Every user of the
// arena runs on this one stream, so handing the block back right after enqueueing is safe.
struct Scratch {
  Scratch(Ort::KernelContext& ctx, size_t bytes, const std::string& where) {
    if (bytes == 0) return;
    Ort::ConstMemoryInfo b_memory = ctx.GetInput(1).GetTensorMemoryInfo();
    Ort::MemoryInfo cuda("Cuda", OrtArenaAllocator, b_memory.GetDeviceId(), OrtMemTypeDefault);
    allocator = ctx.GetAllocator(*static_cast<const OrtMemoryInfo*>(cuda));
    if (allocator == nullptr) throw std::runtime_error(where + ": no CUDA allocator for the quantized activations");
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
      : attrs(QlAttrs::FromKernelInfo(info)), choice(KernelFromEnv(attrs.where)) {
    const char* pinned = std::getenv("EDGEQ_QL_KERNEL");
    choice_name = pinned ? pinned : "auto";
    QuantLinearWarmUp();
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    return StatusFrom([&] {
      Ort::KernelContext ctx(raw);
      QlProblem p = PrepareQuantLinear(ctx, attrs);
      QlArgs args;
      args.half = p.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
      args.M = p.M;
      args.N = attrs.N;
      args.K = attrs.K;
      args.wbits = attrs.wbits;
      args.abits = attrs.abits;
      args.row_bytes = attrs.row_bytes;
      args.A = p.A;
      args.B = p.B;
      args.w_scales = p.w_scales;
      args.w_zero = p.w_zero;
      args.w_sum = p.w_sum;
      args.Y = p.Y;
      if (const char* problem = QuantLinearKernelProblem(args, choice))
        throw InvalidArgument(attrs.where + ": EDGEQ_QL_KERNEL=" + choice_name + ": " + problem +
                              " (M=" + std::to_string(args.M) + ", K=" + std::to_string(args.K) + ")");
      Scratch scratch(ctx, QuantLinearScratchBytes(args, choice), attrs.where);
      const char* error = LaunchQuantLinear(args, choice, ctx.GetGPUComputeStream(), scratch.data);
      if (error) throw std::runtime_error(attrs.where + ": CUDA launch failed: " + error);
    });
  }

  QlAttrs attrs;
  QlKernel choice;
  std::string choice_name;
};

struct Op : Ort::CustomOpBase<Op, Kernel, /*WithStatus=*/true> {
  Op() { OrtCustomOp::InferOutputShapeFn = InferQuantLinear; }
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return StatusFrom([&] { *kernel = new Kernel(info); });
  }
  const char* GetName() const { return kQuantLinear; }
  const char* GetExecutionProviderType() const { return "CUDAExecutionProvider"; }
  size_t GetInputTypeCount() const { return kQlInputs; }
  ONNXTensorElementDataType GetInputType(size_t index) const { return QlInputType(index); }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return QlInputCharacteristic(index);
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED; }
};

}  // namespace

void RegisterQuantLinear(Ort::CustomOpDomain& domain) {
  static Op quant_linear;
  domain.Add(&quant_linear);
}

}  // namespace cuda
}  // namespace edgeq
