// Dense GEMM for the CPU: y = x @ W^T (+ bias) for float32 and bfloat16 weights, packed at load.
//
// Stage 2 (the CPU fast path of every unquantized linear layer and the LM head). Takes the place
// of vllm/csrc/cpu/dnnl_kernels.cpp, through which vLLM's CPU backend runs oneDNN's matmul on
// prepacked weights (our `onednn` backend does the same); newer vLLM also carries its own CPU
// GEMMs on repacked weights (csrc/cpu/sgl-kernels/gemm.cpp, csrc/cpu/micro_gemm/).
// Our own layout and loop. The weight is repacked at load time (layers/utils.py, `pack_dense`):
//   float32   [N/16, K, 16]: column block b, row k, column j holds W[16b + j, k];
//   bfloat16  [N/16, K/2, 16, 2]: column block b, row pair p, column j holds the two weights
//             W[16b + j, 2p] and W[16b + j, 2p + 1] next to each other.
// One 64-byte load is then one AVX-512 register: 16 columns of one row (float32), or 16 columns
// of two rows (bfloat16, the pair that `vdpbf16ps` multiplies with a pair of x and adds into 16
// float32 sums). Each column block is one contiguous run of memory.
//
// The register tile. The kernel computes a 6-row x 64-column piece of y at a time: 6 x 4 = 24
// accumulator registers (of AVX-512's 32). Per step along k it loads 4 weight registers and
// broadcasts one x value per row, then does 24 fused multiply-adds: every weight load feeds 6
// FMAs and every x broadcast feeds 4. That ratio is what makes the loop compute-bound instead of
// load-bound. At decode (1 row) there is nothing to reuse and the loop is a plain stream through
// the weight: the weight bytes are the whole cost, and a contiguous layout read by both cores
// is what gets them from memory fastest.
//
// Cache blocking. For 7+ rows the same 64 columns are read again for each group of 6 rows; that
// panel (4 blocks x K x 4 or 2 bytes x 16) should come from L2, so K is cut into chunks whose
// panel stays under kPanelBytes, the partial sums kept in float between chunks (one chunk for
// SmolLM2's bfloat16 layers, two for its float32 down_proj).
//
// Work split (`run`): at decode sizes (up to 6 rows) at::parallel_for over 16-column blocks, each
// thread streaming its own contiguous part of the weight; with more rows, over 64-column tiles x
// groups of rows, so that both threads stay busy on a layer of few tiles. Measured against
// oneDNN's matmul, each on weights packed once, over a whole SmolLM2 step's 121 matmuls
// (benchmarks/cpu_gemm.py): 1.0-1.3x at 1-64 rows, 0.96-0.99x at 256-1024 (benchmarks/RESULTS.md). Two implementations, as in
// w4a16_gemm.cpp: intrinsics where the compiler targets AVX-512 (and AVX512-BF16 for bfloat16),
// plain loops elsewhere (the tests run both, `portable=True`). Called from layers/utils.py.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int kBlockN = 16;    // output columns per block: one AVX-512 register of floats
constexpr int kTileRows = 6;   // rows per register tile (6 x 4 blocks = 24 accumulators)
constexpr int kTileBlocks = 4;
constexpr int64_t kPanelBytes = 256 * 1024;  // one k chunk of a 4-block weight panel

template <typename T>
struct Problem {
  const T* x;  // [M, K], row stride ldx
  int64_t ldx;
  const T* w;          // packed, see the top
  const float* bias;   // [N] or nullptr
  T* out;              // [M, N]
  int64_t M, K, N;
};

inline float to_float(float v) { return v; }
inline float to_float(c10::BFloat16 v) { return static_cast<float>(v); }

// Weight (row k, column j) of block b in the packed layout.
inline float weight_at(const Problem<float>& p, int64_t b, int64_t k, int j) {
  return p.w[(b * p.K + k) * kBlockN + j];
}
inline float weight_at(const Problem<c10::BFloat16>& p, int64_t b, int64_t k, int j) {
  return static_cast<float>(p.w[((b * (p.K / 2) + k / 2) * kBlockN + j) * 2 + k % 2]);
}

// Rows [m0, m0 + MT) x blocks [b0, b0 + NBT) over k in [k0, k1), plain loops. `first`: start
// from the bias (or zero) instead of the float partial sums of the previous k chunks; `last`:
// write y (in T) instead of partial sums.
template <int MT, int NBT, typename T>
void tile_portable(const Problem<T>& p, int64_t m0, int64_t b0, int64_t k0, int64_t k1,
                   bool first, bool last, float* partial) {
  float acc[MT][NBT * kBlockN];
  for (int m = 0; m < MT; ++m)
    for (int c = 0; c < NBT * kBlockN; ++c)
      acc[m][c] = first ? (p.bias ? p.bias[b0 * kBlockN + c] : 0.f)
                        : partial[(m0 + m) * p.N + b0 * kBlockN + c];
  for (int64_t k = k0; k < k1; ++k)
    for (int m = 0; m < MT; ++m) {
      const float xv = to_float(p.x[(m0 + m) * p.ldx + k]);
      for (int nb = 0; nb < NBT; ++nb)
        for (int j = 0; j < kBlockN; ++j)
          acc[m][nb * kBlockN + j] += xv * weight_at(p, b0 + nb, k, j);
    }
  for (int m = 0; m < MT; ++m)
    for (int c = 0; c < NBT * kBlockN; ++c) {
      const int64_t at = (m0 + m) * p.N + b0 * kBlockN + c;
      if (last)
        p.out[at] = static_cast<T>(acc[m][c]);
      else
        partial[at] = acc[m][c];
    }
}

#if defined(__AVX512F__)
template <int MT, int NBT, typename T>
inline void load_sums(const Problem<T>& p, int64_t m0, int64_t b0, bool first,
                      const float* partial, __m512 (&acc)[MT][NBT]) {
  for (int m = 0; m < MT; ++m)
    for (int nb = 0; nb < NBT; ++nb) {
      const int64_t col = (b0 + nb) * kBlockN;
      acc[m][nb] = !first  ? _mm512_loadu_ps(partial + (m0 + m) * p.N + col)
                   : p.bias ? _mm512_loadu_ps(p.bias + col)
                            : _mm512_setzero_ps();
    }
}

template <int MT, int NBT>
void tile_avx512(const Problem<float>& p, int64_t m0, int64_t b0, int64_t k0, int64_t k1,
                 bool first, bool /*last: float32 sums are y already*/, float* partial) {
  __m512 acc[MT][NBT];
  load_sums<MT, NBT>(p, m0, b0, first, partial, acc);
  const float* xr = p.x + m0 * p.ldx;
  for (int64_t k = k0; k < k1; ++k) {
    __m512 w[NBT];
#pragma GCC unroll 4
    for (int nb = 0; nb < NBT; ++nb) w[nb] = _mm512_loadu_ps(p.w + ((b0 + nb) * p.K + k) * kBlockN);
#pragma GCC unroll 6
    for (int m = 0; m < MT; ++m) {
      const __m512 xv = _mm512_set1_ps(xr[m * p.ldx + k]);
#pragma GCC unroll 4
      for (int nb = 0; nb < NBT; ++nb) acc[m][nb] = _mm512_fmadd_ps(xv, w[nb], acc[m][nb]);
    }
  }
  for (int m = 0; m < MT; ++m)
    for (int nb = 0; nb < NBT; ++nb)
      _mm512_storeu_ps(partial + (m0 + m) * p.N + (b0 + nb) * kBlockN, acc[m][nb]);
}

#if defined(__AVX512BF16__)
// bfloat16: one `vdpbf16ps` multiplies 16 column pairs by one x pair and adds both products.
template <int MT, int NBT>
void tile_avx512(const Problem<c10::BFloat16>& p, int64_t m0, int64_t b0, int64_t k0, int64_t k1,
                 bool first, bool last, float* partial) {
  __m512 acc[MT][NBT];
  load_sums<MT, NBT>(p, m0, b0, first, partial, acc);
  const int64_t pairs = p.K / 2;
  for (int64_t q = k0 / 2; q < k1 / 2; ++q) {
    __m512bh w[NBT];
#pragma GCC unroll 4
    for (int nb = 0; nb < NBT; ++nb)
      w[nb] = (__m512bh)_mm512_loadu_si512(p.w + ((b0 + nb) * pairs + q) * kBlockN * 2);
#pragma GCC unroll 6
    for (int m = 0; m < MT; ++m) {
      int32_t xpair;  // x[m, 2q] and x[m, 2q + 1], broadcast as one 32-bit lane
      std::memcpy(&xpair, p.x + (m0 + m) * p.ldx + 2 * q, sizeof(xpair));
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(xpair);
#pragma GCC unroll 4
      for (int nb = 0; nb < NBT; ++nb) acc[m][nb] = _mm512_dpbf16_ps(acc[m][nb], xv, w[nb]);
    }
  }
  for (int m = 0; m < MT; ++m)
    for (int nb = 0; nb < NBT; ++nb) {
      const int64_t at = (m0 + m) * p.N + (b0 + nb) * kBlockN;
      if (last)  // round the 16 float sums to bfloat16 (nearest even) straight into y
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(p.out + at),
                            (__m256i)_mm512_cvtneps_pbh(acc[m][nb]));
      else
        _mm512_storeu_ps(partial + at, acc[m][nb]);
    }
}
#endif
#endif

template <typename T>
constexpr bool kHasFastPath =
#if defined(__AVX512F__) && defined(__AVX512BF16__)
    true;
#elif defined(__AVX512F__)
    std::is_same_v<T, float>;
#else
    false;
#endif

template <int MT, int NBT, typename T>
void tile(const Problem<T>& p, int64_t m0, int64_t b0, int64_t k0, int64_t k1, bool first,
          bool last, float* partial, bool portable) {
  if constexpr (kHasFastPath<T>) {
    if (!portable) return tile_avx512<MT, NBT>(p, m0, b0, k0, k1, first, last, partial);
  }
  tile_portable<MT, NBT>(p, m0, b0, k0, k1, first, last, partial);
}

// Rows [m_begin, m_end) of blocks [b0, b0 + NBT) over one k chunk: 6-row tiles, then the 1-5
// left (the tile height is a template argument, so the accumulators stay in registers).
template <int NBT, typename T>
void rows(const Problem<T>& p, int64_t b0, int64_t m_begin, int64_t m_end, int64_t k0,
          int64_t k1, float* partial, bool portable) {
  const bool first = k0 == 0, last = k1 == p.K;
  int64_t m = m_begin;
  for (; m + kTileRows <= m_end; m += kTileRows)
    tile<kTileRows, NBT>(p, m, b0, k0, k1, first, last, partial, portable);
  switch (m_end - m) {
    case 5: return tile<5, NBT>(p, m, b0, k0, k1, first, last, partial, portable);
    case 4: return tile<4, NBT>(p, m, b0, k0, k1, first, last, partial, portable);
    case 3: return tile<3, NBT>(p, m, b0, k0, k1, first, last, partial, portable);
    case 2: return tile<2, NBT>(p, m, b0, k0, k1, first, last, partial, portable);
    case 1: return tile<1, NBT>(p, m, b0, k0, k1, first, last, partial, portable);
  }
}

// Blocks [b_begin, b_end) x rows [m_begin, m_end): k chunk by k chunk, 4-block tiles then
// single blocks.
template <typename T>
void piece(const Problem<T>& p, int64_t b_begin, int64_t b_end, int64_t m_begin, int64_t m_end,
           float* partial, bool portable) {
  // k rows per chunk: the 4-block panel of one chunk stays under kPanelBytes (in L2), chunks of
  // even, near-equal length (bfloat16 reads k in pairs).
  const int64_t max_rows = kPanelBytes / (kTileBlocks * kBlockN * sizeof(T));
  const int64_t chunks = (p.K + max_rows - 1) / max_rows;
  const int64_t chunk = ((p.K + chunks - 1) / chunks + 1) / 2 * 2;
  for (int64_t k0 = 0; k0 < p.K; k0 += chunk) {
    const int64_t k1 = std::min(p.K, k0 + chunk);
    int64_t b = b_begin;
    for (; b + kTileBlocks <= b_end; b += kTileBlocks)
      rows<kTileBlocks>(p, b, m_begin, m_end, k0, k1, partial, portable);
    for (; b < b_end; ++b) rows<1>(p, b, m_begin, m_end, k0, k1, partial, portable);
  }
}

template <typename T>
void run(const Problem<T>& p, float* partial, bool portable) {
  const int64_t NB = p.N / kBlockN;
  if (p.M <= kTileRows) {
    // Decode: one stream through the weight; split by 16-column blocks for an even share.
    at::parallel_for(0, NB, 1, [&](int64_t begin, int64_t end) {
      piece(p, begin, end, 0, p.M, partial, portable);
    });
    return;
  }
  // More rows: the work items are one 64-column tile x one group of row tiles, numbered tile by
  // tile so that a thread's consecutive items share their weights (from L2). Groups are as big
  // as they can be while every thread still gets about 4 items.
  const int64_t tiles = (NB + kTileBlocks - 1) / kTileBlocks;
  const int64_t row_tiles = (p.M + kTileRows - 1) / kTileRows;
  const int64_t want = (4 * at::get_num_threads() + tiles - 1) / tiles;
  const int64_t group_rows = (row_tiles + std::min(row_tiles, want) - 1) /
                             std::min(row_tiles, want) * kTileRows;
  const int64_t groups = (p.M + group_rows - 1) / group_rows;
  at::parallel_for(0, tiles * groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b0 = item / groups * kTileBlocks, m0 = item % groups * group_rows;
      piece(p, b0, std::min(NB, b0 + kTileBlocks), m0, std::min(p.M, m0 + group_rows), partial,
            portable);
    }
  });
}

// x [M, K] float32 or bfloat16 (rows may be strided), packed weight of the same dtype, optional
// bias [N] -> y [M, N] in x's dtype.
torch::Tensor dense_gemm(const torch::Tensor& x, const torch::Tensor& packed,
                         const std::optional<torch::Tensor>& bias, bool portable) {
  TORCH_CHECK(x.dim() == 2 && x.device().is_cpu(), "dense_gemm: x must be a 2-D CPU tensor");
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == torch::kFloat || dtype == torch::kBFloat16,
              "dense_gemm: x must be float32 or bfloat16, got ", dtype);
  TORCH_CHECK(packed.scalar_type() == dtype && packed.is_contiguous(),
              "dense_gemm: the packed weight must be contiguous and of x's dtype (", dtype, ")");
  const bool is_bf16 = dtype == torch::kBFloat16;
  TORCH_CHECK(packed.dim() == (is_bf16 ? 4 : 3) && packed.size(2) == kBlockN &&
                  (!is_bf16 || packed.size(3) == 2),
              "dense_gemm: packed weight must be [N/16, K, 16] (float32) or "
              "[N/16, K/2, 16, 2] (bfloat16), got ", packed.sizes());
  const int64_t M = x.size(0), K = x.size(1), N = packed.size(0) * kBlockN;
  TORCH_CHECK(packed.size(1) * (is_bf16 ? 2 : 1) == K, "dense_gemm: the weight holds K=",
              packed.size(1) * (is_bf16 ? 2 : 1), " but x has K=", K);
  const torch::Tensor xc = x.stride(1) == 1 ? x : x.contiguous();  // rows may be strided
  torch::Tensor bias_f;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N, "dense_gemm: bias must be [", N, "]");
    bias_f = bias->to(torch::kFloat).contiguous();
  }
  torch::Tensor out = torch::empty({M, N}, x.options());
  if (M == 0) return out;
  // Partial sums between k chunks: y itself for float32; a float buffer for bfloat16, needed
  // only when K takes more than one chunk (the last chunk writes y).
  const int64_t max_rows = kPanelBytes / (kTileBlocks * kBlockN * (is_bf16 ? 2 : 4));
  torch::Tensor partial =
      !is_bf16 ? out
               : torch::empty({K > max_rows ? M : 0, N}, x.options().dtype(torch::kFloat));
  const float* b = bias_f.defined() ? bias_f.data_ptr<float>() : nullptr;
  if (is_bf16) {
    using T = c10::BFloat16;
    const Problem<T> p{xc.data_ptr<T>(), xc.stride(0), packed.data_ptr<T>(), b, out.data_ptr<T>(),
                       M, K, N};
    run(p, partial.numel() ? partial.data_ptr<float>() : nullptr, portable);
  } else {
    const Problem<float> p{xc.data_ptr<float>(), xc.stride(0), packed.data_ptr<float>(), b,
                           out.data_ptr<float>(), M, K, N};
    run(p, partial.data_ptr<float>(), portable);
  }
  return out;
}

// Which dtypes have the vector path in this build (bit 0: float32, bit 1: bfloat16); the
// loader packs only those (a plain-loop GEMM would be slower than oneDNN).
int64_t dense_gemm_fast_dtypes() {
  return (kHasFastPath<float> ? 1 : 0) | (kHasFastPath<c10::BFloat16> ? 2 : 0);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vllm_mini_C, m) {
  m.def("dense_gemm(Tensor x, Tensor packed, Tensor? bias, bool portable=False) -> Tensor");
  m.def("dense_gemm_fast_dtypes() -> int");
}

TORCH_LIBRARY_IMPL(vllm_mini_C, CPU, m) { m.impl("dense_gemm", &dense_gemm); }
TORCH_LIBRARY_IMPL(vllm_mini_C, CompositeExplicitAutograd, m) {
  m.impl("dense_gemm_fast_dtypes", &dense_gemm_fast_dtypes);
}
