// GGUF matmul with int8 activations: y = x @ dequant(W)^T computed as integer block dot products
// (AVX-512 VNNI). Stage 7.
//
// The role vLLM's GGUF kernels play (csrc/quantization/gguf/ in vLLM's history, CUDA only; the
// GGUF method has since moved to the separate vllm-gguf-plugin), done the way llama.cpp does it
// on a CPU: the activations are quantized too, so the inner loop is integer arithmetic.
// csrc/cpu/gguf_gemm.cpp, the float kernel, decodes each weight block to floats and does float
// FMAs; at a few rows of x (a decode batch, a speculative verify) it is compute-bound. Here:
//
// 1. x [M, K] is quantized per 32-block, like ggml's Q8_0/Q8_1 "vec_dot_type": a float scale
//    dx = max|x| / 127 and 32 int8 codes c = round(x / dx) (round half to even), plus
//    dx * sum(c) for Q4_1's min term (ggml's Q8_1 keeps the same sum).
// 2. For each weight row, two 32-weight blocks fill one 512-bit vector of 64 bytes, in x's order.
//    `_mm512_dpbusd_epi32` multiplies 64 unsigned bytes with 64 signed x codes and adds each 4
//    products into 16 int32 lanes (lanes 0-7 block 2p, 8-15 block 2p+1), 64 multiply-adds per
//    instruction. Q4_1's nibbles 0..15 are the unsigned operand as they are. Q4_0's q - 8 and
//    Q8_0's q are signed: the unsigned operand is |q| and the codes take q's sign (llama.cpp's
//    sign trick), so the integer sums stay exact. (Adding 128 to make q unsigned and starting
//    from -128 * sum(c) is exact too, but the large lanes cancel only after the float scaling.)
// 3. Each block's integer sum is scaled once: y += dw * dx * isum (lanes converted to float,
//    times the lane-expanded scales), and for Q4_1 y += sum over blocks of m * dx * sum(c).
//
// The weight row is decoded once per call into an L1 buffer and then used by every row of x,
// 8 rows at a time (a tile's accumulators stay in registers). The result differs from the float
// kernel by the rounding of x to 8 bits (relative error ~0.5% of a block's largest |x| per
// element, far below the 4-bit weights' own error); the torch reference,
// gguf_ops.gguf_matmul_q8_reference, quantizes x the same way and the two agree to float
// summation order. Where the compiler has no AVX-512 VNNI, a portable scalar loop computes the
// same integers (the Python side then prefers the float kernel, gguf_q8_has_vnni() says which).
//
// Registered as torch.ops.vllm_mini_C.gguf_gemm_q8 next to gguf_gemm (TORCH_LIBRARY_FRAGMENT).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define VLLM_MINI_Q8_VNNI 1
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kQ4_0 = 2, kQ4_1 = 3, kQ8_0 = 8;  // ggml_type enum values

inline float half_to_float(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return static_cast<float>(c10::Half(h, c10::Half::from_bits()));
}

int64_t type_size_of(int64_t type) {
  switch (type) {
    case kQ4_0: return 18;
    case kQ4_1: return 20;
    case kQ8_0: return 34;
  }
  TORCH_CHECK(false, "gguf_gemm_q8: ggml type ", type,
              " is not supported; supported: Q4_0 (2), Q4_1 (3), Q8_0 (8)");
}

// The portable loop's offset subtracted from its unsigned weight byte u: w = dw * (u - offset)
// (+ m); it sums integers exactly before any scaling, so the offset costs it no precision.
constexpr int32_t weight_offset(int64_t type) {
  return type == kQ4_0 ? 8 : (type == kQ8_0 ? 128 : 0);
}

// x quantized per 32-block, padded to an even number of blocks P*2 (a padding block is zeros).
struct QuantizedX {
  int64_t pairs;              // P: block pairs per row
  std::vector<int8_t> codes;  // [M, P*64] int8 codes
  std::vector<float> scale;   // [M, P*16] dx of block 2p in lanes 0-7, of 2p+1 in lanes 8-15
  int64_t sx_stride;          // S: nb rounded up to 16
  std::vector<float> sx;      // [M, S] dx * sum(c) per block (Q4_1's min term), zero-padded
};

// A block's scale and its inverse: dx = amax * (1/127), inv = 1/dx (0 for an all-zero block).
// Written out so that the torch reference can repeat them bit for bit; -ffast-math (setup.py)
// would be free to rewrite 1 / (amax * (1/127)) as 127 * (1 / amax), one rounding different,
// which moves a code sitting near .5 by one: this function alone is compiled with IEEE semantics.
__attribute__((noinline, optimize("no-fast-math"))) float block_scale(float amax, float* inv) {
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
  _mm_storeu_si128((__m128i*)codes, _mm512_cvtepi32_epi8(c0));
  _mm_storeu_si128((__m128i*)(codes + 16), _mm512_cvtepi32_epi8(c1));
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

QuantizedX quantize_x(const float* x, int64_t M, int64_t K) {
  const int64_t nb = K / 32, P = (nb + 1) / 2;
  const int64_t S = (nb + 15) / 16 * 16;
  QuantizedX q{P, std::vector<int8_t>(M * P * 64, 0),
               std::vector<float>(M * P * 16, 0.f), S, std::vector<float>(M * S, 0.f)};
  // Quantizing is ~1% of the matmul's work: one thread unless x is large (a parallel region
  // costs more than quantizing a few rows).
  at::parallel_for(0, M, std::max<int64_t>(1, 65536 / K), [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      for (int64_t b = 0; b < nb; ++b) {
        float dx;
        int32_t csum;
        quantize_block(x + m * K + b * 32, q.codes.data() + m * P * 64 + b * 32, &dx, &csum);
        const int64_t lane0 = m * P * 16 + b * 8;  // block b's 8 lanes in its pair's vector
        for (int l = 0; l < 8; ++l) q.scale[lane0 + l] = dx;
        q.sx[m * S + b] = dx * float(csum);
      }
    }
  });
  return q;
}

// The portable loop: the same integers and the same per-block scaling, one block at a time.
void gemm_portable(const QuantizedX& q, const uint8_t* w, float* y, int64_t M, int64_t N,
                   int64_t K, int64_t type) {
  const int64_t nb = K / 32, P = q.pairs, ts = type_size_of(type), row_bytes = nb * ts;
  const int32_t offset = weight_offset(type);
  at::parallel_for(0, N, std::max<int64_t>(1, 16384 / K), [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> u(K);  // the row's unsigned weight bytes
    std::vector<float> dw(nb), mins(nb, 0.f);
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = w + n * row_bytes + b * ts;
        dw[b] = half_to_float(blk);
        if (type == kQ8_0) {
          for (int j = 0; j < 32; ++j) u[b * 32 + j] = blk[2 + j] ^ 0x80;
        } else {
          const uint8_t* qs = blk + (type == kQ4_1 ? 4 : 2);
          if (type == kQ4_1) mins[b] = half_to_float(blk + 2);
          for (int j = 0; j < 16; ++j) {
            u[b * 32 + j] = qs[j] & 0x0F;
            u[b * 32 + j + 16] = qs[j] >> 4;
          }
        }
      }
      for (int64_t m = 0; m < M; ++m) {
        const int8_t* c = q.codes.data() + m * P * 64;
        float acc = 0.f;
        for (int64_t b = 0; b < nb; ++b) {
          int32_t isum = 0, csum = 0;
          for (int j = 0; j < 32; ++j) {
            isum += int32_t(u[b * 32 + j]) * c[b * 32 + j];
            csum += c[b * 32 + j];
          }
          const float dx = q.scale[m * P * 16 + b * 8];
          acc += dw[b] * dx * float(isum - offset * csum) + mins[b] * dx * float(csum);
        }
        y[m * N + n] = acc;
      }
    }
  });
}

#ifdef VLLM_MINI_Q8_VNNI
// Two blocks of one weight row -> 64 bytes in x's order (block 2p's 32 weights, then block
// 2p+1's): Q4_1 unsigned q, Q4_0 and Q8_0 signed; `second` is null for an odd row's last block
// (its half stays zero).
template <int64_t T>
inline __m512i weight_pair(const uint8_t* first, const uint8_t* second) {
  if constexpr (T == kQ8_0) {
    const __m256i lo = _mm256_loadu_si256((const __m256i*)(first + 2));
    const __m256i hi = second ? _mm256_loadu_si256((const __m256i*)(second + 2))
                              : _mm256_setzero_si256();
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
  } else {
    constexpr int64_t qs = T == kQ4_1 ? 4 : 2;
    // 128-bit lanes [qs0, qs0, qs1, qs1]; lanes 1 and 3 take the high nibbles (weights 16-31).
    const __m128i q0 = _mm_loadu_si128((const __m128i*)(first + qs));
    const __m128i q1 = second ? _mm_loadu_si128((const __m128i*)(second + qs)) : _mm_setzero_si128();
    const __m512i v = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_broadcastsi128_si256(q0)), _mm256_broadcastsi128_si256(q1), 1);
    const __m512i nib = _mm512_mask_blend_epi64(0xCC, v, _mm512_srli_epi16(v, 4));
    const __m512i q = _mm512_and_si512(nib, _mm512_set1_epi8(0x0F));
    if constexpr (T == kQ4_1) return q;
    // Q4_0: q - 8; a missing second block must decode to 0, not -8.
    return _mm512_maskz_sub_epi8(second ? ~__mmask64(0) : __mmask64(0xFFFFFFFFull), q,
                                 _mm512_set1_epi8(8));
  }
}

inline float f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);  // F16C: every AVX-512 core has it
}

// R rows of x (from row m0) against one weight row, pair of blocks by pair:
//   acc[r] += float(dpbusd(0, weights, codes)) * (dw * dx)   [+ m * dx * sum(c) for Q4_1].
// Mode kDecode decodes the weight row from its bytes, kDecodeStore also saves the decoded
// vectors in u/dws for the next tiles of the same row, kLoad reads them back from there. Q4_1's
// min term is one dot product per row of x at the end, over the blocks' m (ms) and dx*sum(c).
enum TileMode { kDecode, kDecodeStore, kLoad };

template <int64_t T, int R, TileMode kMode>
inline void tile_dot(const QuantizedX& q, int64_t m0, const uint8_t* row, int64_t nb, uint8_t* u,
                     float* dws, float* ms, float* out) {
  constexpr int64_t ts = T == kQ4_0 ? 18 : (T == kQ4_1 ? 20 : 34);
  const int64_t P = q.pairs;
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t p = 0; p < P; ++p) {
    __m512i wv;
    __m512 dw;
    if constexpr (kMode == kLoad) {
      wv = _mm512_loadu_si512(u + p * 64);
      dw = _mm512_loadu_ps(dws + p * 16);
    } else {
      const uint8_t* b0 = row + 2 * p * ts;
      const bool has_second = 2 * p + 1 < nb;
      wv = weight_pair<T>(b0, has_second ? b0 + ts : nullptr);
      dw = _mm512_insertf32x8(_mm512_set1_ps(f16(b0)),
                              _mm256_set1_ps(has_second ? f16(b0 + ts) : 0.f), 1);
      if constexpr (kMode == kDecodeStore) {
        _mm512_storeu_si512(u + p * 64, wv);
        _mm512_storeu_ps(dws + p * 16, dw);
      }
    }
    // Signed weights: |q| is the unsigned operand, and the codes are negated where q < 0.
    __mmask64 negative = 0;
    __m512i uv = wv;
    if constexpr (T != kQ4_1) {
      negative = _mm512_movepi8_mask(wv);
      uv = _mm512_abs_epi8(wv);
    }
    for (int r = 0; r < R; ++r) {
      const int64_t at = (m0 + r) * P + p;
      __m512i c = _mm512_loadu_si512(q.codes.data() + at * 64);
      if constexpr (T != kQ4_1) c = _mm512_mask_sub_epi8(c, negative, _mm512_setzero_si512(), c);
      const __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), uv, c);
      const __m512 scale = _mm512_mul_ps(dw, _mm512_loadu_ps(q.scale.data() + at * 16));
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc[r]);
    }
  }
  if constexpr (T == kQ4_1) {  // + sum over blocks of m * dx * sum(c): ms holds the row's m
    if constexpr (kMode != kLoad) {
      for (int64_t b = 0; b < nb; ++b) ms[b] = f16(row + b * ts + 2);
    }
    for (int64_t j = 0; j < q.sx_stride; j += 16) {
      const __m512 mv = _mm512_loadu_ps(ms + j);
      for (int r = 0; r < R; ++r)
        acc[r] = _mm512_fmadd_ps(mv, _mm512_loadu_ps(q.sx.data() + (m0 + r) * q.sx_stride + j), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = _mm512_reduce_add_ps(acc[r]);
}

template <int64_t T, TileMode kMode>
inline void tile_any(int64_t rows, const QuantizedX& q, int64_t m0, const uint8_t* row,
                     int64_t nb, uint8_t* u, float* dws, float* ms, float* out) {
  switch (rows) {
    case 1: tile_dot<T, 1, kMode>(q, m0, row, nb, u, dws, ms, out); break;
    case 2: tile_dot<T, 2, kMode>(q, m0, row, nb, u, dws, ms, out); break;
    case 3: tile_dot<T, 3, kMode>(q, m0, row, nb, u, dws, ms, out); break;
    case 4: tile_dot<T, 4, kMode>(q, m0, row, nb, u, dws, ms, out); break;
    case 5: tile_dot<T, 5, kMode>(q, m0, row, nb, u, dws, ms, out); break;
    case 6: tile_dot<T, 6, kMode>(q, m0, row, nb, u, dws, ms, out); break;
    case 7: tile_dot<T, 7, kMode>(q, m0, row, nb, u, dws, ms, out); break;
    default: tile_dot<T, 8, kMode>(q, m0, row, nb, u, dws, ms, out);
  }
}

template <int64_t T>
void gemm_vnni(const QuantizedX& q, const uint8_t* w, float* y, int64_t M, int64_t N, int64_t K) {
  const int64_t nb = K / 32, P = q.pairs, row_bytes = nb * type_size_of(T);
  constexpr int64_t kTile = 8;  // 8 accumulators + the weight vectors fit AVX-512's 32 registers
  at::parallel_for(0, N, std::max<int64_t>(1, 16384 / K), [&](int64_t begin, int64_t end) {
    // The decoded row for tiles after the first (M > 8): P vectors of 64 weight bytes and of 16
    // lane-expanded dw and m (plain buffers: std::vector<__m512i> would drop its alignment).
    std::vector<uint8_t> u(P * 64);
    std::vector<float> dws(P * 16), ms(q.sx_stride, 0.f);  // ms: the row's Q4_1 mins, padded
    float out[kTile];
    for (int64_t n = begin; n < end; ++n) {
      const uint8_t* row = w + n * row_bytes;
      for (int64_t m0 = 0; m0 < M; m0 += kTile) {
        const int64_t rows = std::min<int64_t>(kTile, M - m0);
        if (M <= kTile)
          tile_any<T, kDecode>(rows, q, m0, row, nb, u.data(), dws.data(), ms.data(), out);
        else if (m0 == 0)
          tile_any<T, kDecodeStore>(rows, q, m0, row, nb, u.data(), dws.data(), ms.data(), out);
        else
          tile_any<T, kLoad>(rows, q, m0, row, nb, u.data(), dws.data(), ms.data(), out);
        for (int64_t r = 0; r < rows; ++r) y[(m0 + r) * N + n] = out[r];
      }
    }
  });
}
#endif

}  // namespace

// y[M, N] = quantize_q8(x[M, K]) . dequant(qweight[N, bytes])^T, x float32, qweight Q4_0/Q4_1/Q8_0.
// use_portable=true runs the scalar loop even where VNNI is built (the tests check both).
torch::Tensor gguf_gemm_q8(const torch::Tensor& x, const torch::Tensor& qweight, int64_t type,
                           bool use_portable) {
  const int64_t ts = type_size_of(type);
  TORCH_CHECK(x.dtype() == torch::kFloat32 && x.dim() == 2, "gguf_gemm_q8: x must be 2-D float32");
  TORCH_CHECK(qweight.dtype() == torch::kUInt8 && qweight.dim() == 2 && qweight.is_contiguous(),
              "gguf_gemm_q8: qweight must be a contiguous 2-D uint8 tensor");
  const int64_t M = x.size(0), K = x.size(1), N = qweight.size(0);
  TORCH_CHECK(K % 32 == 0, "gguf_gemm_q8: x has ", K, " columns, not whole blocks of 32");
  TORCH_CHECK(qweight.size(1) == K / 32 * ts, "gguf_gemm_q8: qweight has ", qweight.size(1),
              " bytes per row, expected ", K / 32 * ts, " for ", K, " columns");
  const torch::Tensor xc = x.contiguous();
  torch::Tensor y = torch::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const QuantizedX q = quantize_x(xc.data_ptr<float>(), M, K);
  const uint8_t* wp = qweight.data_ptr<uint8_t>();
  float* yp = y.data_ptr<float>();
#ifdef VLLM_MINI_Q8_VNNI
  if (!use_portable) {
    switch (type) {
      case kQ4_0: gemm_vnni<kQ4_0>(q, wp, yp, M, N, K); return y;
      case kQ4_1: gemm_vnni<kQ4_1>(q, wp, yp, M, N, K); return y;
      default: gemm_vnni<kQ8_0>(q, wp, yp, M, N, K); return y;
    }
  }
#endif
  gemm_portable(q, wp, yp, M, N, K, type);
  return y;
}

// Whether gguf_gemm_q8 was built with its VNNI loop (else only the slow portable one exists).
bool gguf_q8_has_vnni() {
#ifdef VLLM_MINI_Q8_VNNI
  return true;
#else
  return false;
#endif
}

TORCH_LIBRARY_FRAGMENT(vllm_mini_C, m) {
  m.def("gguf_gemm_q8(Tensor x, Tensor qweight, int type, bool use_portable=False) -> Tensor");
  m.def("gguf_q8_has_vnni", &gguf_q8_has_vnni);  // no tensor arguments: one kernel for all
}

TORCH_LIBRARY_IMPL(vllm_mini_C, CPU, m) { m.impl("gguf_gemm_q8", &gguf_gemm_q8); }
