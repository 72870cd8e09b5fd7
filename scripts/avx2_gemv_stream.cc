// Streaming rate of the one-row AVX2 int8 GEMV (int8_gemm.h's decode tile) against a plain read of the same
// bytes, one and two threads (BENCHMARKS.md, stop 19):
//   g++ -O3 -mavx2 -mfma -pthread scripts/avx2_gemv_stream.cc -o /tmp/s && /tmp/s
#include <immintrin.h>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <vector>
#include <thread>
static inline int32_t hsum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e)); s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}
void cur(const int8_t* w, const int16_t* x, int32_t* y, int N, int K) {
  for (int n = 0; n < N; ++n) {
    const int8_t* r = w + (int64_t)n * K;
    __m256i s = _mm256_setzero_si256();
    for (int k = 0; k + 16 <= K; k += 16)
      s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_loadu_si256((const __m256i*)(x + k)),
                                                _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(r + k)))));
    y[n] = hsum(s);
  }
}
void rd(const int8_t* w, const int16_t*, int32_t* y, int N, int K) {
  for (int n = 0; n < N; ++n) {
    const int8_t* r = w + (int64_t)n * K;
    __m256i s = _mm256_setzero_si256();
    for (int k = 0; k + 32 <= K; k += 32) s = _mm256_or_si256(s, _mm256_loadu_si256((const __m256i*)(r + k)));
    y[n] = hsum(s);
  }
}
int main() {
  const int K = 576, N = 49152 * 4;
  std::vector<int8_t> w((size_t)N * K);
  for (size_t i = 0; i < w.size(); ++i) w[i] = int8_t(i * 7);
  std::vector<int16_t> x(K, 3); std::vector<int32_t> y(N);
  for (int T : {1, 2}) for (int f = 0; f < 2; ++f) {
    auto run = [&] {
      std::vector<std::thread> th;
      for (int t = 0; t < T; ++t)
        th.emplace_back([&, t] {
          const int n0 = N / T * t;
          (f ? cur : rd)(w.data() + (size_t)n0 * K, x.data(), y.data() + n0, N / T, K);
        });
      for (auto& t : th) t.join();
    };
    run(); auto t0 = std::chrono::steady_clock::now(); for (int i = 0; i < 5; ++i) run();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 5;
    printf("threads %d %s %.1f GB/s\n", T, f ? "gemv" : "read", double(N) * K / s / 1e9);
  }
}
