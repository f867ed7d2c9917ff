// GGUF matmul on the CPU: y = x @ dequant(W)^T, decoding W's blocks inside the kernel. Stage 7.
//
// The role vLLM's GGUF kernels play (csrc/quantization/gguf/ in vLLM's history, CUDA only; the
// GGUF method has since moved to the separate vllm-gguf-plugin). W stays in memory as GGUF block
// bytes, [rows, bytes_per_row] uint8, so a batch-1 decode step reads ~0.6 byte per weight
// (Q4_1) instead of 4 (float32): decode is memory-bound, so fewer bytes is the whole speed-up.
//
// Design: output rows are split over torch's threads (at::parallel_for); for each row n
// - Q4_0, Q4_1, Q8_0 with AVX-512 (the fused path): each 32-weight block is widened to two
//   vectors of 16 float levels in registers and multiplied with up to 8 rows of x at once;
// - every other format (and the portable build): the row is decoded into a float buffer of K
//   values (it stays in L1/L2), then dotted with each of the M rows of x.
// Either way a row's bytes are read once per call however many tokens share it, and all
// arithmetic is float32 (x is never quantized here; csrc/cpu/gguf_gemm_q8.cpp is the int8
// version, llama.cpp's way, which quantization/gguf.py uses by default for Q4_0/Q4_1/Q8_0 with
// float32 x at every token count; this kernel serves the other block types, bfloat16 x and
// VLLM_MINI_GGUF_INT8_ACT=0), so the result differs from the float reference only in
// summation order. For a big M (prefill) the caller in
// quantization/gguf.py decodes the whole matrix once with `gguf_dequantize` and uses the float
// GEMM instead: there, arithmetic, not reading the weight, is the bottleneck.
// Each block decoder mirrors the torch reference in
// vllm_mini/model_executor/layers/quantization/utils/gguf_quants.py (layouts documented there);
// tests/quantization/ checks the two against each other for every type.
//
// Registered as torch ops in the `vllm_mini_C` namespace (torch.ops.vllm_mini_C.gguf_gemm, ...) with
// TORCH_LIBRARY_FRAGMENT, so several source files of vllm_mini._C can each add their own ops.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <cstring>
#include <vector>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace {

// ggml_type enum values (the `gguf` package's GGMLQuantizationType).
enum GGMLType : int64_t {
  kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8,
  kQ4_K = 12, kQ5_K = 13, kQ6_K = 14, kBF16 = 30,
};

inline float fp16_to_fp32(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
#ifdef __F16C__
  return _cvtsh_ss(h);
#else
  // Portable IEEE half -> float: move sign, rebias the exponent, widen the mantissa.
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (man << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal half: normalise it
    exp = 113;
    while (!(man & 0x400)) { man <<= 1; --exp; }
    bits = sign | (exp << 23) | ((man & 0x3FF) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
#endif
}

// ---- block decoders: one block's bytes -> block_size floats ----------------------------------

void deq_q4_0(const uint8_t* b, float* y) {
  const float d = fp16_to_fp32(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * float(int(qs[j] & 0x0F) - 8);
    y[j + 16] = d * float(int(qs[j] >> 4) - 8);
  }
}

void deq_q4_1(const uint8_t* b, float* y) {
  const float d = fp16_to_fp32(b), m = fp16_to_fp32(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * float(qs[j] & 0x0F) + m;
    y[j + 16] = d * float(qs[j] >> 4) + m;
  }
}

inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

void deq_q5_0(const uint8_t* b, float* y) {
  const float d = fp16_to_fp32(b);
  const uint32_t qh = load_u32(b + 2);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0F) | (((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    y[j] = d * float(lo - 16);
    y[j + 16] = d * float(hi - 16);
  }
}

void deq_q5_1(const uint8_t* b, float* y) {
  const float d = fp16_to_fp32(b), m = fp16_to_fp32(b + 2);
  const uint32_t qh = load_u32(b + 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0F) | (((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    y[j] = d * float(lo) + m;
    y[j + 16] = d * float(hi) + m;
  }
}

void deq_q8_0(const uint8_t* b, float* y) {
  const float d = fp16_to_fp32(b);
  const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < 32; ++j) y[j] = float(qs[j]) * d;
}

// Q4_K/Q5_K: scale and min of sub-block j (0..7), 6 bits each, packed in 12 bytes.
inline void k_scale_min(int j, const uint8_t* s, int* sc, int* mn) {
  if (j < 4) {
    *sc = s[j] & 63;
    *mn = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
    *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

void deq_q4_k(const uint8_t* b, float* y) {
  const float d = fp16_to_fp32(b), dmin = fp16_to_fp32(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qs = b + 16;
  for (int pair = 0; pair < 4; ++pair) {  // 64 weights: sub-blocks 2*pair and 2*pair + 1
    int sc0, m0, sc1, m1;
    k_scale_min(2 * pair, scales, &sc0, &m0);
    k_scale_min(2 * pair + 1, scales, &sc1, &m1);
    const float d0 = d * float(sc0), o0 = dmin * float(m0);
    const float d1 = d * float(sc1), o1 = dmin * float(m1);
    const uint8_t* q = qs + 32 * pair;
    float* out = y + 64 * pair;
    for (int l = 0; l < 32; ++l) {
      out[l] = d0 * float(q[l] & 0x0F) - o0;
      out[l + 32] = d1 * float(q[l] >> 4) - o1;
    }
  }
}

void deq_q5_k(const uint8_t* b, float* y) {
  const float d = fp16_to_fp32(b), dmin = fp16_to_fp32(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + 48;
  for (int pair = 0; pair < 4; ++pair) {
    int sc0, m0, sc1, m1;
    k_scale_min(2 * pair, scales, &sc0, &m0);
    k_scale_min(2 * pair + 1, scales, &sc1, &m1);
    const float d0 = d * float(sc0), o0 = dmin * float(m0);
    const float d1 = d * float(sc1), o1 = dmin * float(m1);
    const uint8_t* q = qs + 32 * pair;
    float* out = y + 64 * pair;
    for (int l = 0; l < 32; ++l) {
      const int lo = (q[l] & 0x0F) | (((qh[l] >> (2 * pair)) & 1) << 4);
      const int hi = (q[l] >> 4) | (((qh[l] >> (2 * pair + 1)) & 1) << 4);
      out[l] = d0 * float(lo) - o0;
      out[l + 32] = d1 * float(hi) - o1;
    }
  }
}

void deq_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = fp16_to_fp32(b + 208);
  for (int half = 0; half < 2; ++half) {  // 128 weights from 64 ql bytes and 32 qh bytes
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = (d * float(sc[is])) * float(q1);
      y[l + 32] = (d * float(sc[is + 2])) * float(q2);
      y[l + 64] = (d * float(sc[is + 4])) * float(q3);
      y[l + 96] = (d * float(sc[is + 6])) * float(q4);
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

void deq_f32(const uint8_t* b, float* y) { std::memcpy(y, b, 4); }
void deq_f16(const uint8_t* b, float* y) { *y = fp16_to_fp32(b); }
void deq_bf16(const uint8_t* b, float* y) {
  uint32_t bits = uint32_t(b[0] | (b[1] << 8)) << 16;
  std::memcpy(y, &bits, 4);
}

struct BlockFormat {
  int64_t block_size;  // weights per block
  int64_t type_size;   // bytes per block
  void (*decode)(const uint8_t*, float*);
};

BlockFormat block_format(int64_t type) {
  switch (type) {
    case kF32: return {1, 4, deq_f32};
    case kF16: return {1, 2, deq_f16};
    case kBF16: return {1, 2, deq_bf16};
    case kQ4_0: return {32, 18, deq_q4_0};
    case kQ4_1: return {32, 20, deq_q4_1};
    case kQ5_0: return {32, 22, deq_q5_0};
    case kQ5_1: return {32, 24, deq_q5_1};
    case kQ8_0: return {32, 34, deq_q8_0};
    case kQ4_K: return {256, 144, deq_q4_k};
    case kQ5_K: return {256, 176, deq_q5_k};
    case kQ6_K: return {256, 210, deq_q6_k};
  }
  TORCH_CHECK(false, "gguf: ggml type ", type, " is not supported by the kernel; supported: "
              "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K");
}

inline void decode_row(const uint8_t* row, float* y, int64_t num_blocks, const BlockFormat& f) {
  for (int64_t b = 0; b < num_blocks; ++b) f.decode(row + b * f.type_size, y + b * f.block_size);
}

inline float dot(const float* a, const float* b, int64_t n) {
#ifdef __AVX512F__
  // Four independent accumulators hide the FMA latency.
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  __m512 acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 64 <= n; k += 64) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k), _mm512_loadu_ps(b + k), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k + 16), _mm512_loadu_ps(b + k + 16), acc1);
    acc2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k + 32), _mm512_loadu_ps(b + k + 32), acc2);
    acc3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k + 48), _mm512_loadu_ps(b + k + 48), acc3);
  }
  for (; k + 16 <= n; k += 16)
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k), _mm512_loadu_ps(b + k), acc0);
  float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
  for (; k < n; ++k) s += a[k] * b[k];
  return s;
#else
  float s = 0.f;  // -ffast-math lets the compiler split this sum into vector lanes
  for (int64_t k = 0; k < n; ++k) s += a[k] * b[k];
  return s;
#endif
}

#ifdef __AVX512F__
// Fused fast path for the 32-weight formats (SmolLM2's Q4_1 layers and Q8_0 table): decode one
// block into two vectors of 16 integer levels (as floats) and multiply them with R rows of x
// straight away, so the decoded weights never leave registers. The block's scale d multiplies
// the block's partial sums once (sum d*q*x = d * sum q*x), and Q4_1's offset m is added as
// m * sum(x over the block), with those sums computed once per call.
template <int64_t T>
inline void decode32(const uint8_t* b, __m512& w0, __m512& w1, float& d, float& m) {
  d = fp16_to_fp32(b);
  if constexpr (T == kQ8_0) {
    m = 0.f;
    w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(b + 2))));
    w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(b + 18))));
  } else {
    const int64_t qs_offset = T == kQ4_1 ? 4 : 2;
    m = T == kQ4_1 ? fp16_to_fp32(b + 2) : 0.f;
    // 16 bytes -> 16 int32 lanes; low nibbles are weights 0-15, high nibbles weights 16-31.
    const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(b + qs_offset)));
    __m512i lo = _mm512_and_si512(q, _mm512_set1_epi32(0x0F));
    __m512i hi = _mm512_srli_epi32(q, 4);
    if constexpr (T == kQ4_0) {  // Q4_0 stores q + 8
      lo = _mm512_sub_epi32(lo, _mm512_set1_epi32(8));
      hi = _mm512_sub_epi32(hi, _mm512_set1_epi32(8));
    }
    w0 = _mm512_cvtepi32_ps(lo);
    w1 = _mm512_cvtepi32_ps(hi);
  }
}

// out[r] = dot(row, x[r]) for R rows of x (R <= 8: R accumulators stay in registers, next to
// the two decoded weight vectors; AVX-512 has 32 of them).
template <int64_t T, int R>
inline void fused_dot_rows(const uint8_t* row, const float* x, int64_t K, int64_t num_blocks,
                           int64_t type_size, const float* xsum, float* out) {
  __m512 acc[R];
  float offset[R];
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm512_setzero_ps();
    offset[r] = 0.f;
  }
  for (int64_t b = 0; b < num_blocks; ++b) {
    __m512 w0, w1;
    float d, m;
    decode32<T>(row + b * type_size, w0, w1, d, m);
    const __m512 vd = _mm512_set1_ps(d);
    for (int r = 0; r < R; ++r) {
      const float* xp = x + r * K + b * 32;
      __m512 s = _mm512_mul_ps(w0, _mm512_loadu_ps(xp));
      s = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xp + 16), s);
      acc[r] = _mm512_fmadd_ps(s, vd, acc[r]);
      if constexpr (T == kQ4_1) offset[r] += m * xsum[r * num_blocks + b];
    }
  }
  for (int r = 0; r < R; ++r) out[r] = _mm512_reduce_add_ps(acc[r]) + offset[r];
}

template <int64_t T>
void fused_gemm(const float* x, const uint8_t* w, float* y, int64_t M, int64_t N, int64_t K,
                int64_t type_size) {
  const int64_t num_blocks = K / 32, row_bytes = num_blocks * type_size;
  std::vector<float> xsum(M * num_blocks, 0.f);  // [M, num_blocks]: sum of x over each block
  if constexpr (T == kQ4_1) {
    for (int64_t i = 0; i < M * num_blocks; ++i)
      for (int j = 0; j < 32; ++j) xsum[i] += x[i * 32 + j];
  }
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1));
  // Tiles of up to 8 rows of x share one decode of each weight block. 8, not 4: a speculative-
  // decoding step verifies 1 + k tokens (stage 11), and with k = 4 a 4-row tile would decode
  // every block twice for the fifth token.
  constexpr int64_t kTile = 8;
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    float out[kTile];
    for (int64_t n = begin; n < end; ++n) {
      const uint8_t* row = w + n * row_bytes;
      for (int64_t m0 = 0; m0 < M; m0 += kTile) {
        const float* xt = x + m0 * K;
        const float* st = xsum.data() + m0 * num_blocks;
        const int64_t rows = std::min<int64_t>(kTile, M - m0);
        switch (rows) {
          case 1: fused_dot_rows<T, 1>(row, xt, K, num_blocks, type_size, st, out); break;
          case 2: fused_dot_rows<T, 2>(row, xt, K, num_blocks, type_size, st, out); break;
          case 3: fused_dot_rows<T, 3>(row, xt, K, num_blocks, type_size, st, out); break;
          case 4: fused_dot_rows<T, 4>(row, xt, K, num_blocks, type_size, st, out); break;
          case 5: fused_dot_rows<T, 5>(row, xt, K, num_blocks, type_size, st, out); break;
          case 6: fused_dot_rows<T, 6>(row, xt, K, num_blocks, type_size, st, out); break;
          case 7: fused_dot_rows<T, 7>(row, xt, K, num_blocks, type_size, st, out); break;
          default: fused_dot_rows<T, 8>(row, xt, K, num_blocks, type_size, st, out);
        }
        for (int64_t r = 0; r < rows; ++r) y[(m0 + r) * N + n] = out[r];
      }
    }
  });
}
#endif

void check_weight(const torch::Tensor& qweight, const BlockFormat& f, int64_t cols) {
  TORCH_CHECK(qweight.dtype() == torch::kUInt8 && qweight.dim() == 2 && qweight.is_contiguous(),
              "gguf: qweight must be a contiguous 2-D uint8 tensor");
  TORCH_CHECK(cols % f.block_size == 0, "gguf: ", cols, " columns is not whole blocks of ",
              f.block_size);
  TORCH_CHECK(qweight.size(1) == cols / f.block_size * f.type_size, "gguf: qweight has ",
              qweight.size(1), " bytes per row, expected ", cols / f.block_size * f.type_size,
              " for ", cols, " columns");
}

}  // namespace

// y[M, N] = x[M, K] @ dequant(qweight[N, bytes])^T, x float32.
// use_portable=true skips the AVX-512 path (the tests check both against the reference).
torch::Tensor gguf_gemm(const torch::Tensor& x, const torch::Tensor& qweight, int64_t type,
                        bool use_portable) {
  const BlockFormat f = block_format(type);
  TORCH_CHECK(x.dtype() == torch::kFloat32 && x.dim() == 2, "gguf: x must be 2-D float32");
  const int64_t M = x.size(0), K = x.size(1), N = qweight.size(0);
  check_weight(qweight, f, K);
  const torch::Tensor xc = x.contiguous();
  torch::Tensor y = torch::empty({M, N}, x.options());
  const float* xp = xc.data_ptr<float>();
  const uint8_t* wp = qweight.data_ptr<uint8_t>();
  float* yp = y.data_ptr<float>();
#ifdef __AVX512F__
  if (!use_portable) {
    switch (type) {
      case kQ4_0: fused_gemm<kQ4_0>(xp, wp, yp, M, N, K, f.type_size); return y;
      case kQ4_1: fused_gemm<kQ4_1>(xp, wp, yp, M, N, K, f.type_size); return y;
      case kQ8_0: fused_gemm<kQ8_0>(xp, wp, yp, M, N, K, f.type_size); return y;
      default: break;  // the other formats: decode a row, then dot products
    }
  }
#endif
  const int64_t row_bytes = qweight.size(1), num_blocks = K / f.block_size;
  // Each task decodes at least ~16k weights, so the threads' start-up cost stays small.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> w(K);  // one decoded row: [K]
    for (int64_t n = begin; n < end; ++n) {
      decode_row(wp + n * row_bytes, w.data(), num_blocks, f);
      for (int64_t m = 0; m < M; ++m) yp[m * N + n] = dot(w.data(), xp + m * K, K);
    }
  });
  return y;
}

// [N, bytes] blocks -> [N, cols] float32 (the embedding lookup, and prefill's float GEMM).
torch::Tensor gguf_dequantize(const torch::Tensor& qweight, int64_t type, int64_t cols) {
  const BlockFormat f = block_format(type);
  check_weight(qweight, f, cols);
  const int64_t N = qweight.size(0), row_bytes = qweight.size(1), num_blocks = cols / f.block_size;
  torch::Tensor y = torch::empty({N, cols}, qweight.options().dtype(torch::kFloat32));
  const uint8_t* wp = qweight.data_ptr<uint8_t>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N, std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) decode_row(wp + n * row_bytes, yp + n * cols, num_blocks, f);
  });
  return y;
}

TORCH_LIBRARY_FRAGMENT(vllm_mini_C, m) {
  m.def("gguf_gemm(Tensor x, Tensor qweight, int type, bool use_portable=False) -> Tensor");
  m.def("gguf_dequantize(Tensor qweight, int type, int cols) -> Tensor");
}

TORCH_LIBRARY_IMPL(vllm_mini_C, CPU, m) {
  m.impl("gguf_gemm", &gguf_gemm);
  m.impl("gguf_dequantize", &gguf_dequantize);
}
