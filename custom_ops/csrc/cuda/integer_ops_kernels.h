// Launchers of the I-LLM integer ops on the GPU (integer_ops_kernels.cu). Plain C++ on purpose: shared by nvcc
// and by the op registration (integer_ops_cuda.cc), and nvcc cannot compile ORT's headers. The kernels call the
// same integer_math.h functions as the CPU ops, so both give the reference's bits.
#pragma once

#include <cstddef>
#include <cstdint>

#include "../integer_math.h"
#include "../integer_op_kind.h"

namespace edgeq {
namespace cuda {

enum class DiCode { kInt8, kUInt8, kInt16, kUInt16, kInt32 };

// The int32 dot products of DIMatMul and of DIBatchMatMul's trans_b=1: kAuto takes cuBLAS's int8 GEMM for
// more than 8 rows against one B when K and N are multiples of 4 (falling back to ours if cuBLAS refuses),
// else ours: a warp per weight row for up to 8 rows, a tiled kernel above. EDGEQ_DI_GEMM pins one (cublas: for
// any M where it fits, ours elsewhere). DIMatMul's int16 X (abits 9..15) takes cuBLAS as two int8 planes, x = 256 hi
// + lo, one GEMM each; at 16 bits, or for up to 8 rows, ours with dp2a.
enum class DiGemm { kAuto, kCublas, kRows, kTiled };

constexpr int kDiMaxRank = 8;

// An integer activation viewed as [rows, C]: codes and per-row mantissa/exponent.
struct DiTensor {
  const void* q = nullptr;
  DiCode code = DiCode::kInt8;
  const int32_t* m = nullptr;
  const int8_t* e = nullptr;
  int64_t rows = 0, C = 0;
};

// One call after the host checks: what an op does not use stays empty. Shapes are passed by value so the
// kernels can be captured in a CUDA graph (nothing is copied from the host per call).
struct DiArgs {
  DiOp op = DiOp::kMatMul;
  int64_t qmax = 0, clip_q8 = 0, is_causal = 0, eps_q60 = 0, interleaved = 0, trans_b = 0;
  int64_t abits = 8;               // DIMatMul: int16 X (abits > 8) of at most 15 bits may take cuBLAS as two planes
  int64_t hadamard = 0;            // DISwiGLU: the block of the Walsh-Hadamard rotation of the output row (0: none)
  int64_t clip_q15 = integer::kClipOne;  // DINorm, DISwiGLU, DIRequant: a learned clip of the output row's range
  DiTensor x, x2;                  // x2: DISwiGLU's up, DIAdd's B, DIBatchMatMul's B
  DiCode y_code = DiCode::kInt8;   // Y's codes: int8/int16 (DIMatMul, DIAdd), uint8/16 (softmax), int32 (batch matmul)
  void* y = nullptr;
  int32_t* y_m = nullptr;
  int8_t* y_e = nullptr;
  int32_t* y_z = nullptr;          // DINorm, DISwiGLU, DIRequant with act_sym=0: asymmetric codes, a zero point per row
  const int8_t* W = nullptr;       // DIMatMul [N, K]
  const int8_t* w_zero = nullptr;  // DIMatMul's per-channel weight zero points [N], or null
  const int32_t* x_zero = nullptr;  // DIMatMul's per-row input zero points [rows] with w_sum [N] = sum_k W, or null
  const int32_t* w_sum = nullptr;
  const int32_t* ch_m = nullptr;   // DIMatMul's w, DINorm's gamma
  const int8_t* ch_e = nullptr;
  // The scores' (DIClippedSoftmax: X's, DIBatchMatMul: Y's) shape, for the mask and the causal rule.
  int rank = 0;
  int64_t shape[kDiMaxRank] = {};
  const bool* mask = nullptr;
  int64_t mask_strides[kDiMaxRank] = {};
  // DIRotary: X [B, S, H, D], tables [P, D/2]; heads_first: Y [B, H, S, D]
  const int64_t* positions = nullptr;
  const int16_t* cos = nullptr;
  const int16_t* sin = nullptr;
  int64_t P = 0, S = 0, H = 0, D = 0;
  bool per_head_scales = false, heads_first = false, rotate = true;
  // DIRotary with a past cache (heads_first): its [B, H, past_len, D] rows copied ahead of the new ones
  DiTensor past;
  int64_t past_len = 0, B = 0;
  // DIBatchMatMul: A [groups, M, K]; group g uses B's batch sum_i (digit_i(g) / batch_group[i]) * b_strides[i] over
  // A's batch dims (batch_group: A's dim / B's, so B's dims of 1 and grouped-query heads map alike)
  int64_t M = 0, K = 0, N = 0, groups = 0;
  int batch_rank = 0;
  int64_t batch_dims[kDiMaxRank] = {}, batch_group[kDiMaxRank] = {}, b_strides[kDiMaxRank] = {};
  // DIRequant: rows of G merged into one (heads_first: X [B, G, S, D], MergedRowsOf; S above)
  int64_t G = 0;
};

// Device scratch one call needs (the int32 dot products, DIBatchMatMul's int64 context rows).
size_t IntegerOpScratchBytes(const DiArgs& args);

// Enqueues the op on `stream` (a cudaStream_t). Returns nullptr, or a static error text.
const char* LaunchIntegerOp(const DiArgs& args, DiGemm gemm, void* stream, void* scratch);

}  // namespace cuda
}  // namespace edgeq
