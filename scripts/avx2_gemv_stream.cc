// Streaming rate of the one-row AVX2 int8 GEMVs (int8_gemm.h's decode tiles: the int16 one, `gemv`, and the byte
// one, `bytes`, RowAvx2Bytes) against a plain read of the same bytes, one and two threads, from DRAM (112 MB) and
// from cache (110 KB, one thread) (BENCHMARKS.md, stops 19 and 25):
//   g++ -O3 -mavx2 -mfma -pthread scripts/avx2_gemv_stream.cc -o /tmp/s && /tmp/s
#include <immintrin.h>
#include <algorithm>
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
// RowAvx2Bytes without its raised codes (x has no -128 here).
void bytes(const int8_t* w, const int16_t* x16, int32_t* y, int N, int K) {
  static thread_local std::vector<int8_t> x8;
  x8.assign(x16, x16 + K);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int n = 0; n < N; ++n) {
    const int8_t* r = w + (int64_t)n * K;
    for (int c = 0; c < K; c += 64) _mm_prefetch((const char*)(r + (4096 + K - 1) / K * K + c), _MM_HINT_T0);
    __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
    auto step = [&](__m256i& s, int k) {
      const __m256i wv = _mm256_loadu_si256((const __m256i*)(r + k)), xv = _mm256_loadu_si256((const __m256i*)(x8.data() + k));
      s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(wv), _mm256_sign_epi8(xv, wv)), ones));
    };
    int k = 0;
    for (; k + 64 <= K; k += 64) { step(s0, k); step(s1, k + 32); }
    for (; k + 32 <= K; k += 32) step(s0, k);
    y[n] = hsum(_mm256_add_epi32(s0, s1));
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
  typedef void (*Fn)(const int8_t*, const int16_t*, int32_t*, int, int);
  const Fn fns[] = {rd, cur, bytes};
  const char* names[] = {"read", "gemv", "bytes"};
  for (int K : {576, 1536}) for (long long total : {110592LL, 112LL << 20}) {
    const int N = int(total / K) / 8 * 8;
    std::vector<int8_t> w((size_t)N * K + 8192);
    for (size_t i = 0; i < w.size(); ++i) w[i] = int8_t(i * 7);
    std::vector<int16_t> x(K);
    for (int k = 0; k < K; ++k) x[k] = int16_t((k * 13) % 255 - 127);
    std::vector<int32_t> y(N), want(N);
    cur(w.data(), x.data(), want.data(), N, K);
    bytes(w.data(), x.data(), y.data(), N, K);
    if (y != want) printf("bytes differs from gemv\n");
    const bool hot = total < (1 << 20);
    for (int T : {1, 2}) {
      if (hot && T == 2) continue;
      printf("K=%d %s threads %d:", K, hot ? "110 KB (cache)" : "112 MB (DRAM)", T);
      for (int f = 0; f < 3; ++f) {
        auto run = [&] {
          if (T == 1) return fns[f](w.data(), x.data(), y.data(), N, K);  // no thread start in the timing
          std::vector<std::thread> th;
          for (int t = 0; t < T; ++t)
            th.emplace_back([&, t] {
              const int n0 = N / T * t;
              fns[f](w.data() + (size_t)n0 * K, x.data(), y.data() + n0, N / T, K);
            });
          for (auto& t : th) t.join();
        };
        const int reps = hot ? 2000 : 5;
        run();
        double best = 1e9;
        for (int rep = 0; rep < 3; ++rep) {
          auto t0 = std::chrono::steady_clock::now();
          for (int i = 0; i < reps; ++i) run();
          best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps);
        }
        printf("  %s %.1f", names[f], double(N) * K / best / 1e9);
      }
      printf(" GB/s\n");
    }
  }
}
