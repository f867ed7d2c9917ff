// FP8 weight-only matmul on the CPU: y = x @ (codes * scale)^T with float8_e4m3fn codes. Stage 7.
//
// The role vLLM's W8A16 FP8 kernel plays on GPUs without an fp8 matmul (the Marlin kernel behind
// compressed_tensors_w8a16_fp8.py): the weight stays in memory as one byte per value and is widened
// to float inside the kernel, next to float activations. A batch-1 decode step is bound by reading
// the weights, so 1 byte instead of 4 (float32) or 2 (bfloat16) is where the speed-up comes from.
//
// Decoding e4m3 in registers (AVX-512). An e4m3fn byte is s eeee mmm (exponent bias 7); an IEEE
// half is s eeeee mmmmmmmmmm (bias 15). Sign-extending the byte to 16 bits and shifting it left by
// 7 puts s in bit 15 (from the extension), eeee in bits 10..13 and mmm in bits 7..9; bit 14 then
// holds a copy of s, which we clear. The result is a half whose value is exactly the e4m3 value
// times 2^-8 (the exponent field is 8 less biased), subnormals included: an e4m3 subnormal
// (eeee = 0) is 2^-6 * m/8 and the half subnormal 2^-14 * (m << 7)/1024 = 2^-14 * m/8. So
// _mm512_cvtph_ps converts 16 codes at once and the 2^8 is folded into the per-row scale. The
// one code that would differ is NaN (0x7F / 0xFF; it becomes 480 here); our quantizers clamp to
// +-448 before rounding and a checkpoint's weights are finite, so it never occurs.
//
// Design, as csrc/cpu/gguf_gemm.cpp's fused path: output rows n are split over torch's threads
// (at::parallel_for); each 32-code chunk of row n is decoded once and multiplied with up to 8 rows
// of x held in accumulators, so a row's bytes are read from memory once per call. All arithmetic is
// float32 (a bfloat16 x is widened first), so the result differs from the dequantized-weight
// reference only in summation order. For a prefill (many rows of x) the caller in
// vllm_mini/model_executor/layers/quantization/utils/fp8_ops.py dequantizes the whole matrix with
// fp8_dequantize and runs the float GEMM instead (there arithmetic, not memory, is the bottleneck).
//
// Registered as torch ops in the `vllm_mini_C` namespace (torch.ops.vllm_mini_C.fp8_gemm, ...).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace {

// The portable decoder: every byte's float value, built once (NaN codes read as 480, like the
// AVX-512 path; see the header).
const std::array<float, 256>& e4m3_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int b = 0; b < 256; ++b) {
      const int e = (b >> 3) & 0xF, m = b & 0x7;
      const float mag = e == 0 ? std::ldexp(float(m) / 8.f, -6)
                               : std::ldexp(1.f + float(m) / 8.f, e - 7);
      t[b] = (b & 0x80) ? -mag : mag;
    }
    return t;
  }();
  return table;
}

// Each thread's task covers at least ~16k weights, so the threads' start-up cost stays small.
inline int64_t grain_for(int64_t K) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)); }

#ifdef __AVX512F__
// 32 codes -> two vectors of 16 floats, each 2^-8 times the code's value (see the header).
inline void decode32(const uint8_t* p, __m512& w0, __m512& w1) {
  const __m512i wide = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  const __m512i h = _mm512_and_si512(_mm512_slli_epi16(wide, 7), _mm512_set1_epi16(int16_t(0xBFFF)));
  w0 = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
  w1 = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
}

// out[r] = dot(row codes, x[r]) * 2^-8 for R rows of x (R accumulators stay in registers).
template <int R>
inline void dot_rows(const uint8_t* row, const float* x, int64_t K, float* out) {
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  const int64_t k32 = K / 32 * 32;
  for (int64_t k = 0; k < k32; k += 32) {
    __m512 w0, w1;
    decode32(row + k, w0, w1);
    for (int r = 0; r < R; ++r) {
      const float* xp = x + r * K + k;
      acc[r] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xp), acc[r]);
      acc[r] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xp + 16), acc[r]);
    }
  }
  const std::array<float, 256>& table = e4m3_table();
  for (int r = 0; r < R; ++r) {
    float tail = 0.f;  // K not a multiple of 32: the last columns one at a time
    for (int64_t k = k32; k < K; ++k) tail += table[row[k]] * x[r * K + k];
    out[r] = _mm512_reduce_add_ps(acc[r]) + tail * (1.f / 256.f);  // tail in 2^-8 units too
  }
}

void gemm_avx512(const float* x, const uint8_t* w, const float* scale, bool per_channel, float* y,
                 int64_t M, int64_t N, int64_t K) {
  // Tiles of up to 8 rows of x share one decode of each chunk (8 covers a speculative-decoding
  // step of 1 + 4 tokens, stage 11, in one pass).
  constexpr int64_t kTile = 8;
  at::parallel_for(0, N, grain_for(K), [&](int64_t begin, int64_t end) {
    float out[kTile];
    for (int64_t n = begin; n < end; ++n) {
      const uint8_t* row = w + n * K;
      const float s = (per_channel ? scale[n] : scale[0]) * 256.f;  // the 2^8 decode32 left out
      for (int64_t m0 = 0; m0 < M; m0 += kTile) {
        const float* xt = x + m0 * K;
        const int64_t rows = std::min<int64_t>(kTile, M - m0);
        switch (rows) {
          case 1: dot_rows<1>(row, xt, K, out); break;
          case 2: dot_rows<2>(row, xt, K, out); break;
          case 3: dot_rows<3>(row, xt, K, out); break;
          case 4: dot_rows<4>(row, xt, K, out); break;
          case 5: dot_rows<5>(row, xt, K, out); break;
          case 6: dot_rows<6>(row, xt, K, out); break;
          case 7: dot_rows<7>(row, xt, K, out); break;
          default: dot_rows<8>(row, xt, K, out);
        }
        for (int64_t r = 0; r < rows; ++r) y[(m0 + r) * N + n] = out[r] * s;
      }
    }
  });
}
#endif

// The portable path: decode a row into a float buffer through the table, then M dot products.
void gemm_portable(const float* x, const uint8_t* w, const float* scale, bool per_channel,
                   float* y, int64_t M, int64_t N, int64_t K) {
  const std::array<float, 256>& table = e4m3_table();
  at::parallel_for(0, N, grain_for(K), [&](int64_t begin, int64_t end) {
    std::vector<float> row(K);
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t k = 0; k < K; ++k) row[k] = table[w[n * K + k]];
      const float s = per_channel ? scale[n] : scale[0];
      for (int64_t m = 0; m < M; ++m) {
        const float* xp = x + m * K;
        float acc = 0.f;
        for (int64_t k = 0; k < K; ++k) acc += row[k] * xp[k];
        y[m * N + n] = acc * s;
      }
    }
  });
}

bool check_scale(const torch::Tensor& codes, const torch::Tensor& scale) {
  TORCH_CHECK(codes.dtype() == torch::kUInt8 && codes.dim() == 2 && codes.is_contiguous(),
              "fp8: codes must be a contiguous 2-D uint8 tensor (float8_e4m3fn viewed as uint8)");
  TORCH_CHECK(scale.dtype() == torch::kFloat32 && scale.is_contiguous(),
              "fp8: scale must be a contiguous float32 tensor");
  TORCH_CHECK(scale.numel() == 1 || scale.numel() == codes.size(0), "fp8: scale has ",
              scale.numel(), " elements; allowed: 1 (per tensor) or ", codes.size(0),
              " (per output channel)");
  return scale.numel() != 1 || codes.size(0) == 1;
}

}  // namespace

// y[M, N] = x[M, K] @ (codes[N, K] * scale)^T. x float32 or bfloat16 (y has x's dtype); codes
// uint8; scale float32 [N] or [1]. use_portable=true skips the AVX-512 path (the tests check both).
torch::Tensor fp8_gemm(const torch::Tensor& x, const torch::Tensor& codes,
                       const torch::Tensor& scale, bool use_portable) {
  TORCH_CHECK(x.dim() == 2 && (x.dtype() == torch::kFloat32 || x.dtype() == torch::kBFloat16),
              "fp8: x must be 2-D float32 or bfloat16");
  const bool per_channel = check_scale(codes, scale);
  const int64_t M = x.size(0), K = x.size(1), N = codes.size(0);
  TORCH_CHECK(codes.size(1) == K, "fp8: codes have ", codes.size(1), " columns; x has ", K);
  const torch::Tensor xf = x.to(torch::kFloat32).contiguous();  // accumulate in float32
  torch::Tensor y = torch::empty({M, N}, xf.options());
  const float* xp = xf.data_ptr<float>();
  const uint8_t* wp = codes.data_ptr<uint8_t>();
  const float* sp = scale.data_ptr<float>();
  float* yp = y.data_ptr<float>();
#ifdef __AVX512F__
  if (!use_portable) {
    gemm_avx512(xp, wp, sp, per_channel, yp, M, N, K);
    return y.to(x.dtype());
  }
#endif
  gemm_portable(xp, wp, sp, per_channel, yp, M, N, K);
  return y.to(x.dtype());
}

// codes[N, K] * scale -> float32 [N, K]: the prefill path's weight, and the embedding-free check.
torch::Tensor fp8_dequantize(const torch::Tensor& codes, const torch::Tensor& scale) {
  const bool per_channel = check_scale(codes, scale);
  const int64_t N = codes.size(0), K = codes.size(1);
  torch::Tensor y = torch::empty({N, K}, codes.options().dtype(torch::kFloat32));
  const uint8_t* wp = codes.data_ptr<uint8_t>();
  const float* sp = scale.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const std::array<float, 256>& table = e4m3_table();
  at::parallel_for(0, N, grain_for(K), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const uint8_t* row = wp + n * K;
      float* out = yp + n * K;
      const float s = per_channel ? sp[n] : sp[0];
      int64_t k = 0;
#ifdef __AVX512F__
      const __m512 vs = _mm512_set1_ps(s * 256.f);
      for (; k + 32 <= K; k += 32) {
        __m512 w0, w1;
        decode32(row + k, w0, w1);
        _mm512_storeu_ps(out + k, _mm512_mul_ps(w0, vs));
        _mm512_storeu_ps(out + k + 16, _mm512_mul_ps(w1, vs));
      }
#endif
      for (; k < K; ++k) out[k] = table[row[k]] * s;
    }
  });
  return y;
}

TORCH_LIBRARY_FRAGMENT(vllm_mini_C, m) {
  m.def("fp8_gemm(Tensor x, Tensor codes, Tensor scale, bool use_portable=False) -> Tensor");
  m.def("fp8_dequantize(Tensor codes, Tensor scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(vllm_mini_C, CPU, m) {
  m.impl("fp8_gemm", &fp8_gemm);
  m.impl("fp8_dequantize", &fp8_dequantize);
}
