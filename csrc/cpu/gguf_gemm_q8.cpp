// GGUF matmul with int8 activations: y = x @ dequant(W)^T from integer block dot products
// (AVX-512 VNNI), the same arithmetic for every row of x however many share the call. Stage 7.
//
// The role vLLM's GGUF kernels play (csrc/quantization/gguf/ in vLLM's history, CUDA only; the
// GGUF method has since moved to the separate vllm-gguf-plugin), done the way llama.cpp does it
// on a CPU: x is quantized per 32-block to int8 (gguf_q8_quantize.hpp), and each weight block
// meets each x block as one exact integer sum, scaled once.
//
// Weights: repacked once at load (gguf_q8.pack_q8) from the file's row-major blocks into groups
// of 16 rows. One packed group-block holds block b of rows 16g..16g+15: their quants first, as
// vectors whose 32-bit lane l is 4 consecutive weights of row 16g+l (4-bit: 4 zmm, low nibbles
// weights 4i..4i+3, high nibbles 16+4i..; Q8_0: 8 zmm of q + 128), then the 16 scales dw
// (float16), then Q4_1's 16 mins. Same bytes as the file's blocks, only reordered.
//
// Why that layout: `_mm512_dpbusd_epi32(acc, w, broadcast(4 codes of x))` adds 4 products into
// each of 16 lanes, so 8 of them leave in lane l the whole block's integer dot product of row
// 16g+l with x, 16 output columns at once, with no horizontal sums. Per block and row of x:
//   isum = dot(q, c) - offset * sum(c)                   (exact; offset 8 Q4_0, 128 Q8_0)
//   acc  = fma(float(isum), dw * dx, acc)                (blocks in order b = 0, 1, ...)
//   accm = fma(m, dx * sum(c), accm)                      (Q4_1's min term)
//   y    = acc + accm
// That is the fixed order of the float steps for an output (m, n), and nothing in it depends
// on M, on the tile of rows m falls in, or on the thread: rows are tiled for speed (a decoded
// weight block in registers serves up to 8 rows) and threads split the output columns N, never
// K. Hence batch invariance: a row's result is bit for bit the same alone, in a decode batch of
// 7, in a speculative verify or in a 500-token prefill (tests/quantization/test_gguf_q8_kernel.py
// checks it), which greedy decoding needs to be independent of its batch neighbours.
//
// The portable loop (no VNNI, or use_portable=true) does the same float steps in the same order
// and is bit-identical. The float64 torch reference is gguf_q8.gguf_matmul_q8_reference.
// Registered as torch.ops.vllm_mini_C.gguf_gemm_q8 next to gguf_gemm (TORCH_LIBRARY_FRAGMENT).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "gguf_q8_quantize.hpp"

namespace {

using gguf_q8::QuantizedX;

constexpr int64_t kQ4_0 = 2, kQ4_1 = 3, kQ8_0 = 8;  // ggml_type enum values
constexpr int64_t kGroup = 16;                      // weight rows per packed group (16 lanes)

constexpr int64_t quant_bytes(int64_t type) { return type == kQ8_0 ? 512 : 256; }
// Bytes of one packed group-block: quants, 16 float16 dw, Q4_1's 16 float16 mins.
constexpr int64_t packed_bytes(int64_t type) {
  return quant_bytes(type) + (type == kQ4_1 ? 64 : 32);
}

int64_t checked_packed_bytes(int64_t type) {
  TORCH_CHECK(type == kQ4_0 || type == kQ4_1 || type == kQ8_0, "gguf_gemm_q8: ggml type ", type,
              " is not supported; supported: Q4_0 (2), Q4_1 (3), Q8_0 (8)");
  return packed_bytes(type);
}

inline float half_to_float(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return static_cast<float>(c10::Half(h, c10::Half::from_bits()));
}

// Weight j (0..31) of lane l in a packed group-block, as the unsigned byte the dot product uses.
inline int32_t packed_weight(const uint8_t* gb, int64_t type, int l, int j) {
  const int quad = j / 4, t = j % 4;
  if (type == kQ8_0) return gb[64 * quad + 4 * l + t];
  const uint8_t byte = gb[64 * (quad % 4) + 4 * l + t];
  return quad < 4 ? (byte & 0x0F) : (byte >> 4);
}

// One output of the portable loop: the same integers, the same float steps in the same order.
// IEEE semantics (no -ffast-math; a separate function, as a lambda would not inherit the
// attribute), so the compiler may not reassociate or vectorize the sum over blocks.
__attribute__((noinline, optimize("no-fast-math"))) float portable_output(
    const QuantizedX& q, const uint8_t* group, int64_t m, int l, int64_t type) {
  const int64_t nb = q.blocks, pb = packed_bytes(type), qb = quant_bytes(type);
  float acc = 0.f, accm = 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* gb = group + b * pb;
    const int8_t* c = q.codes + m * q.cols + b * 32;
    int32_t isum = 0;
    for (int j = 0; j < 32; ++j) isum += packed_weight(gb, type, l, j) * c[j];
    isum -= q.corr[m * nb + b];
    const float s = half_to_float(gb + qb + 2 * l) * q.dx[m * nb + b];
    acc = std::fma(static_cast<float>(isum), s, acc);
    if (type == kQ4_1) accm = std::fma(half_to_float(gb + qb + 32 + 2 * l), q.sx[m * nb + b], accm);
  }
  return type == kQ4_1 ? acc + accm : acc;
}

void gemm_portable(const QuantizedX& q, const uint8_t* w, float* y, int64_t N, int64_t type) {
  const int64_t group_bytes = q.blocks * packed_bytes(type);
  const int64_t groups = (N + kGroup - 1) / kGroup;
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g)
      for (int64_t m = 0; m < q.rows; ++m)
        for (int l = 0; l < kGroup && g * kGroup + l < N; ++l)
          y[m * N + g * kGroup + l] = portable_output(q, w + g * group_bytes, m, l, type);
  });
}

#ifdef VLLM_MINI_Q8_VNNI
// A group-block's 8 weight vectors: w[j] pairs with x's codes j*4..j*4+3 of the block.
template <int64_t T>
inline void load_weights(const uint8_t* gb, __m512i* w) {
  if constexpr (T == kQ8_0) {
    for (int j = 0; j < 8; ++j) w[j] = _mm512_loadu_si512(gb + 64 * j);
  } else {
    const __m512i low = _mm512_set1_epi8(0x0F);
    for (int i = 0; i < 4; ++i) {
      const __m512i v = _mm512_loadu_si512(gb + 64 * i);
      w[i] = _mm512_and_si512(v, low);
      w[i + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
    }
  }
}

inline __m512i bcast4(const int8_t* p) {  // 4 codes into every 32-bit lane
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// R rows of x (from m0) against one group of 16 weight rows: out[r] gets 16 outputs.
template <int64_t T, int R>
inline void tile(const QuantizedX& q, int64_t m0, const uint8_t* group, __m512* out) {
  constexpr int64_t pb = packed_bytes(T), qb = quant_bytes(T);
  const int64_t nb = q.blocks, K = q.cols;
  __m512 acc[R], accm[R];
  for (int r = 0; r < R; ++r) acc[r] = accm[r] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* gb = group + b * pb;
    _mm_prefetch(reinterpret_cast<const char*>(gb + 8 * pb), _MM_HINT_T0);
    __m512i w[8];
    load_weights<T>(gb, w);
    const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(gb + qb)));
    __m512 mw = _mm512_setzero_ps();
    if constexpr (T == kQ4_1)
      mw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(gb + qb + 32)));
    for (int r = 0; r < R; ++r) {
      const int64_t i = (m0 + r) * nb + b;
      const int8_t* c = q.codes + (m0 + r) * K + b * 32;
      // Two integer chains (exact, so how they split is free) halve the dpbusd latency chain.
      __m512i s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[0], bcast4(c));
      __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[1], bcast4(c + 4));
      for (int j = 2; j < 8; j += 2) {
        s0 = _mm512_dpbusd_epi32(s0, w[j], bcast4(c + 4 * j));
        s1 = _mm512_dpbusd_epi32(s1, w[j + 1], bcast4(c + 4 * j + 4));
      }
      __m512i isum = _mm512_add_epi32(s0, s1);
      if constexpr (T != kQ4_1) isum = _mm512_sub_epi32(isum, _mm512_set1_epi32(q.corr[i]));
      const __m512 s = _mm512_mul_ps(dw, _mm512_set1_ps(q.dx[i]));
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), s, acc[r]);
      if constexpr (T == kQ4_1) accm[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(q.sx[i]), accm[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = T == kQ4_1 ? _mm512_add_ps(acc[r], accm[r]) : acc[r];
}

template <int64_t T>
inline void tile_rows(int64_t rows, const QuantizedX& q, int64_t m0, const uint8_t* g,
                      __m512* out) {
  switch (rows) {
    case 1: tile<T, 1>(q, m0, g, out); break;
    case 2: tile<T, 2>(q, m0, g, out); break;
    case 3: tile<T, 3>(q, m0, g, out); break;
    case 4: tile<T, 4>(q, m0, g, out); break;
    case 5: tile<T, 5>(q, m0, g, out); break;
    case 6: tile<T, 6>(q, m0, g, out); break;
    case 7: tile<T, 7>(q, m0, g, out); break;
    default: tile<T, 8>(q, m0, g, out);
  }
}

template <int64_t T>
void gemm_vnni(const QuantizedX& q, const uint8_t* w, float* y, int64_t N) {
  const int64_t nb = q.blocks, M = q.rows, group_bytes = nb * packed_bytes(T);
  const int64_t groups = (N + kGroup - 1) / kGroup;
  // 8 rows: 8 weight vectors + 16 accumulators (Q4_1) + scales stay in AVX-512's 32 registers.
  constexpr int64_t kTile = 8;
  // Rows per pass over this thread's groups: their codes (chunk * K bytes) stay in L2 while
  // each group's weights (16 * K * 5/8 bytes for Q4_1, in L1) serve all of them.
  constexpr int64_t kChunk = 64;
  // A task gets >= ~16k weights x rows, so the threads' start-up cost stays small.
  const int64_t grain = std::max<int64_t>(1, 16384 / (kGroup * q.cols * std::min<int64_t>(M, 8)));
  at::parallel_for(0, groups, grain, [&](int64_t begin, int64_t end) {
    __m512 out[kTile];
    for (int64_t c0 = 0; c0 < M; c0 += kChunk) {
      const int64_t c1 = std::min(M, c0 + kChunk);
      for (int64_t g = begin; g < end; ++g) {
        const int64_t n0 = g * kGroup;
        const __mmask16 lanes = N - n0 >= kGroup ? __mmask16(0xFFFF) : __mmask16((1u << (N - n0)) - 1);
        for (int64_t m0 = c0; m0 < c1; m0 += kTile) {
          const int64_t rows = std::min(kTile, c1 - m0);
          tile_rows<T>(rows, q, m0, w + g * group_bytes, out);
          for (int64_t r = 0; r < rows; ++r) _mm512_mask_storeu_ps(y + (m0 + r) * N + n0, lanes, out[r]);
        }
      }
    }
  });
}
#endif

}  // namespace

// y[M, N] = quantize_q8(x[M, K]) . dequant(W)^T, x float32, W packed by gguf_q8.pack_q8 into
// [ceil(N / 16), K / 32 * packed_bytes] uint8 (Q4_0/Q4_1/Q8_0). use_portable=true runs the
// scalar loop even where VNNI is built (the tests check both, bit for bit).
torch::Tensor gguf_gemm_q8(const torch::Tensor& x, const torch::Tensor& packed, int64_t type,
                           int64_t N, bool use_portable) {
  const int64_t pb = checked_packed_bytes(type);
  TORCH_CHECK(x.dtype() == torch::kFloat32 && x.dim() == 2, "gguf_gemm_q8: x must be 2-D float32");
  TORCH_CHECK(packed.dtype() == torch::kUInt8 && packed.dim() == 2 && packed.is_contiguous(),
              "gguf_gemm_q8: packed must be a contiguous 2-D uint8 tensor");
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(K % 32 == 0, "gguf_gemm_q8: x has ", K, " columns, not whole blocks of 32");
  TORCH_CHECK(N >= 0 && packed.size(0) == (N + kGroup - 1) / kGroup, "gguf_gemm_q8: packed has ",
              packed.size(0), " groups of 16 rows, expected ", (N + kGroup - 1) / kGroup, " for ",
              N, " rows");
  TORCH_CHECK(packed.size(1) == K / 32 * pb, "gguf_gemm_q8: packed has ", packed.size(1),
              " bytes per group, expected ", K / 32 * pb, " for ", K, " columns");
  const torch::Tensor xc = x.contiguous();
  torch::Tensor y = torch::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const int32_t offset = type == kQ4_0 ? 8 : (type == kQ8_0 ? 128 : 0);
  const QuantizedX q = gguf_q8::quantize_x(xc.data_ptr<float>(), M, K, offset, type == kQ4_1);
  const uint8_t* wp = packed.data_ptr<uint8_t>();
  float* yp = y.data_ptr<float>();
#ifdef VLLM_MINI_Q8_VNNI
  if (!use_portable) {
    switch (type) {
      case kQ4_0: gemm_vnni<kQ4_0>(q, wp, yp, N); return y;
      case kQ4_1: gemm_vnni<kQ4_1>(q, wp, yp, N); return y;
      default: gemm_vnni<kQ8_0>(q, wp, yp, N); return y;
    }
  }
#endif
  gemm_portable(q, wp, yp, N, type);
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
  m.def("gguf_gemm_q8(Tensor x, Tensor packed, int type, int n, bool use_portable=False) -> Tensor");
  m.def("gguf_q8_has_vnni", &gguf_q8_has_vnni);  // no tensor arguments: one kernel for all
}

TORCH_LIBRARY_IMPL(vllm_mini_C, CPU, m) { m.impl("gguf_gemm_q8", &gguf_gemm_q8); }
