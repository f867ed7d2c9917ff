// Masked AVX-512 loads and stores of 16 lanes of float32 or bfloat16, and bf16 rounding in
// registers: the row-wise kernels' shared vocabulary (layer_kernels.cpp, int8_quant.cpp).
//
// Mirrors the load/save methods of vLLM's vector types (vllm/csrc/cpu/cpu_types_x86.hpp: FP32Vec16,
// BF16Vec16). A mask covers the tail of a row whose length is not a multiple of 16. Included only
// when the compiler targets AVX-512. Next: layer_kernels.cpp.
#pragma once

#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include <cstdint>

namespace cpu_vec {

using c10::BFloat16;

inline __m512 load(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 load(const BFloat16* p, __mmask16 m) {  // a bf16 is the top half of an fp32
  const __m256i bits = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
// bf16 bits of 16 floats, rounded to nearest even (NaN aside, as torch's conversion rounds).
inline __m256i to_bf16_bits(__m512 x) {
#ifdef __AVX512BF16__
  return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(x));
#else
  const __m512i b = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
#endif
}
inline void store(float* p, __m512 x, __mmask16 m) { _mm512_mask_storeu_ps(p, m, x); }
inline void store(BFloat16* p, __m512 x, __mmask16 m) {
  _mm256_mask_storeu_epi16(p, m, to_bf16_bits(x));
}
// The float the store would write back on reading: the same rounding, kept in registers.
inline __m512 round_vec(__m512 x, float) { return x; }
inline __m512 round_vec(__m512 x, BFloat16) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(to_bf16_bits(x)), 16));
}
template <typename scalar_t>
inline __m512 round_v(__m512 x) { return round_vec(x, scalar_t()); }
inline __mmask16 lanes(int64_t n) { return n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1); }

}  // namespace cpu_vec
