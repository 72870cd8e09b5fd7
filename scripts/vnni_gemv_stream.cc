// Streaming rate of the one-row AVX-512 VNNI int8 GEMV (int8_gemm.h's decode path: single weight rows) over 112 MB
// of weights (BENCHMARKS.md, stop 21): one thread at K = 576 and 1,536 with and without the software prefetch 4 KB
// ahead that the AVX2 path keeps, then two threads splitting each call's rows with a barrier per call, as a decode
// step's DIMatMuls do, for calls of 192, 576, 1,536 and 49,152 rows of K = 576 (k/v, q/o, gate/up, lm_head-sized).
//   g++ -O3 -march=native -pthread scripts/vnni_gemv_stream.cc -o /tmp/v && /tmp/v
#include <immintrin.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

static double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

template <bool kPrefetch = false>
__attribute__((noinline)) void Gemv(const int8_t* x, int32_t x_sum, const int8_t* W, int64_t N, int64_t K, int32_t* out) {
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  const int64_t ahead = (4096 + K - 1) / K * K;
  const uintptr_t base = reinterpret_cast<uintptr_t>(W);
  for (int64_t n = 0; n < N; ++n) {
    const uintptr_t next = base + uintptr_t(n * K + ahead);
    for (int64_t c = 0; c < K && kPrefetch; c += 64)
      _mm_prefetch(reinterpret_cast<const char*>(next + uintptr_t(c)), _MM_HINT_T0);
    const int8_t* w = W + n * K;
    __m512i s = _mm512_setzero_si512();
    for (int64_t k = 0; k < K; k += 64) {
      const __mmask64 mask = K - k >= 64 ? ~__mmask64(0) : (__mmask64(1) << (K - k)) - 1;
      s = _mm512_dpbusd_epi32(s, _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, w + k), flip),
                              _mm512_maskz_loadu_epi8(mask, x + k));
    }
    out[n] = int32_t(uint32_t(_mm512_reduce_add_epi32(s)) - 128u * uint32_t(x_sum));
  }
}

constexpr int64_t kBytes = int64_t(112) << 20;

template <bool kPrefetch>
void OneThread(int64_t K) {
  const int64_t N = kBytes / K;
  std::vector<int8_t> W(N * K + 8192), x(K);
  for (auto& v : W) v = int8_t(rand());
  for (auto& v : x) v = int8_t(rand());
  std::vector<int32_t> out(N);
  double best = 1e9;
  for (int r = 0; r < 7; ++r) {
    const double start = Now();
    Gemv<kPrefetch>(x.data(), 0, W.data(), N, K, out.data());
    best = std::min(best, Now() - start);
  }
  printf("one thread, K=%ld, %s: %.2f ms, %.1f GB/s\n", long(K), kPrefetch ? "prefetch" : "no prefetch", best * 1e3,
         N * K / best / 1e9);
}

void TwoThreads(int64_t rows) {
  const int64_t K = 576, calls = kBytes / (rows * K), reps = 8;
  std::vector<int8_t> W(calls * rows * K + 8192), x(K);
  for (auto& v : W) v = int8_t(rand());
  for (auto& v : x) v = int8_t(rand());
  std::vector<int32_t> out(calls * rows);
  std::atomic<int64_t> go{-1}, done{0};
  const int64_t half = rows / 2;
  std::thread worker([&] {
    for (int64_t c = 0; c < calls * reps; ++c) {
      while (go.load(std::memory_order_acquire) < c) _mm_pause();
      const int64_t call = c % calls;
      Gemv(x.data(), 0, W.data() + (call * rows + half) * K, rows - half, K, out.data() + call * rows + half);
      done.fetch_add(1, std::memory_order_release);
    }
  });
  double best = 1e9;
  for (int64_t rep = 0; rep < reps; ++rep) {
    const double start = Now();
    for (int64_t call = 0; call < calls; ++call) {
      const int64_t c = rep * calls + call;
      go.store(c, std::memory_order_release);
      Gemv(x.data(), 0, W.data() + call * rows * K, half, K, out.data() + call * rows);
      while (done.load(std::memory_order_acquire) < c + 1) _mm_pause();
    }
    best = std::min(best, Now() - start);
  }
  worker.join();
  printf("two threads, calls of %ld rows (%ld KB): %.2f ms, %.1f GB/s, %.1f us a call\n", long(rows),
         long(rows * K / 1024), best * 1e3, calls * rows * K / best / 1e9, best / calls * 1e6);
}

int main() {
  for (int64_t K : {576, 1536}) {
    OneThread<true>(K);
    OneThread<false>(K);
  }
  for (int64_t rows : {192, 576, 1536, 49152}) TwoThreads(rows);
}
