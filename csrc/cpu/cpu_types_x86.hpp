// AVX-512 building blocks for the CPU attention kernel: 16-float loads from any cache dtype, a
// vector exp, sixteen dot products finished at once, and a prefetch for scattered blocks.
//
// Stage 4. Mirrors vllm/csrc/cpu/cpu_types_x86.hpp (vLLM's x86 vector types). Included by
// paged_attention.cpp only when the compiler targets AVX-512 (`-march=native` on such a CPU);
// elsewhere that file's plain loops run instead. Next: paged_attention.cpp, attend_avx512.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace cpu_x86 {

// 16 consecutive cache elements as 16 floats.
inline __m512 load16(const float* x) { return _mm512_loadu_ps(x); }
inline __m512 load16(const c10::BFloat16* x) {  // a bf16 is the top half of an fp32
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
inline __m512 load16(const c10::Half* x) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));
}

inline __mmask16 first_lanes(int n) { return (1u << std::min(16, n)) - 1; }  // lanes 0..n-1

// exp(x) for x <= 0 (all a softmax needs): 2^k * exp(r) with k = round(x / ln 2) and
// |r| <= ln(2) / 2, where Cephes' degree-6 polynomial for expf is accurate to about 1 ulp.
inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));  // exp underflows below this anyway
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);  // x - k ln 2, with ln 2
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);     // in two parts for accuracy
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  for (float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f,
                  5.0000001201e-1f})
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(c));
  y = _mm512_fmadd_ps(_mm512_mul_ps(y, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(y, k);  // y * 2^k
}

// Sixteen dot products finished at once. Summing the 16 lanes of one vector takes four
// shuffle+add steps, so 16 rows one by one would take 64. A butterfly sums 16 vectors together:
// each round swaps halves between pairs of vectors and adds (16 -> 8 -> 4 -> 2 -> 1 vectors),
// every lane still summing one row: 15 adds in all. Rows go in in kButterfly order so that lane
// i of the result is the sum of row i.
constexpr int kButterfly[16] = {0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15};
inline __m512 sum16x16(const __m512* v) {
  __m512 h[8], q[4], e[2];
  for (int j = 0; j < 8; ++j)  // swap 256-bit halves
    h[j] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * j], v[2 * j + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * j], v[2 * j + 1], 0xEE));
  for (int j = 0; j < 4; ++j)  // swap 128-bit quarters
    q[j] = _mm512_add_ps(_mm512_shuffle_f32x4(h[2 * j], h[2 * j + 1], 0x88),
                         _mm512_shuffle_f32x4(h[2 * j], h[2 * j + 1], 0xDD));
  for (int j = 0; j < 2; ++j)  // swap 64-bit pairs
    e[j] = _mm512_add_ps(_mm512_shuffle_ps(q[2 * j], q[2 * j + 1], 0x44),
                         _mm512_shuffle_ps(q[2 * j], q[2 * j + 1], 0xEE));
  return _mm512_add_ps(_mm512_shuffle_ps(e[0], e[1], 0x88), _mm512_shuffle_ps(e[0], e[1], 0xDD));
}

// Cache blocks are scattered, so the hardware prefetcher cannot guess where the next one is.
// Touching one line per 4 KiB page of it starts the page walks and the first loads early; within
// a page the hardware streams the rest (measured: as fast as prefetching every line, for a
// fraction of the instructions).
template <typename scalar_t>
void prefetch_block(const scalar_t* block, int64_t elems) {
  for (int64_t off = 0; off < elems * static_cast<int64_t>(sizeof(scalar_t)); off += 4096)
    _mm_prefetch(reinterpret_cast<const char*>(block) + off, _MM_HINT_T0);
}

}  // namespace cpu_x86
