// W4A16 GEMM for the CPU: y = x @ W^T with W in 4-bit groups, dequantized inside the kernel.
//
// Stage 7. Mirrors vllm/csrc/cpu/cpu_wna16.cpp (vLLM's CPU kernel for GPTQ/AWQ/compressed-tensors
// int4 weights), with our own layout and loop. Every checkpoint format is repacked at load time
// (vllm_mini/model_executor/layers/quantization/utils/w4a16_layout.py) into one layout:
//   qweight      [N/16, K/2, 16] uint8: column block b, row pair p, column j holds the code of
//                (k = 2p, n = 16b + j) in its low nibble and (k = 2p + 1, n = 16b + j) in its high
//                nibble, so one 16-byte load gives two rows of 16 weights for one block;
//   scales       [N/16, G, 16] float: the scale of (group g, column 16b + j);
//   zero_scales  [N/16, G, 16] float: zero * scale of the same (the zero in real units).
// Why that layout: a decode step multiplies one token by the whole weight, so the kernel is a
// stream through memory; each column block's bytes are one contiguous run, read once.
//
// The group trick: (q - z) s summed against x over a group is s * sum(x q) - z s * sum(x). The
// inner loop therefore only converts codes to floats and multiplies-adds; the scale and the zero
// are applied once per group, and sum(x) once per row and group, before the loop.
//
// Work split: at::parallel_for over column blocks; each task does all rows of x, four rows at a
// time, so that one decoded pair of weight rows feeds up to eight multiply-adds. Two
// implementations of a column block, as in paged_attention.cpp: AVX-512 intrinsics where the
// compiler targets them, plain loops elsewhere (the tests run both, `portable=True`). Compiled by
// setup.py into vllm_mini._C; called from quantization/cpu_w4a16.py. Next: triton_w4a16.py.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int kBlockN = 16;  // output columns per block: one AVX-512 register of floats

struct Problem {
  const float* x;     // [M, K]
  const float* sumx;  // [M, G]: sum of x over each group
  const uint8_t* qweight;
  const float *scales, *zero_scales;
  float* out;  // [M, N]
  int64_t M, K, N, G, group_size;
};

// Rows [m0, m0 + MT) of one column block, plain loops (the compiler vectorizes over j).
template <int MT>
void block_portable(const Problem& p, int64_t b, int64_t m0) {
  const uint8_t* qb = p.qweight + b * (p.K / 2) * kBlockN;
  float total[MT][kBlockN] = {};
  for (int64_t g = 0; g < p.G; ++g) {
    float acc[MT][kBlockN] = {};
    for (int64_t pair = g * p.group_size / 2; pair < (g + 1) * p.group_size / 2; ++pair) {
      const uint8_t* bytes = qb + pair * kBlockN;
      for (int m = 0; m < MT; ++m) {
        const float x0 = p.x[(m0 + m) * p.K + 2 * pair], x1 = p.x[(m0 + m) * p.K + 2 * pair + 1];
        for (int j = 0; j < kBlockN; ++j)
          acc[m][j] += x0 * static_cast<float>(bytes[j] & 0xF) + x1 * static_cast<float>(bytes[j] >> 4);
      }
    }
    const float* s = p.scales + (b * p.G + g) * kBlockN;
    const float* zs = p.zero_scales + (b * p.G + g) * kBlockN;
    for (int m = 0; m < MT; ++m) {
      const float sx = p.sumx[(m0 + m) * p.G + g];
      for (int j = 0; j < kBlockN; ++j) total[m][j] += acc[m][j] * s[j] - sx * zs[j];
    }
  }
  for (int m = 0; m < MT; ++m)
    std::copy(total[m], total[m] + kBlockN, p.out + (m0 + m) * p.N + b * kBlockN);
}

#if defined(__AVX512F__)
// The same with 16-float registers. Each row keeps two accumulators (even and odd k) so that one
// row alone (decode) still has independent multiply-adds in flight instead of one long chain.
template <int MT>
void block_avx512(const Problem& p, int64_t b, int64_t m0) {
  const uint8_t* qb = p.qweight + b * (p.K / 2) * kBlockN;
  const __m512i low4 = _mm512_set1_epi32(0xF);
  __m512 total[MT];
  for (int m = 0; m < MT; ++m) total[m] = _mm512_setzero_ps();
  for (int64_t g = 0; g < p.G; ++g) {
    __m512 even[MT], odd[MT];
    for (int m = 0; m < MT; ++m) even[m] = odd[m] = _mm512_setzero_ps();
    const int64_t first = g * p.group_size / 2, last = (g + 1) * p.group_size / 2;
    for (int64_t pair = first; pair < last; ++pair) {
      // 16 bytes -> 16 int32 lanes; low nibbles are row 2p, high nibbles row 2p + 1.
      const __m512i v = _mm512_cvtepu8_epi32(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(qb + pair * kBlockN)));
      const __m512 w0 = _mm512_cvtepi32_ps(_mm512_and_si512(v, low4));
      const __m512 w1 = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
      for (int m = 0; m < MT; ++m) {
        const float* xr = p.x + (m0 + m) * p.K + 2 * pair;
        even[m] = _mm512_fmadd_ps(_mm512_set1_ps(xr[0]), w0, even[m]);
        odd[m] = _mm512_fmadd_ps(_mm512_set1_ps(xr[1]), w1, odd[m]);
      }
    }
    const __m512 s = _mm512_loadu_ps(p.scales + (b * p.G + g) * kBlockN);
    const __m512 zs = _mm512_loadu_ps(p.zero_scales + (b * p.G + g) * kBlockN);
    for (int m = 0; m < MT; ++m) {
      total[m] = _mm512_fmadd_ps(_mm512_add_ps(even[m], odd[m]), s, total[m]);
      total[m] = _mm512_fnmadd_ps(_mm512_set1_ps(p.sumx[(m0 + m) * p.G + g]), zs, total[m]);
    }
  }
  for (int m = 0; m < MT; ++m) _mm512_storeu_ps(p.out + (m0 + m) * p.N + b * kBlockN, total[m]);
}
#endif

template <int MT>
void block(const Problem& p, int64_t b, int64_t m0, bool portable) {
#if defined(__AVX512F__)
  if (!portable) return block_avx512<MT>(p, b, m0);
#endif
  block_portable<MT>(p, b, m0);
}

// x [M, K] (float, bfloat16 or half) -> [M, N] in x's dtype. See the layout at the top.
torch::Tensor w4a16_gemm(const torch::Tensor& x, const torch::Tensor& qweight,
                         const torch::Tensor& scales, const torch::Tensor& zero_scales,
                         int64_t group_size, bool portable) {
  TORCH_CHECK(x.dim() == 2 && x.device().is_cpu(), "w4a16_gemm: x must be a 2-D CPU tensor");
  TORCH_CHECK(qweight.dim() == 3 && qweight.scalar_type() == torch::kUInt8 &&
                  qweight.size(2) == kBlockN,
              "w4a16_gemm: qweight must be uint8 [N/16, K/2, 16]");
  const int64_t M = x.size(0), K = x.size(1), NB = qweight.size(0);
  TORCH_CHECK(qweight.size(1) * 2 == K, "w4a16_gemm: qweight holds K=", qweight.size(1) * 2,
              " rows but x has K=", K);
  TORCH_CHECK(group_size > 0 && group_size % 2 == 0 && K % group_size == 0,
              "w4a16_gemm: group_size must be even and divide K=", K, "; got ", group_size);
  const int64_t G = K / group_size;
  for (const auto* t : {&scales, &zero_scales})
    TORCH_CHECK(t->scalar_type() == torch::kFloat && t->is_contiguous() && t->dim() == 3 &&
                    t->size(0) == NB && t->size(1) == G && t->size(2) == kBlockN,
                "w4a16_gemm: scales and zero_scales must be contiguous float [N/16, G, 16]");
  const torch::Tensor xf = x.to(torch::kFloat).contiguous();
  const torch::Tensor q = qweight.contiguous();
  // sum(x) per row and group, for the zero-point term of the group trick.
  const torch::Tensor sumx = xf.view({M, G, group_size}).sum(2).contiguous();
  torch::Tensor out = torch::empty({M, NB * kBlockN}, xf.options());
  const Problem p{xf.data_ptr<float>(), sumx.data_ptr<float>(), q.data_ptr<uint8_t>(),
                  scales.data_ptr<float>(), zero_scales.data_ptr<float>(), out.data_ptr<float>(),
                  M, K, NB * kBlockN, G, group_size};
  at::parallel_for(0, NB, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      int64_t m0 = 0;
      for (; m0 + 4 <= M; m0 += 4) block<4>(p, b, m0, portable);
      for (; m0 + 2 <= M; m0 += 2) block<2>(p, b, m0, portable);
      if (m0 < M) block<1>(p, b, m0, portable);
    }
  });
  return x.scalar_type() == torch::kFloat ? out : out.to(x.scalar_type());
}

}  // namespace

// Registered as a torch operator (not a pybind function) so that several source files can add
// ops to the one module vllm_mini._C: only one file may define the module itself.
TORCH_LIBRARY_FRAGMENT(vllm_mini_C, m) {
  m.def(
      "w4a16_gemm(Tensor x, Tensor qweight, Tensor scales, Tensor zero_scales, int group_size, "
      "bool portable=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(vllm_mini_C, CPU, m) { m.impl("w4a16_gemm", &w4a16_gemm); }
