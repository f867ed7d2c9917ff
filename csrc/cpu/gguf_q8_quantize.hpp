// Activations to int8, per row and per 32-block: the first half of the int8-activation GGUF
// matmul (csrc/cpu/gguf_gemm_q8.cpp, the second half, includes this header). Stage 7.
//
// Like ggml's Q8_0/Q8_1 "vec_dot_type" (llama.cpp quantizes src1 this way for every batch size),
// each block of 32 x values becomes one float scale dx = max|x| / 127 and 32 int8 codes
// c = round(x / dx), ties to even. Per block the matmul also needs sum(c): Q4_0 and Q8_0 store
// their weights with an offset (q - 8, q - 128 as unsigned bytes) that costs offset * sum(c),
// and Q4_1's min m adds m * dx * sum(c) (ggml's Q8_1 keeps that sum too).
//
// Every quantity depends on one row of x only, so a row's codes are the same whether it is
// quantized alone or with hundreds of others: the first condition of batch invariance (the
// second, a fixed float summation order, is the matmul's). The buffers are reused from call to
// call (one set per calling thread): a decode step quantizes a single row, and allocating
// would cost as much as quantizing it. Mirrored in torch by gguf_q8.quantize_q8_reference.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define VLLM_MINI_Q8_VNNI 1
#include <immintrin.h>
#endif

namespace gguf_q8 {

// x [M, K] quantized; views into per-thread buffers, valid until the next quantize_x on the
// same thread.
struct QuantizedX {
  int64_t rows, cols, blocks;  // M, K, nb = K / 32
  const int8_t* codes;         // [M, K]: block b of row m at m * K + b * 32
  const float* dx;             // [M, nb]: each block's scale
  const int32_t* corr;         // [M, nb]: offset * sum(c), the weights' offset (0 for Q4_1)
  const float* sx;             // [M, nb]: dx * sum(c), Q4_1's min term (0 elsewhere)
};

// A block's scale and its inverse: dx = amax * (1/127), inv = 1/dx (0 for an all-zero block).
// Written out so that the torch reference can repeat them bit for bit; -ffast-math (setup.py)
// would be free to rewrite 1 / (amax * (1/127)) as 127 * (1 / amax), one rounding different,
// which moves a code sitting near .5 by one: this function alone is compiled with IEEE semantics.
__attribute__((noinline, optimize("no-fast-math"))) inline float block_scale(float amax,
                                                                             float* inv) {
  const float dx = amax * (1.0f / 127.0f);
  *inv = dx > 0.f ? 1.0f / dx : 0.f;
  return dx;
}

// One block of 32 x values -> codes c = round_half_even(x * inv), its scale dx and sum(c).
inline void quantize_block(const float* x, int8_t* codes, float* dx_out, int32_t* csum_out) {
#ifdef VLLM_MINI_Q8_VNNI
  const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
  const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
  float inv;
  *dx_out = block_scale(amax, &inv);
  const __m512 vi = _mm512_set1_ps(inv);
  constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  const __m512i c0 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(v0, vi), kRound);
  const __m512i c1 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(v1, vi), kRound);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(codes), _mm512_cvtepi32_epi8(c0));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + 16), _mm512_cvtepi32_epi8(c1));
  *csum_out = _mm512_reduce_add_epi32(_mm512_add_epi32(c0, c1));
#else
  float amax = 0.f;
  for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
  float inv;
  *dx_out = block_scale(amax, &inv);
  int32_t csum = 0;
  for (int j = 0; j < 32; ++j) {
    const int32_t c = static_cast<int32_t>(std::nearbyint(x[j] * inv));
    codes[j] = static_cast<int8_t>(c);
    csum += c;
  }
  *csum_out = csum;
#endif
}

// x [M, K] float32 -> codes and per-block dx, offset * sum(c) and (with_min) dx * sum(c).
inline QuantizedX quantize_x(const float* x, int64_t M, int64_t K, int32_t offset,
                             bool with_min) {
  thread_local std::vector<int8_t> codes;
  thread_local std::vector<float> dx, sx;
  thread_local std::vector<int32_t> corr;
  const int64_t nb = K / 32;
  // Grow only: after the first prefill a decode step never allocates.
  if (static_cast<int64_t>(codes.size()) < M * K) codes.resize(M * K);
  if (static_cast<int64_t>(dx.size()) < M * nb) {
    dx.resize(M * nb);
    sx.resize(M * nb);
    corr.resize(M * nb);
  }
  int8_t* cp = codes.data();
  float *dp = dx.data(), *sp = sx.data();
  int32_t* op = corr.data();
  // ~1% of the matmul's work: one thread unless x is large (a parallel region costs more than
  // quantizing a few rows). Rows are independent, so the split changes nothing in the result.
  at::parallel_for(0, M, std::max<int64_t>(1, 65536 / K), [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t i = m * nb + b;
        int32_t csum;
        quantize_block(x + m * K + b * 32, cp + m * K + b * 32, dp + i, &csum);
        op[i] = offset * csum;
        sp[i] = with_min ? dp[i] * static_cast<float>(csum) : 0.f;
      }
    }
  });
  return {M, K, nb, cp, dp, op, sp};
}

}  // namespace gguf_q8
