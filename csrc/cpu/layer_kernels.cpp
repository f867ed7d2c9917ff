// The small per-layer ops of a decoder block as single CPU kernels: RMSNorm (with the residual
// add fused in), SiLU-and-mul, and rotary embedding. Stage 2 ops, made fast for issue 19.
//
// Mirrors vLLM's CPU backend, csrc/cpu/layernorm.cpp, csrc/cpu/activation.cpp and
// csrc/cpu/pos_encoding.cpp (registered in csrc/cpu/torch_bindings.cpp). Why they exist: at batch 1
// a decode step of a small model spends more time launching ~30 tiny torch ops per layer (each a
// dispatch, an allocation and a pass over a few KiB) than computing them; one call per op removes
// most of that. The torch references are the layers' `forward_native` methods
// (vllm_mini/model_executor/layers/layernorm.py, activation.py, rotary_embedding.py), and
// tests/layers/test_cpu_fused_ops.py compares every kernel with them.
//
// Numerics. Arithmetic is float32. For bfloat16 the kernels round to bf16 exactly where the torch
// reference (and Hugging Face's Llama code, which it copies) does, so greedy bf16 outputs stay as
// they were: the residual sum is rounded before the norm reads it, the normalised value is rounded
// before the weight multiplies it, silu's result is rounded before the multiply, and each rotary
// product is rounded before the sum. vLLM's kernels keep float32 throughout instead (more exact,
// but a different token now and then). Those roundings cost three integer ops per vector.
//
// Layout: every tensor is a stack of rows whose last dimension is contiguous; rows may be any
// stride apart (q and k are column slices of the qkv projection's output), so no copy is needed.
// Rows are split over threads with at::parallel_for, whose grain size keeps a small call (a
// batch-1 decode step) on the calling thread: starting a parallel region costs microseconds, more
// than normalising one row. Each kernel has an AVX-512 path (compile time, `-march=native`) and a
// portable scalar one, selectable with `portable=True` for the tests. Next: fused_cpu_ops.py.

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef __AVX512F__
#include "cpu_types_x86.hpp"
#include "cpu_vec_io.hpp"
#endif

namespace {

using c10::BFloat16;

// About this many elements per thread before a second thread is worth waking.
constexpr int64_t kElemsPerTask = 16384;

int64_t grain_rows(int64_t width) { return std::max<int64_t>(1, kElemsPerTask / width); }

// Calls f with a value of the C++ type of dtype (float32 or bfloat16; the callers checked).
template <typename F>
void dispatch_float_bf16(at::ScalarType dtype, F&& f) {
  if (dtype == at::kFloat)
    f(float{});
  else
    f(BFloat16{});
}

// Round a float to the nearest representable value of scalar_t, kept as a float.
inline float round_as(float x, float) { return x; }
inline float round_as(float x, BFloat16) { return static_cast<float>(BFloat16(x)); }
template <typename scalar_t>
inline float round_to(float x) { return round_as(x, scalar_t()); }

// ---- AVX-512 loads and stores of 16 lanes, masked for the tail of a row (cpu_vec_io.hpp) ----
#ifdef __AVX512F__
using cpu_vec::lanes;
using cpu_vec::load;
using cpu_vec::round_v;
using cpu_vec::store;
#endif

// ---- RMSNorm ---------------------------------------------------------------------------------
// One row: optionally res <- round(x + res) first (then the norm reads res), then
// out = round(w * round(v * rsqrt(mean(v^2) + eps))). `out` may be `x` (the in-place fused op).
template <typename scalar_t, bool kAdd>
void norm_row(scalar_t* out, const scalar_t* x, scalar_t* res, const scalar_t* w, int64_t d,
              float eps, bool portable) {
  const scalar_t* v = kAdd ? res : x;
  float inv;
#ifdef __AVX512F__
  if (!portable) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < d; i += 16) {
      const __mmask16 m = lanes(d - i);
      __m512 a = load(x + i, m);
      if (kAdd) {
        a = round_v<scalar_t>(_mm512_add_ps(a, load(res + i, m)));
        store(res + i, a, m);
      }
      acc = _mm512_fmadd_ps(a, a, acc);
    }
    inv = static_cast<float>(1.0 / std::sqrt(double(_mm512_reduce_add_ps(acc)) / d + eps));
    const __m512 vinv = _mm512_set1_ps(inv);
    for (int64_t i = 0; i < d; i += 16) {
      const __mmask16 m = lanes(d - i);
      const __m512 n = round_v<scalar_t>(_mm512_mul_ps(load(v + i, m), vinv));
      store(out + i, _mm512_mul_ps(load(w + i, m), n), m);
    }
    return;
  }
#endif
  float acc = 0.f;
  for (int64_t i = 0; i < d; ++i) {
    float a = static_cast<float>(x[i]);
    if (kAdd) {
      a = round_to<scalar_t>(a + static_cast<float>(res[i]));
      res[i] = static_cast<scalar_t>(a);
    }
    acc += a * a;
  }
  inv = static_cast<float>(1.0 / std::sqrt(double(acc) / d + eps));
  for (int64_t i = 0; i < d; ++i) {
    const float n = round_to<scalar_t>(static_cast<float>(v[i]) * inv);
    out[i] = static_cast<scalar_t>(static_cast<float>(w[i]) * n);
  }
}

// A tensor as rows of its last dimension: [rows, d] with a row stride, from a 2-D tensor or a 3-D
// one whose rows are evenly spaced (e.g. [tokens, heads, head_dim] of a contiguous buffer), or
// [a, b, d] with two strides (the heads of a column slice, Qwen3's q_norm input).
struct Rows {
  int64_t n0, n1, s0, s1, d;
  int64_t count() const { return n0 * n1; }
  int64_t offset(int64_t r) const { return (r / n1) * s0 + (r % n1) * s1; }
};

Rows as_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() >= 1 && t.dim() <= 3, name, " must have 1 to 3 dims, got ", t.dim());
  TORCH_CHECK(t.size(-1) == 0 || t.stride(-1) == 1, name,
              "'s last dim must be contiguous (stride 1), got stride ", t.stride(-1));
  const int64_t d = t.size(-1);
  if (t.dim() == 1) return {1, 1, d, d, d};
  if (t.dim() == 2) return {t.size(0), 1, t.stride(0), d, d};
  return {t.size(0), t.size(1), t.stride(0), t.stride(1), d};
}

void check_norm_args(const at::Tensor& x, const at::Tensor& weight, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, name,
              " dtype must be float32 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "weight dtype (", weight.scalar_type(),
              ") must equal ", name, "'s (", x.scalar_type(), ")");
  TORCH_CHECK(weight.dim() == 1 && weight.is_contiguous() && weight.size(0) == x.size(-1),
              "weight must be contiguous [", x.size(-1), "], got ", weight.sizes());
}

void rms_norm(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight, double eps,
              bool portable) {
  check_norm_args(input, weight, "input");
  TORCH_CHECK(out.sizes() == input.sizes() && out.scalar_type() == input.scalar_type(),
              "out must have input's shape and dtype");
  const Rows ri = as_rows(input, "input"), ro = as_rows(out, "out");
  dispatch_float_bf16(input.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* x = input.data_ptr<scalar_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    const scalar_t* w = weight.data_ptr<scalar_t>();
    at::parallel_for(0, ri.count(), grain_rows(ri.d), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        norm_row<scalar_t, false>(y + ro.offset(r), x + ri.offset(r), nullptr, w, ri.d, eps,
                                  portable);
    });
  });
}

void fused_add_rms_norm(at::Tensor& input, at::Tensor& residual, const at::Tensor& weight,
                        double eps, bool portable) {
  check_norm_args(input, weight, "input");
  TORCH_CHECK(residual.sizes() == input.sizes() && residual.scalar_type() == input.scalar_type(),
              "residual must have input's shape and dtype");
  const Rows ri = as_rows(input, "input"), rr = as_rows(residual, "residual");
  dispatch_float_bf16(input.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    scalar_t* x = input.data_ptr<scalar_t>();
    scalar_t* res = residual.data_ptr<scalar_t>();
    const scalar_t* w = weight.data_ptr<scalar_t>();
    at::parallel_for(0, ri.count(), grain_rows(ri.d), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* xr = x + ri.offset(r);
        norm_row<scalar_t, true>(xr, xr, res + rr.offset(r), w, ri.d, eps, portable);
      }
    });
  });
}

// ---- SiLU and mul ----------------------------------------------------------------------------
// out[i] = round(round(silu(a[i])) * b[i]), a = input[:d], b = input[d:]; silu(a) = a / (1 + e^-a).
template <typename scalar_t>
void silu_mul_row(scalar_t* out, const scalar_t* a, const scalar_t* b, int64_t d, bool portable) {
#ifdef __AVX512F__
  if (!portable) {
    const __m512 one = _mm512_set1_ps(1.f);
    for (int64_t i = 0; i < d; i += 16) {
      const __mmask16 m = lanes(d - i);
      const __m512 x = load(a + i, m);
      // e^-x for x >= -88 only: below that e^-x overflows and silu(x) is -0 anyway.
      const __m512 e = cpu_x86::exp512(_mm512_min_ps(_mm512_sub_ps(_mm512_setzero_ps(), x),
                                                     _mm512_set1_ps(88.f)));
      const __m512 s = round_v<scalar_t>(_mm512_div_ps(x, _mm512_add_ps(one, e)));
      store(out + i, _mm512_mul_ps(s, load(b + i, m)), m);
    }
    return;
  }
#endif
  for (int64_t i = 0; i < d; ++i) {
    const float x = static_cast<float>(a[i]);
    const float s = round_to<scalar_t>(x / (1.f + std::exp(std::min(-x, 88.f))));
    out[i] = static_cast<scalar_t>(s * static_cast<float>(b[i]));
  }
}

void silu_and_mul(at::Tensor& out, const at::Tensor& input, bool portable) {
  TORCH_CHECK(input.device().is_cpu(), "input must be on the CPU");
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kBFloat16,
              "input dtype must be float32 or bfloat16, got ", input.scalar_type());
  TORCH_CHECK(input.dim() == 2 && input.size(1) % 2 == 0,
              "input must be [tokens, 2 * d], got ", input.sizes());
  const int64_t d = input.size(1) / 2;
  TORCH_CHECK(out.dim() == 2 && out.size(0) == input.size(0) && out.size(1) == d &&
                  out.scalar_type() == input.scalar_type(),
              "out must be [", input.size(0), ", ", d, "] of input's dtype, got ", out.sizes());
  const Rows ri = as_rows(input, "input"), ro = as_rows(out, "out");
  dispatch_float_bf16(input.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* x = input.data_ptr<scalar_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    at::parallel_for(0, ri.count(), grain_rows(2 * d), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        silu_mul_row<scalar_t>(y + ro.offset(r), x + ri.offset(r), x + ri.offset(r) + d, d,
                               portable);
    });
  });
}

// ---- Rotary embedding ------------------------------------------------------------------------
// NeoX pairing: element i of a head pairs with i + rot/2 (HF's rotate_half). cs = [cos | sin] of
// this token's position, each rot/2 long. Products are rounded like the torch reference's.
template <typename scalar_t>
void rope_neox_head(scalar_t* x, const scalar_t* cs, int64_t half, bool portable) {
#ifdef __AVX512F__
  if (!portable) {
    for (int64_t i = 0; i < half; i += 16) {
      const __mmask16 m = lanes(half - i);
      const __m512 c = load(cs + i, m), s = load(cs + half + i, m);
      const __m512 x1 = load(x + i, m), x2 = load(x + half + i, m);
      const __m512 y1 = _mm512_sub_ps(round_v<scalar_t>(_mm512_mul_ps(x1, c)),
                                      round_v<scalar_t>(_mm512_mul_ps(x2, s)));
      const __m512 y2 = _mm512_add_ps(round_v<scalar_t>(_mm512_mul_ps(x2, c)),
                                      round_v<scalar_t>(_mm512_mul_ps(x1, s)));
      store(x + i, y1, m);
      store(x + half + i, y2, m);
    }
    return;
  }
#endif
  for (int64_t i = 0; i < half; ++i) {
    const float c = static_cast<float>(cs[i]), s = static_cast<float>(cs[half + i]);
    const float x1 = static_cast<float>(x[i]), x2 = static_cast<float>(x[half + i]);
    x[i] = static_cast<scalar_t>(round_to<scalar_t>(x1 * c) - round_to<scalar_t>(x2 * s));
    x[half + i] = static_cast<scalar_t>(round_to<scalar_t>(x2 * c) + round_to<scalar_t>(x1 * s));
  }
}

// GPT-J pairing: elements 2i and 2i+1 rotate together by angle i. Scalar only (rare here).
template <typename scalar_t>
void rope_gptj_head(scalar_t* x, const scalar_t* cs, int64_t half) {
  for (int64_t i = 0; i < half; ++i) {
    const float c = static_cast<float>(cs[i]), s = static_cast<float>(cs[half + i]);
    const float x1 = static_cast<float>(x[2 * i]), x2 = static_cast<float>(x[2 * i + 1]);
    x[2 * i] = static_cast<scalar_t>(round_to<scalar_t>(x1 * c) - round_to<scalar_t>(x2 * s));
    x[2 * i + 1] = static_cast<scalar_t>(round_to<scalar_t>(x2 * c) + round_to<scalar_t>(x1 * s));
  }
}

// A [tokens, heads * head_size] (or [tokens, heads, head_size]) tensor: heads per token, row stride.
std::pair<int64_t, int64_t> heads_and_stride(const at::Tensor& t, int64_t head_size,
                                             const char* name) {
  TORCH_CHECK(t.dim() == 2 || t.dim() == 3, name, " must be [tokens, heads * head_size], got ",
              t.sizes());
  TORCH_CHECK(t.stride(-1) == 1 && (t.dim() == 2 || (t.size(2) == head_size && t.stride(1) == head_size)), name,
              " must be contiguous within a token (any token stride)");
  const int64_t per_token = t.dim() == 2 ? t.size(1) : t.size(1) * t.size(2);
  TORCH_CHECK(per_token % head_size == 0, name, "'s width ", per_token,
              " is not a multiple of head_size ", head_size);
  return {per_token / head_size, t.stride(0)};
}

void rotary_embedding(const at::Tensor& positions, at::Tensor& query, at::Tensor& key,
                      int64_t head_size, const at::Tensor& cos_sin_cache, bool is_neox,
                      bool portable) {
  TORCH_CHECK(query.scalar_type() == at::kFloat || query.scalar_type() == at::kBFloat16,
              "query dtype must be float32 or bfloat16, got ", query.scalar_type());
  TORCH_CHECK(key.scalar_type() == query.scalar_type() &&
                  cos_sin_cache.scalar_type() == query.scalar_type(),
              "key and cos_sin_cache must have query's dtype");
  TORCH_CHECK(positions.scalar_type() == at::kLong || positions.scalar_type() == at::kInt,
              "positions must be int64 or int32, got ", positions.scalar_type());
  TORCH_CHECK(positions.dim() == 1 && positions.is_contiguous(),
              "positions must be a contiguous [tokens] tensor");
  const int64_t tokens = positions.size(0);
  TORCH_CHECK(query.size(0) == tokens && key.size(0) == tokens,
              "query and key must have one row per position (", tokens, ")");
  TORCH_CHECK(cos_sin_cache.dim() == 2 && cos_sin_cache.is_contiguous(),
              "cos_sin_cache must be a contiguous [max_position, rotary_dim] tensor");
  const int64_t rot = cos_sin_cache.size(1);
  TORCH_CHECK(rot % 2 == 0 && rot >= 2 && rot <= head_size,
              "rotary_dim (cos_sin_cache.size(1) = ", rot, ") must be even, in [2, head_size = ",
              head_size, "]");
  const auto [q_heads, q_stride] = heads_and_stride(query, head_size, "query");
  const auto [k_heads, k_stride] = heads_and_stride(key, head_size, "key");
  const int64_t max_pos = cos_sin_cache.size(0), half = rot / 2;
  dispatch_float_bf16(query.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    scalar_t* q = query.data_ptr<scalar_t>();
    scalar_t* k = key.data_ptr<scalar_t>();
    const scalar_t* cache = cos_sin_cache.data_ptr<scalar_t>();
    const int64_t width = (q_heads + k_heads) * rot;
    at::parallel_for(0, tokens, grain_rows(width), [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t pos = positions.scalar_type() == at::kLong
                                ? positions.data_ptr<int64_t>()[t]
                                : positions.data_ptr<int32_t>()[t];
        TORCH_CHECK(pos >= 0 && pos < max_pos, "position ", pos, " is outside [0, ", max_pos,
                    ") of cos_sin_cache");
        const scalar_t* cs = cache + pos * rot;
        for (int64_t h = 0; h < q_heads + k_heads; ++h) {
          scalar_t* x = h < q_heads ? q + t * q_stride + h * head_size
                                    : k + t * k_stride + (h - q_heads) * head_size;
          if (is_neox)
            rope_neox_head<scalar_t>(x, cs, half, portable);
          else
            rope_gptj_head<scalar_t>(x, cs, half);
        }
      }
    });
  });
}

}  // namespace

// `Tensor(a!)` marks an argument the op writes in place, so torch.compile's functionalization
// knows the op mutates it (vLLM's schemas in csrc/cpu/torch_bindings.cpp say the same with `!`).
TORCH_LIBRARY_FRAGMENT(vllm_mini_C, m) {
  m.def(
      "rms_norm(Tensor(a!) out, Tensor input, Tensor weight, float eps, bool portable=False) "
      "-> ()");
  m.def(
      "fused_add_rms_norm(Tensor(a!) input, Tensor(b!) residual, Tensor weight, float eps, "
      "bool portable=False) -> ()");
  m.def("silu_and_mul(Tensor(a!) out, Tensor input, bool portable=False) -> ()");
  m.def(
      "rotary_embedding(Tensor positions, Tensor(a!) query, Tensor(b!) key, int head_size, "
      "Tensor cos_sin_cache, bool is_neox, bool portable=False) -> ()");
}

TORCH_LIBRARY_IMPL(vllm_mini_C, CPU, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("fused_add_rms_norm", &fused_add_rms_norm);
  m.impl("silu_and_mul", &silu_and_mul);
  m.impl("rotary_embedding", &rotary_embedding);
}
