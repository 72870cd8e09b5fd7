// The I-LLM integer ops on the GPU. Every row-wise op runs a block per row in the CPU op's order of steps: the
// row's reductions (max, min, sums: exact in integers, so their order does not matter) over the block, then
// each element computed again from the row's plan. All math is integer_math.h's, shared with the CPU kernels, so
// the bits are the reference's. The int32 dot products of DIMatMul and DIBatchMatMul come first, from cuBLAS's
// int8 GEMM or from the dp4a kernels here (exact either way: the sums fit int32 by the ops' bounds on K).
#include "integer_ops_kernels.h"

#include <cuda_runtime.h>

#include <climits>
#include <type_traits>

#include "../integer_math.h"
#include "cublas_gemm.h"

namespace edgeq {
namespace cuda {
namespace {

using namespace integer;

constexpr int kThreads = 256;

size_t Align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

struct MaxOp {
  __device__ int64_t operator()(int64_t a, int64_t b) const { return a > b ? a : b; }
};
struct MinOp {
  __device__ int64_t operator()(int64_t a, int64_t b) const { return a < b ? a : b; }
};
struct SumOp {
  __device__ int64_t operator()(int64_t a, int64_t b) const { return a + b; }
};

// The reduction of every thread's v over the block, returned to every thread.
template <typename Op>
__device__ int64_t BlockReduce(int64_t v, Op op) {
  __shared__ int64_t partial[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v = op(v, static_cast<int64_t>(__shfl_xor_sync(0xffffffffu, static_cast<long long>(v), o)));
  __syncthreads();  // the previous reduction's readers are done with `partial`
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
  __syncthreads();
  v = partial[0];
  for (int w = 1; w < kThreads / 32; ++w) v = op(v, partial[w]);
  return v;
}

// How a row is spread over the blocks of blockIdx.y (gridDim.y of them). A few long rows (decode: one token
// against 11008 channels) would leave the GPU idle at a block per row, so they take two launches: kPartials, each
// block the min and max of its chunk of the row's values; kFinish, each block the row's plan from every chunk's
// (the same in each block) and its chunk's codes. kWhole: one block per row, one launch.
enum class SplitMode { kWhole, kPartials, kFinish };

struct Split {
  SplitMode mode = SplitMode::kWhole;
  int64_t* partial = nullptr;  // [rows, gridDim.y, 2]: each chunk's min and max
};

// This block's chunk [c0, c1) of a row of n values.
__device__ void Chunk(int64_t n, int64_t& c0, int64_t& c1) {
  const int64_t per = (n + gridDim.y - 1) / gridDim.y;
  c0 = Min(n, int64_t(blockIdx.y) * per);
  c1 = Min(n, c0 + per);
}

template <typename Code>
__device__ void ZeroRow(Code* q, int64_t n, int32_t* m, int8_t* e, const Split& split = Split(), int32_t* z = nullptr) {
  if (split.mode == SplitMode::kPartials) return;
  int64_t c0, c1;
  Chunk(n, c0, c1);
  for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x) q[c] = 0;
  if (threadIdx.x == 0 && blockIdx.y == 0) {
    *m = int32_t(kZeroM);
    *e = int8_t(kZeroE);
    if (z != nullptr) *z = 0;
  }
}

// The row's min and max value (kWhole), or this chunk's written to the partials (kPartials: returns false, the
// block is done), or every chunk's from the partials (kFinish).
template <typename Value>
__device__ bool RowRange(const Value& value, int64_t n, int64_t r, const Split& split, int64_t& lo, int64_t& hi) {
  lo = LLONG_MAX, hi = LLONG_MIN;
  if (split.mode == SplitMode::kFinish) {
    const int64_t* partial = split.partial + int64_t(r) * gridDim.y * 2;
    for (int64_t i = threadIdx.x; i < gridDim.y; i += blockDim.x) {
      lo = Min(lo, partial[2 * i]);
      hi = Max(hi, partial[2 * i + 1]);
    }
  } else {
    int64_t c0, c1;
    Chunk(n, c0, c1);
    for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x) {
      const int64_t v = value(c);
      lo = Min(lo, v);
      hi = Max(hi, v);
    }
  }
  lo = BlockReduce(lo, MinOp());
  hi = BlockReduce(hi, MaxOp());
  if (split.mode != SplitMode::kPartials) return true;
  if (threadIdx.x == 0) {
    int64_t* partial = split.partial + (int64_t(r) * gridDim.y + blockIdx.y) * 2;
    partial[0] = lo;
    partial[1] = hi;
  }
  return false;
}

// DynQuantRow of row r's values value(0..n-1) * mult * 2^-E, spread over the block (or the blocks of `split`);
// DynQuantAsymRow's bits (codes of bitlen(qmax) + 1 bits and the row's zero point into *z) when z is given.
template <typename Code, typename Value>
__device__ void QuantizeRow(const Value& value, int64_t n, int64_t mult, int64_t E, int64_t qmax, Code* q, int32_t* m,
                            int8_t* e, int64_t r, const Split& split, int64_t clip_q15 = kClipOne, int32_t* z = nullptr) {
  int64_t lo, hi;
  if (!RowRange(value, n, r, split, lo, hi)) return;
  int64_t c0, c1;
  Chunk(n, c0, c1);
  if (z != nullptr) {
    lo = Min(lo, 0);
    hi = Max(hi, 0);
    const int64_t sh = AsymShift(lo, hi);
    const AsymPlan plan = PlanDynQuantAsym(RShr(lo, sh), RShr(hi, sh), sh, mult, E, AsymBits(qmax));
    for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x) q[c] = Code(DynQuantAsymCode(RShr(value(c), sh), plan));
    if (threadIdx.x == 0 && blockIdx.y == 0) {
      *m = int32_t(plan.scale.m);
      *e = int8_t(plan.scale.e);
      *z = int32_t(AsymZero(plan));
    }
    return;
  }
  const int64_t A = Max(Abs(lo), Abs(hi));
  if (A == 0) return ZeroRow(q, n, m, e, split);
  const int64_t sh = DynQuantShift(A);
  const QuantPlan plan = PlanDynQuant(Max(RShr(hi, sh), -RShr(lo, sh)), sh, mult, E, qmax, clip_q15);
  for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x) q[c] = Code(DynQuantCode(RShr(value(c), sh), plan));
  if (threadIdx.x == 0 && blockIdx.y == 0) {
    *m = int32_t(plan.scale.m);
    *e = int8_t(plan.scale.e);
  }
}

// WideQuantRow of row r's values value(0..n-1) * mult * 2^-E, as QuantizeRow.
template <typename Value>
__device__ void WideRow(const Value& value, int64_t n, int64_t mult, int64_t E, int32_t* y, int32_t* m, int8_t* e,
                        int64_t r, const Split& split) {
  int64_t lo, hi;
  if (!RowRange(value, n, r, split, lo, hi)) return;
  const int64_t A = Max(Abs(lo), Abs(hi));
  if (A == 0) return ZeroRow(y, n, m, e, split);
  const int64_t sh = WideQuantShift(A);
  const Scale s = WideQuantScale(sh, mult, E);
  int64_t c0, c1;
  Chunk(n, c0, c1);
  for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x) y[c] = s.zero ? 0 : int32_t(RShr(value(c), sh));
  if (threadIdx.x == 0 && blockIdx.y == 0) {
    *m = int32_t(s.m);
    *e = int8_t(s.e);
  }
}

// The common exponent of e[i] over i in [0, n) with keep(i) (AlignExponentsWhere); any = false when none is kept.
template <typename Keep>
__device__ int64_t BlockAlign(const int8_t* e, int64_t n, const Keep& keep, bool& any, int64_t stride = 1) {
  int64_t lo = LLONG_MAX, hi = LLONG_MIN;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
    if (keep(i)) {
      lo = Min(lo, e[i * stride]);
      hi = Max(hi, e[i * stride]);
    }
  lo = BlockReduce(lo, MinOp());
  hi = BlockReduce(hi, MaxOp());
  any = hi != LLONG_MIN;
  return any ? Min(hi, lo + kAlignWindow) : 0;
}

__device__ int64_t BlockAlignAll(const int8_t* e, int64_t n, int64_t stride = 1) {
  bool any;
  return BlockAlign(e, n, [](int64_t) { return true; }, any, stride);
}

// Row r's mask row and its step along the last dim (MaskRow of the CPU op), for scores of args.shape.
__device__ const bool* MaskRow(const DiArgs& a, int64_t r, int64_t& step) {
  step = 0;
  if (a.mask == nullptr) return nullptr;
  const bool* mask = a.mask;
  for (int d = a.rank - 2; d >= 0; --d) {
    mask += (r % a.shape[d]) * a.mask_strides[d];
    r /= a.shape[d];
  }
  step = a.mask_strides[a.rank - 1];
  return mask;
}

// B's flat batch index for A's batch (group) g.
__device__ int64_t BatchOf(const DiArgs& a, int64_t g) {
  int64_t b = 0;
  for (int i = a.batch_rank - 1; i >= 0; --i) {
    b += (g % a.batch_dims[i]) / a.batch_group[i] * a.b_strides[i];
    g /= a.batch_dims[i];
  }
  return b;
}

// ---------------------------------------------------------------------------------------------------------
// int32 dot products: acc[g][m][n] = sum_k X[g][m][k] * W[batch(g)][n][k]

struct Dots {
  const void* X;  // int8 (uint8: NaiveDots only; int16: DIMatMul at abits > 8) [groups, M, K]
  const int8_t* W;  // [batches, N, K]
  int32_t* acc;   // [groups, M, N]
  int64_t groups, M, N, K;
};

// Up to 8 activation rows: a warp per weight row, 16-byte loads when K is a multiple of 16.
constexpr int kRowsPerPass = 8;

// Four products of int8 x codes (a word) or int16 ones (two words: k, k+1 | k+2, k+3) with a word of four weights.
__device__ int Dot4(int x, int w, int sum) { return __dp4a(x, w, sum); }
__device__ int Dot4(int2 x, int w, int sum) { return __dp2a_hi(x.y, w, __dp2a_lo(x.x, w, sum)); }

// int16 X codes: __dp2a on pairs of codes (each sum exact: the op's K bound holds every partial sum below 2^31).
template <typename X>
__global__ void __launch_bounds__(kThreads) RowsDots(Dots d, DiArgs a) {
  const int64_t g = blockIdx.y;
  const int lane = threadIdx.x & 31;
  const int64_t n = int64_t(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5);
  if (n >= d.N) return;
  const X* x_group = static_cast<const X*>(d.X) + g * d.M * d.K;
  const int8_t* w = d.W + (BatchOf(a, g) * d.N + n) * d.K;
  const bool vec = d.K % 16 == 0;
  for (int64_t m0 = 0; m0 < d.M; m0 += kRowsPerPass) {
    const int rows = int(Min(kRowsPerPass, d.M - m0));
    int sum[kRowsPerPass] = {};
    if (vec) {
      for (int64_t k = int64_t(lane) * 16; k < d.K; k += 32 * 16) {
        const int4 wv = *reinterpret_cast<const int4*>(w + k);
#pragma unroll
        for (int i = 0; i < kRowsPerPass; ++i) {
          if (i >= rows) break;
          const X* x = x_group + (m0 + i) * d.K + k;
          if constexpr (sizeof(X) == 1) {
            const int4 xv = *reinterpret_cast<const int4*>(x);
            sum[i] = Dot4(xv.x, wv.x, Dot4(xv.y, wv.y, Dot4(xv.z, wv.z, Dot4(xv.w, wv.w, sum[i]))));
          } else {
            const int4 lo = *reinterpret_cast<const int4*>(x), hi = *reinterpret_cast<const int4*>(x + 8);
            sum[i] = Dot4(make_int2(lo.x, lo.y), wv.x, Dot4(make_int2(lo.z, lo.w), wv.y, sum[i]));
            sum[i] = Dot4(make_int2(hi.x, hi.y), wv.z, Dot4(make_int2(hi.z, hi.w), wv.w, sum[i]));
          }
        }
      }
    } else {
      for (int64_t k = lane; k < d.K; k += 32) {
        const int wk = w[k];
#pragma unroll
        for (int i = 0; i < kRowsPerPass; ++i)
          if (i < rows) sum[i] += int(x_group[(m0 + i) * d.K + k]) * wk;
      }
    }
#pragma unroll
    for (int i = 0; i < kRowsPerPass; ++i) {
      if (i >= rows) break;
      int s = sum[i];
      for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
      if (lane == 0) d.acc[(g * d.M + m0 + i) * d.N + n] = s;
    }
  }
}

// Any M: 64 x 64 tiles of 16 x 16 threads, 4 x 4 outputs each, K in steps of 32 bytes through shared memory.
constexpr int kTile = 64, kTileK = 32, kTileWords = kTileK / 4;

__device__ int PackBytes(const int8_t* row, int64_t k, int64_t K) {
  uint32_t word = 0;
#pragma unroll
  for (int b = 0; b < 4; ++b)
    if (k + b < K) word |= uint32_t(uint8_t(row[k + b])) << (8 * b);
  return int(word);
}

// Two int16 codes k, k + 1 of a row as one word (zeros past K).
__device__ int PackHalves(const int16_t* row, int64_t k, int64_t K) {
  const uint32_t lo = k < K ? uint16_t(row[k]) : 0u, hi = k + 1 < K ? uint16_t(row[k + 1]) : 0u;
  return int(lo | (hi << 16));
}

// X int8 (a word per 4 codes) or int16 (two words per 4 codes, Dot4's int2).
template <typename X>
__global__ void __launch_bounds__(kThreads) TiledDots(Dots d, DiArgs a) {
  constexpr int kXWords = kTileWords * int(sizeof(X));  // words of a row's kTileK codes
  __shared__ int xs[kTile][kXWords + 1], ws[kTile][kTileWords + 1];
  const int64_t g = blockIdx.z;
  const int64_t m_base = int64_t(blockIdx.y) * kTile, n_base = int64_t(blockIdx.x) * kTile;
  const X* Xg = static_cast<const X*>(d.X) + g * d.M * d.K;
  const int8_t* W = d.W + BatchOf(a, g) * d.N * d.K;
  const int t = threadIdx.x, ty = t / 16, tx = t % 16;
  const int load_row = t / 4, load_word = (t % 4) * 2;  // each thread loads two words of W, two or four of X
  int acc[4][4] = {};
  for (int64_t k0 = 0; k0 < d.K; k0 += kTileK) {
    const int64_t m = m_base + load_row, n = n_base + load_row;
    for (int w = 0; w < 2; ++w) {
      const int64_t k = k0 + int64_t(load_word + w) * 4;
      ws[load_row][load_word + w] = n < d.N ? PackBytes(W + n * d.K, k, d.K) : 0;
      if constexpr (sizeof(X) == 1) {
        xs[load_row][load_word + w] = m < d.M ? PackBytes(Xg + m * d.K, k, d.K) : 0;
      } else {
        xs[load_row][2 * (load_word + w)] = m < d.M ? PackHalves(Xg + m * d.K, k, d.K) : 0;
        xs[load_row][2 * (load_word + w) + 1] = m < d.M ? PackHalves(Xg + m * d.K, k + 2, d.K) : 0;
      }
    }
    __syncthreads();
#pragma unroll
    for (int kw = 0; kw < kTileWords; ++kw) {
      int wv[4];
      std::conditional_t<sizeof(X) == 1, int, int2> xv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        if constexpr (sizeof(X) == 1) xv[i] = xs[ty * 4 + i][kw];
        else xv[i] = make_int2(xs[ty * 4 + i][2 * kw], xs[ty * 4 + i][2 * kw + 1]);
        wv[i] = ws[tx * 4 + i][kw];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = Dot4(xv[i], wv[j], acc[i][j]);
    }
    __syncthreads();
  }
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      const int64_t m = m_base + ty * 4 + i, n = n_base + tx * 4 + j;
      if (m < d.M && n < d.N) d.acc[(g * d.M + m) * d.N + n] = acc[i][j];
    }
}

// Scores of uint8 A (probabilities against keys: not met in our graphs, allowed by the op): a thread per dot.
__global__ void NaiveDots(Dots d, DiArgs a) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= d.groups * d.M * d.N) return;
  const int64_t n = i % d.N, row = i / d.N, g = row / d.M;
  const uint8_t* x = static_cast<const uint8_t*>(d.X) + row * d.K;
  const int8_t* w = d.W + (BatchOf(a, g) * d.N + n) * d.K;
  int32_t sum = 0;
  for (int64_t k = 0; k < d.K; ++k) sum += int32_t(x[k]) * int32_t(w[k]);
  d.acc[i] = sum;
}

// int16 codes of at most 15 bits as two int8 planes, x = 256 hi + lo with lo = ((x + 128) mod 256) - 128, so that
// cuBLAS's int8 GEMM takes them: |x| <= 2^14 keeps |hi| <= 64.
__global__ void SplitInt16(const int16_t* x, int64_t n, int8_t* hi, int8_t* lo) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int v = x[i], l = ((v + 128) & 255) - 128;
    lo[i] = int8_t(l);
    hi[i] = int8_t((v - l) / 256);
  }
}

// acc = 256 acc_hi + acc_lo: the true x.w, within int32 by the op's K bound (the halves' sum is exact in int64).
__global__ void JoinPlanes(int32_t* acc, const int32_t* acc_hi, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    acc[i] = int32_t(int64_t(acc_hi[i]) * 256 + acc[i]);
}

// DIMatMul's scratch: its int32 products [rows, N] (AccBytes), then, for int16 X of more rows than the rows kernel
// takes, the two int8 planes of X and the hi products that cuBLAS may compute instead (PlanesBytes; 0 otherwise).
size_t AccBytes(const DiArgs& a) { return Align256(size_t(a.x.rows) * size_t(a.N) * sizeof(int32_t)); }

size_t PlanesBytes(const DiArgs& a) {
  if (a.x.code != DiCode::kInt16 || a.x.rows <= kRowsPerPass) return 0;
  return 2 * Align256(size_t(a.x.rows) * size_t(a.K)) + size_t(a.x.rows) * size_t(a.N) * sizeof(int32_t);
}

const char* LaunchDots(const Dots& d, const DiArgs& a, DiCode x_code, DiGemm gemm, cudaStream_t stream,
                       void* split_scratch = nullptr) {
  if (x_code == DiCode::kUInt8) {
    const int64_t total = d.groups * d.M * d.N;
    NaiveDots<<<unsigned((total + kThreads - 1) / kThreads), kThreads, 0, stream>>>(d, a);
    return nullptr;
  }
  // No cuBLAS GEMM multiplies int16 by int8: int16 codes of at most 15 bits take two int8 GEMMs of their planes.
  const bool x16 = x_code == DiCode::kInt16;
  const bool cublas_fits = (!x16 || (split_scratch != nullptr && a.abits <= 15)) && d.groups == 1 && d.K % 4 == 0 &&
                           d.N % 4 == 0 && d.K <= INT_MAX && d.N <= INT_MAX && d.M <= INT_MAX;
  if (cublas_fits && (gemm == DiGemm::kCublas || (gemm == DiGemm::kAuto && d.M > kRowsPerPass && CublasAvailable()))) {
    const char* error = nullptr;
    if (!x16) {
      error = CublasGemmInt8(static_cast<const int8_t*>(d.X), d.W, d.acc, int(d.M), int(d.N), int(d.K), stream);
    } else {
      const size_t plane = Align256(size_t(d.M) * size_t(d.K));  // PlanesBytes' layout
      int8_t* hi = static_cast<int8_t*>(split_scratch);
      int8_t* lo = hi + plane;
      int32_t* acc_hi = reinterpret_cast<int32_t*>(lo + plane);
      const int64_t n_x = d.M * d.K, n_y = d.M * d.N;
      SplitInt16<<<unsigned(Min(4096, (n_x + kThreads - 1) / kThreads)), kThreads, 0, stream>>>(
          static_cast<const int16_t*>(d.X), n_x, hi, lo);
      error = CublasGemmInt8(hi, d.W, acc_hi, int(d.M), int(d.N), int(d.K), stream);
      if (error == nullptr) error = CublasGemmInt8(lo, d.W, d.acc, int(d.M), int(d.N), int(d.K), stream);
      if (error == nullptr)
        JoinPlanes<<<unsigned(Min(4096, (n_y + kThreads - 1) / kThreads)), kThreads, 0, stream>>>(d.acc, acc_hi,
                                                                                                           n_y);
    }
    if (error == nullptr || gemm == DiGemm::kCublas) return error;
  }
  if (gemm == DiGemm::kRows || (gemm != DiGemm::kTiled && d.M <= kRowsPerPass)) {
    const dim3 grid(unsigned((d.N + kThreads / 32 - 1) / (kThreads / 32)), unsigned(d.groups));
    if (x16) RowsDots<int16_t><<<grid, kThreads, 0, stream>>>(d, a);
    else RowsDots<int8_t><<<grid, kThreads, 0, stream>>>(d, a);
  } else {
    const dim3 grid(unsigned((d.N + kTile - 1) / kTile), unsigned((d.M + kTile - 1) / kTile), unsigned(d.groups));
    if (x16) TiledDots<int16_t><<<grid, kThreads, 0, stream>>>(d, a);
    else TiledDots<int8_t><<<grid, kThreads, 0, stream>>>(d, a);
  }
  return nullptr;
}

// ---------------------------------------------------------------------------------------------------------
// The row ops

template <typename X, typename Code>
__global__ void __launch_bounds__(kThreads) MatMulRows(DiArgs a, const int32_t* acc, Split split) {
  const int64_t r = blockIdx.x, N = a.N;
  const int64_t Ea = BlockAlignAll(a.ch_e, N);
  const int32_t* row = acc + r * N;
  // Asymmetric grids: sum_k (x - xz)(W - wz) = x.W - wz * sum(x) - xz * (sum(W) - K * wz); every block of the row
  // sums x itself.
  int64_t x_sum = 0;
  if (a.w_zero != nullptr) {
    const X* x = static_cast<const X*>(a.x.q) + r * a.K;
    for (int64_t k = threadIdx.x; k < a.K; k += blockDim.x) x_sum += x[k];
    x_sum = BlockReduce(x_sum, SumOp());
  }
  const int64_t xz = a.x_zero != nullptr ? a.x_zero[r] : 0;
  auto value = [&](int64_t n) {
    const int64_t wz = a.w_zero != nullptr ? a.w_zero[n] : 0;
    int64_t dot = int64_t(row[n]) - wz * x_sum;
    if (a.x_zero != nullptr) dot -= xz * (int64_t(a.w_sum[n]) - a.K * wz);
    return ShiftBy(dot * a.ch_m[n], Ea - a.ch_e[n]);
  };
  QuantizeRow(value, N, a.x.m[r], a.x.e[r] + Ea, a.qmax, static_cast<Code*>(a.y) + r * N, a.y_m + r, a.y_e + r, r,
              split);
}

__global__ void __launch_bounds__(kThreads) ExpRows(DiArgs a) {
  const int64_t r = blockIdx.x, C = a.x.C;
  const int8_t* q = static_cast<const int8_t*>(a.x.q) + r * C;
  int8_t* y = static_cast<int8_t*>(a.y) + r * C;
  int64_t top = LLONG_MIN;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) top = Max(top, q[c]);
  top = BlockReduce(top, MaxOp());
  const int64_t m = a.x.m[r], e = a.x.e[r];
  const Scale s = ExpScale(top, m, e, a.qmax);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
    y[c] = s.zero ? 0 : int8_t(RShr(Exp2Neg(ExpArg((top - q[c]) * m, e)) * a.qmax, 30));
  if (threadIdx.x == 0) {
    a.y_m[r] = int32_t(s.m);
    a.y_e[r] = int8_t(s.e);
  }
}

template <typename T, typename P>
__global__ void __launch_bounds__(kThreads) SoftmaxRows(DiArgs a) {
  const int64_t r = blockIdx.x, C = a.x.C;
  const int64_t Sq = a.rank >= 2 ? a.shape[a.rank - 2] : 1;
  const T* q = static_cast<const T*>(a.x.q) + r * C;
  P* y = static_cast<P*>(a.y) + r * C;
  int64_t step;
  const bool* mask = MaskRow(a, r, step);
  const int64_t last_visible = a.is_causal ? r % Sq + C - Sq : C - 1;
  auto visible = [&](int64_t j) { return j <= last_visible && (mask == nullptr || mask[j * step]); };
  int64_t top = LLONG_MIN;
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x)
    if (visible(j)) top = Max(top, q[j]);
  top = BlockReduce(top, MaxOp());
  if (top == LLONG_MIN) return ZeroRow(y, C, a.y_m + r, a.y_e + r);
  const int64_t m = a.x.m[r], e = a.x.e[r];
  int64_t amax = 0;
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x)
    if (visible(j)) amax = Max(amax, (top - q[j]) * m);
  amax = BlockReduce(amax, MaxOp());
  const int64_t pre = Max(0, BitLen(uint64_t(amax)) - 31);
  const int64_t tc = a.clip_q8 ? RShr(a.clip_q8 * kLog2eQ30, 30 + 8 - kExpFrac) : kExpCap;
  int64_t S = 0;
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
    int64_t p = 0;
    if (visible(j)) {
      const int64_t t = ShiftCapped(RShr((top - q[j]) * m, pre) * kLog2eQ30, 30 + e - kExpFrac - pre, kExpCap);
      p = Exp2Neg(Min(t, tc));
    }
    S += p;
    y[j] = P(RShr(p * a.qmax, 30));
  }
  S = BlockReduce(S, SumOp());
  const Dyadic d = Ratio(uint64_t(kOneQ30), uint64_t(S) * uint64_t(a.qmax));
  const Scale s = Finish(d.m, d.e);
  if (s.zero)
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) y[j] = 0;
  if (threadIdx.x == 0) {
    a.y_m[r] = int32_t(s.m);
    a.y_e[r] = int8_t(s.e);
  }
}

template <typename X, typename Code>
__global__ void __launch_bounds__(kThreads) NormRows(DiArgs a, Split split) {
  const int64_t r = blockIdx.x, C = a.x.C;
  const X* q = static_cast<const X*>(a.x.q) + r * C;
  Code* y = static_cast<Code*>(a.y) + r * C;
  int64_t ss = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) ss += int64_t(q[c]) * q[c];
  ss = BlockReduce(ss, SumOp());
  const int64_t Ea = BlockAlignAll(a.ch_e, C);
  if (ss == 0) return ZeroRow(y, C, a.y_m + r, a.y_e + r, split, a.y_z ? a.y_z + r : nullptr);  // zeros in, zeros out
  const int64_t m = a.x.m[r], e = a.x.e[r];
  const Dyadic rms = RmsScale(ss, C, m, e, a.eps_q60);
  const Dyadic factor = Ratio(uint64_t(m), uint64_t(rms.m));
  auto value = [&](int64_t c) { return ShiftBy(int64_t(q[c]) * a.ch_m[c], Ea - a.ch_e[c]); };
  QuantizeRow(value, C, factor.m, Ea + factor.e + e - rms.e, a.qmax, y, a.y_m + r, a.y_e + r, r, split, a.clip_q15,
              a.y_z ? a.y_z + r : nullptr);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) SwiGLURows(DiArgs a, Split split) {
  const int64_t r = blockIdx.x, C = a.x.C;
  const T* g = static_cast<const T*>(a.x.q) + r * C;
  const T* u = static_cast<const T*>(a.x2.q) + r * C;
  const int64_t gm = a.x.m[r], ge = a.x.e[r];
  auto value = [&](int64_t c) { return int64_t(g[c]) * SigmoidQ30(g[c], gm, ge) * u[c]; };
  QuantizeRow(value, C, gm * a.x2.m[r], ge + a.x2.e[r] + 30, a.qmax, static_cast<int8_t*>(a.y) + r * C, a.y_m + r,
              a.y_e + r, r, split, a.clip_q15, a.y_z ? a.y_z + r : nullptr);
}

// DISwiGLU with hadamard: a block per row, its values in the scratch row v (global memory; the butterflies of each
// stage read what the previous stage wrote, after a block barrier), HadamardShift and HadamardBlocks' pairs in the
// same order of stages, then the row's codes as SwiGLURows has them.
template <typename T>
__global__ void __launch_bounds__(kThreads) RotatedSwiGLURows(DiArgs a, int64_t* scratch) {
  const int64_t r = blockIdx.x, C = a.x.C, B = a.hadamard;
  const T* g = static_cast<const T*>(a.x.q) + r * C;
  const T* u = static_cast<const T*>(a.x2.q) + r * C;
  int64_t* v = scratch + r * C;
  const int64_t gm = a.x.m[r], ge = a.x.e[r];
  int64_t A = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    v[c] = int64_t(g[c]) * SigmoidQ30(g[c], gm, ge) * u[c];
    A = Max(A, Abs(v[c]));
  }
  A = BlockReduce(A, MaxOp());
  const int64_t sh = HadamardShift(A, B);
  for (int64_t c = threadIdx.x; c < C && sh > 0; c += blockDim.x) v[c] = RShr(v[c], sh);
  __syncthreads();
  for (int64_t h = 1; h < B; h *= 2) {
    for (int64_t p = threadIdx.x; p < C / 2; p += blockDim.x) {  // pair p: j = (p / h) 2h + p mod h, and j + h
      const int64_t j = p / h * 2 * h + p % h, x = v[j], y = v[j + h];
      v[j] = x + y;
      v[j + h] = x - y;
    }
    __syncthreads();
  }
  QuantizeRow([&](int64_t c) { return v[c]; }, C, gm * a.x2.m[r], ge + a.x2.e[r] + 30 - sh, a.qmax,
              static_cast<int8_t*>(a.y) + r * C, a.y_m + r, a.y_e + r, r, Split(), a.clip_q15,
              a.y_z ? a.y_z + r : nullptr);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) RotaryRows(DiArgs a) {
  const int64_t r = blockIdx.x, D = a.D, half = D / 2;  // r = (b * S + s) * H + h
  const T* q = static_cast<const T*>(a.x.q) + r * D;
  const int64_t token = r / a.H, scale = a.per_head_scales ? r : token;
  if (!a.rotate) {  // the layout alone: codes as they are, the token's scale for each head
    const int64_t out = RotaryOutputRow(r, a.S, a.H, a.heads_first, a.past_len);
    int8_t* y = static_cast<int8_t*>(a.y) + out * D;
    for (int64_t c = threadIdx.x; c < D; c += blockDim.x) y[c] = int8_t(q[c]);  // int8 X only (host check)
    if (threadIdx.x == 0) {
      a.y_m[out] = a.x.m[scale];
      a.y_e[out] = a.x.e[scale];
    }
    return;
  }
  // The host cannot read device positions: one outside the tables reads the nearest row (the CPU op refuses it).
  const int64_t pos = Min(Max(a.positions[token], 0), a.P - 1);
  const int16_t* cs = a.cos + pos * half;
  const int16_t* sn = a.sin + pos * half;
  auto value = [&](int64_t c) {
    const bool second = a.interleaved ? (c & 1) : c >= half;
    const int64_t i = a.interleaved ? c / 2 : (second ? c - half : c);
    const int64_t ia = a.interleaved ? 2 * i : i, ib = a.interleaved ? 2 * i + 1 : i + half;
    return second ? int64_t(q[ib]) * cs[i] + int64_t(q[ia]) * sn[i] : int64_t(q[ia]) * cs[i] - int64_t(q[ib]) * sn[i];
  };
  const int64_t out = RotaryOutputRow(r, a.S, a.H, a.heads_first, a.past_len);
  QuantizeRow(value, D, a.x.m[scale], a.x.e[scale] + kRopeFrac, a.qmax, static_cast<int8_t*>(a.y) + out * D,
              a.y_m + out, a.y_e + out, r, Split());
}

template <typename TA, typename TB, typename TY>
__global__ void __launch_bounds__(kThreads) AddRows(DiArgs a, Split split) {
  const int64_t r = blockIdx.x, C = a.x.C;
  constexpr int64_t window = sizeof(TA) == 1 && sizeof(TB) == 1 ? kAddWindow : kAddWindow16;
  const TA* qa = static_cast<const TA*>(a.x.q) + r * C;
  const TB* qb = static_cast<const TB*>(a.x2.q) + r * C;
  const int64_t ma = a.x.m[r], ea = a.x.e[r], mb = a.x2.m[r], eb = a.x2.e[r];
  const int64_t E = Min(Max(ea, eb), Min(ea, eb) + window);
  auto value = [&](int64_t c) { return ShiftBy(qa[c] * ma, E - ea) + ShiftBy(qb[c] * mb, E - eb); };
  QuantizeRow(value, C, 1, E, a.qmax, static_cast<TY*>(a.y) + r * C, a.y_m + r, a.y_e + r, r, split);
}

// DIBatchMatMul trans_b=1 after the dots: aligned over the visible keys, then the wide requantization.
__global__ void __launch_bounds__(kThreads) ScoresRows(DiArgs a, const int32_t* acc, Split split) {
  const int64_t r = blockIdx.x, N = a.N;
  const int64_t batch = BatchOf(a, r / a.M);
  const int32_t* bm = a.x2.m + batch * N;
  const int8_t* be = a.x2.e + batch * N;
  int64_t step;
  const bool* mask = MaskRow(a, r, step);
  const int64_t last_visible = a.is_causal ? r % a.M + N - a.M : N - 1;
  auto visible = [&](int64_t n) { return n <= last_visible && (mask == nullptr || mask[n * step]); };
  bool any;
  const int64_t Ea = BlockAlign(be, N, visible, any);
  int32_t* y = static_cast<int32_t*>(a.y) + r * N;
  if (!any) return ZeroRow(y, N, a.y_m + r, a.y_e + r, split);
  const int32_t* row = acc + r * N;
  auto value = [&](int64_t n) { return visible(n) ? ShiftBy(int64_t(row[n]) * bm[n], Ea - be[n]) : int64_t(0); };
  WideRow(value, N, a.x.m[r], a.x.e[r] + Ea, y, a.y_m + r, a.y_e + r, r, split);
}

// DIBatchMatMul trans_b=0 (P.V): u[k] = x[k] * b_m[k] aligned over the k with x[k] != 0 (Ea lowered by ContextShift
// for wide probabilities), v[n] = sum_k u[k] B[k, n]
// in int64 (into `v`, a row per block: threads split the columns, and the keys when there are fewer columns than
// threads), then the wide requantization of v.
template <typename A>
__global__ void __launch_bounds__(kThreads) ContextRows(DiArgs a, int64_t* v) {
  __shared__ int64_t partial[kThreads];
  const int64_t r = blockIdx.x, K = a.K, N = a.N;
  const A* x = static_cast<const A*>(a.x.q) + r * K;
  const int64_t batch = BatchOf(a, r / a.M);
  const int8_t* B = static_cast<const int8_t*>(a.x2.q) + batch * K * N;
  const int32_t* bm = a.x2.m + batch * K;
  const int8_t* be = a.x2.e + batch * K;
  bool any;
  int64_t Ea = BlockAlign(be, K, [&](int64_t k) { return x[k] != 0; }, any);
  int32_t* y = static_cast<int32_t*>(a.y) + r * N;
  if (!any) return ZeroRow(y, N, a.y_m + r, a.y_e + r);
  int64_t abs_sum = 0, e_lo = kEMax;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x)
    if (x[k] != 0) {
      abs_sum += x[k] < 0 ? -int64_t(x[k]) : int64_t(x[k]);
      e_lo = Min(e_lo, int64_t(be[k]));
    }
  abs_sum = BlockReduce(abs_sum, SumOp());
  e_lo = BlockReduce(e_lo, MinOp());
  Ea -= ContextShift(uint64_t(abs_sum), Ea - e_lo);
  int64_t* row = v + r * N;
  const int cols = int(Min(N, kThreads)), slices = kThreads / cols;
  const int col = threadIdx.x % cols, slice = threadIdx.x / cols;
  for (int64_t n0 = 0; n0 < N; n0 += cols) {
    const int64_t n = n0 + col;
    int64_t sum = 0;
    if (slice < slices && n < N)
      for (int64_t k = slice; k < K; k += slices)
        if (x[k] != 0) sum += ShiftBy(int64_t(x[k]) * bm[k], Ea - be[k]) * B[k * N + n];
    partial[threadIdx.x] = sum;
    __syncthreads();
    if (slice == 0 && n < N) {
      for (int s = 1; s < slices; ++s) sum += partial[s * cols + col];
      row[n] = sum;
    }
    __syncthreads();
  }
  WideRow([&](int64_t n) { return row[n]; }, N, a.x.m[r], a.x.e[r] + Ea, y, a.y_m + r, a.y_e + r, r, Split());
}

template <typename T>
__global__ void __launch_bounds__(kThreads) RequantRows(DiArgs a, Split split) {
  const int64_t r = blockIdx.x, G = a.G, D = a.x.C;  // output row r merges G input rows (MergedRowsOf)
  const MergedRows rows = MergedRowsOf(r, G, a.S, a.heads_first);
  const T* q = static_cast<const T*>(a.x.q);
  const int32_t* m = a.x.m + rows.first;
  const int8_t* e = a.x.e + rows.first;
  const int64_t Ea = BlockAlignAll(e, G, rows.stride);
  auto value = [&](int64_t i) {
    const int64_t g = i / D;
    return ShiftBy(int64_t(q[(rows.first + g * rows.stride) * D + i % D]) * m[g * rows.stride],
                   Ea - e[g * rows.stride]);
  };
  QuantizeRow(value, G * D, 1, Ea, a.qmax, static_cast<int8_t*>(a.y) + r * G * D, a.y_m + r, a.y_e + r, r, split,
              a.clip_q15, a.y_z ? a.y_z + r : nullptr);
}


// The rows and row length of an op's requantization, for SplitsFor (n = 1: never split).
struct RowShape {
  int64_t rows, n;
};

RowShape RowShapeOf(const DiArgs& a) {
  switch (a.op) {
    case DiOp::kMatMul: return {a.x.rows, a.N};
    case DiOp::kNorm:
    case DiOp::kSwiGLU:
    case DiOp::kAdd: return {a.x.rows, a.x.C};
    case DiOp::kBatchMatMul: return {a.x.rows, a.trans_b ? a.N : 1};
    case DiOp::kRequant: return {a.x.rows / a.G, a.G * a.x.C};
    default: return {a.x.rows, 1};
  }
}

// Blocks per row: 1 once the rows alone are enough blocks, else chunks of about 1024 values, up to 256 blocks.
int64_t SplitsFor(RowShape s) {
  if (s.rows >= 128) return 1;
  return Max(1, Min((s.n + 1023) / 1024, (256 + s.rows - 1) / s.rows));
}

size_t DotsBytes(const DiArgs& a) {
  if (a.op == DiOp::kSwiGLU && a.hadamard) return size_t(a.x.rows) * size_t(a.x.C) * sizeof(int64_t);
  if (a.op == DiOp::kMatMul)
    return AccBytes(a) + PlanesBytes(a);
  if (a.op == DiOp::kBatchMatMul) return size_t(a.x.rows) * size_t(a.N) * (a.trans_b ? sizeof(int32_t) : sizeof(int64_t));
  return 0;
}

// Runs launch(grid, split) once over rows x 1 blocks, or over rows x splits twice (partials, then finish).
template <typename Launch>
void LaunchRows(const DiArgs& a, int64_t* partial, const Launch& launch) {
  const RowShape s = RowShapeOf(a);
  const int64_t splits = SplitsFor(s);
  if (splits == 1) return launch(dim3(unsigned(s.rows)), Split());
  const dim3 grid(unsigned(s.rows), unsigned(splits));
  launch(grid, Split{SplitMode::kPartials, partial});
  launch(grid, Split{SplitMode::kFinish, partial});
}

template <typename TA, typename TB>
void LaunchAdd(const DiArgs& a, int64_t* partial, cudaStream_t stream) {
  LaunchRows(a, partial, [&](dim3 grid, Split split) {
    if (a.y_code == DiCode::kInt16) AddRows<TA, TB, int16_t><<<grid, kThreads, 0, stream>>>(a, split);
    else AddRows<TA, TB, int8_t><<<grid, kThreads, 0, stream>>>(a, split);
  });
}

}  // namespace

size_t IntegerOpScratchBytes(const DiArgs& a) {
  const RowShape s = RowShapeOf(a);
  const int64_t splits = SplitsFor(s);
  return Align256(DotsBytes(a)) + (splits > 1 ? Align256(size_t(s.rows * splits) * 2 * sizeof(int64_t)) : 0);
}

const char* LaunchIntegerOp(const DiArgs& a, DiGemm gemm, void* raw_stream, void* scratch) {
  cudaStream_t stream = static_cast<cudaStream_t>(raw_stream);
  if (a.x.rows > INT_MAX) return "more than 2^31 - 1 rows";
  const unsigned rows = unsigned(a.x.rows);
  int64_t* partial = reinterpret_cast<int64_t*>(static_cast<char*>(scratch) + Align256(DotsBytes(a)));
  const char* error = nullptr;
  switch (a.op) {
    case DiOp::kMatMul: {
      int32_t* acc = static_cast<int32_t*>(scratch);
      void* planes = PlanesBytes(a) ? static_cast<char*>(scratch) + AccBytes(a) : nullptr;
      error = LaunchDots(Dots{a.x.q, a.W, acc, 1, a.x.rows, a.N, a.K}, a, a.x.code, gemm, stream, planes);
      if (error) return error;
      LaunchRows(a, partial, [&](dim3 grid, Split split) {
        const bool x8 = a.x.code == DiCode::kInt8;
        if (a.y_code == DiCode::kInt16) {
          if (x8) MatMulRows<int8_t, int16_t><<<grid, kThreads, 0, stream>>>(a, acc, split);
          else MatMulRows<int16_t, int16_t><<<grid, kThreads, 0, stream>>>(a, acc, split);
        } else if (x8) {
          MatMulRows<int8_t, int8_t><<<grid, kThreads, 0, stream>>>(a, acc, split);
        } else {
          MatMulRows<int16_t, int8_t><<<grid, kThreads, 0, stream>>>(a, acc, split);
        }
      });
      break;
    }
    case DiOp::kExp: ExpRows<<<rows, kThreads, 0, stream>>>(a); break;
    case DiOp::kClippedSoftmax:
      if (a.y_code == DiCode::kUInt16) {
        if (a.x.code == DiCode::kInt8) SoftmaxRows<int8_t, uint16_t><<<rows, kThreads, 0, stream>>>(a);
        else SoftmaxRows<int32_t, uint16_t><<<rows, kThreads, 0, stream>>>(a);
      } else if (a.x.code == DiCode::kInt8) {
        SoftmaxRows<int8_t, uint8_t><<<rows, kThreads, 0, stream>>>(a);
      } else {
        SoftmaxRows<int32_t, uint8_t><<<rows, kThreads, 0, stream>>>(a);
      }
      break;
    case DiOp::kNorm:
      LaunchRows(a, partial, [&](dim3 grid, Split split) {
        const bool x8 = a.x.code == DiCode::kInt8;
        if (a.y_code == DiCode::kInt16) {
          if (x8) NormRows<int8_t, int16_t><<<grid, kThreads, 0, stream>>>(a, split);
          else NormRows<int16_t, int16_t><<<grid, kThreads, 0, stream>>>(a, split);
        } else if (x8) {
          NormRows<int8_t, int8_t><<<grid, kThreads, 0, stream>>>(a, split);
        } else {
          NormRows<int16_t, int8_t><<<grid, kThreads, 0, stream>>>(a, split);
        }
      });
      break;
    case DiOp::kSwiGLU:
      if (a.hadamard) {  // the rotation mixes whole blocks: a block per row
        int64_t* v = static_cast<int64_t*>(scratch);
        if (a.x.code == DiCode::kInt8) RotatedSwiGLURows<int8_t><<<rows, kThreads, 0, stream>>>(a, v);
        else RotatedSwiGLURows<int16_t><<<rows, kThreads, 0, stream>>>(a, v);
        break;
      }
      LaunchRows(a, partial, [&](dim3 grid, Split split) {
        if (a.x.code == DiCode::kInt8) SwiGLURows<int8_t><<<grid, kThreads, 0, stream>>>(a, split);
        else SwiGLURows<int16_t><<<grid, kThreads, 0, stream>>>(a, split);
      });
      break;
    case DiOp::kRotary:
      if (a.past_len > 0) {  // each (batch, head)'s P cached rows ahead of its new S rows: three strided copies
        const size_t slabs = size_t(a.B * a.H), P = size_t(a.past_len), T = size_t(a.past_len + a.S), D = size_t(a.D);
        int8_t* y = static_cast<int8_t*>(a.y);
        cudaError_t err = cudaMemcpy2DAsync(y, T * D, a.past.q, P * D, P * D, slabs, cudaMemcpyDeviceToDevice, stream);
        if (err == cudaSuccess)
          err = cudaMemcpy2DAsync(a.y_m, T * sizeof(int32_t), a.past.m, P * sizeof(int32_t), P * sizeof(int32_t), slabs,
                                  cudaMemcpyDeviceToDevice, stream);
        if (err == cudaSuccess)
          err = cudaMemcpy2DAsync(a.y_e, T, a.past.e, P, P, slabs, cudaMemcpyDeviceToDevice, stream);
        if (err != cudaSuccess) return cudaGetErrorString(err);
      }
      if (a.x.code == DiCode::kInt8) RotaryRows<int8_t><<<rows, kThreads, 0, stream>>>(a);
      else RotaryRows<int16_t><<<rows, kThreads, 0, stream>>>(a);
      break;
    case DiOp::kAdd: {
      const bool a8 = a.x.code == DiCode::kInt8, b8 = a.x2.code == DiCode::kInt8;
      if (a8 && b8) LaunchAdd<int8_t, int8_t>(a, partial, stream);
      else if (a8) LaunchAdd<int8_t, int16_t>(a, partial, stream);
      else if (b8) LaunchAdd<int16_t, int8_t>(a, partial, stream);
      else LaunchAdd<int16_t, int16_t>(a, partial, stream);
      break;
    }
    case DiOp::kBatchMatMul:
      if (a.trans_b) {
        int32_t* acc = static_cast<int32_t*>(scratch);
        error = LaunchDots(Dots{a.x.q, static_cast<const int8_t*>(a.x2.q), acc, a.groups, a.M, a.N, a.K}, a, a.x.code,
                           gemm, stream);
        if (error) return error;
        LaunchRows(a, partial, [&](dim3 grid, Split split) { ScoresRows<<<grid, kThreads, 0, stream>>>(a, acc, split); });
      } else if (a.x.code == DiCode::kInt8) {
        ContextRows<int8_t><<<rows, kThreads, 0, stream>>>(a, static_cast<int64_t*>(scratch));
      } else if (a.x.code == DiCode::kUInt16) {
        ContextRows<uint16_t><<<rows, kThreads, 0, stream>>>(a, static_cast<int64_t*>(scratch));
      } else {
        ContextRows<uint8_t><<<rows, kThreads, 0, stream>>>(a, static_cast<int64_t*>(scratch));
      }
      break;
    case DiOp::kRequant:
      LaunchRows(a, partial, [&](dim3 grid, Split split) {
        if (a.x.code == DiCode::kInt8) RequantRows<int8_t><<<grid, kThreads, 0, stream>>>(a, split);
        else RequantRows<int32_t><<<grid, kThreads, 0, stream>>>(a, split);
      });
      break;
  }
  const cudaError_t status = cudaGetLastError();
  return status == cudaSuccess ? nullptr : cudaGetErrorString(status);
}

}  // namespace cuda
}  // namespace edgeq
