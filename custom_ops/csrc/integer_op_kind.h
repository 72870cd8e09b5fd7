// Which I-LLM integer op a kernel runs: shared by the ORT glue (integer_ops.h) and the CUDA launchers, which
// cannot include ORT's headers.
#pragma once

namespace edgeq {

enum class DiOp { kMatMul, kExp, kClippedSoftmax, kNorm, kSwiGLU, kRotary, kAdd, kBatchMatMul, kRequant };

}  // namespace edgeq
