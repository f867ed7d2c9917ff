// The two row-wise halves of a W8A8 int8 linear layer around the integer matmul: dynamic
// per-token quantization of the activations, and the epilogue that turns int32 sums back into
// floats. Stage 7 (issue 13: W8A8 throughput).
//
// Mirrors vllm/csrc/cpu/dnnl_kernels.cpp's dynamic_scaled_int8_quant and the scale epilogue of its
// int8_scaled_mm (vLLM's CPU backend fuses both into its oneDNN call). The product in between
// stays `torch._int_mm` (oneDNN's VNNI kernel); see
// vllm_mini/model_executor/layers/quantization/utils/w8a8_utils.py for the formula:
//
//   quantize:  s[t] = max(max_i |x[t, i]|, 1e-12) / qmax,  q[t, i] = clamp(round(x[t, i] / s[t]))
//   (qmax = 127, vLLM's; compressed-tensors' own fake quantization divides by 127.5)
//   epilogue:  y[t, o] = (float(acc[t, o]) * s[t]) * w_scale[o]  (+ bias[o]), then x's dtype
//
// Why a kernel. In torch each half is 5-7 ops (upcast, abs, amax, clamp, divide, round, cast;
// cast, two multiplies, add, downcast), each with its own pass over memory and a fresh tensor.
// Measured on SmolLM2's shapes at 64 tokens, they took as long as the int8 matmul itself.
// Here each half is one pass per row.
//
// Numerics: bit for bit the torch reference (w8a8_utils.scaled_int8_quant_reference and
// int8_scaled_mm_reference): the same float32 operations in the same order; division is IEEE in
// both, round is half-to-even in both (torch.round, _MM_FROUND_TO_NEAREST_INT), and the output is
// rounded to bfloat16 once, at the end. tests/quantization/test_int8_quant_kernel.py checks it.
// AVX-512 path (compile time) and a portable loop, selectable with `portable=True` for the tests.
// Next: w8a8_utils.py, which calls these.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#ifdef __AVX512F__
#include "cpu_vec_io.hpp"
#endif

// setup.py compiles every CPU kernel with -ffast-math, which lets gcc turn x / s into
// x * (1 / s) and (acc * xs) * ws into acc * (xs * ws): each a different float now and then.
// gcc also fuses a multiply and an add into one FMA (one rounding instead of two) unless told
// not to. These two passes must equal the torch ops exactly, so this file opts out of both.
#pragma GCC optimize("no-fast-math", "fp-contract=off")

namespace {

using c10::BFloat16;

constexpr float kTiny = 1e-12f;  // an all-zero row's scale (its codes are 0 either way)
constexpr int64_t kElemsPerTask = 16384;  // about this much work before a second thread wakes

template <typename F>
void dispatch_float_bf16(at::ScalarType dtype, F&& f) {
  if (dtype == at::kFloat)
    f(float{});
  else
    f(BFloat16{});
}

void check_float_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, name,
              " dtype must be float32 or bfloat16, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 2 && t.stride(1) == 1, name, " must be 2-D with contiguous rows, got ",
              t.sizes(), " strides ", t.strides());
}

// ---- quantize one row ---------------------------------------------------------------------------
template <typename scalar_t>
float quant_row(int8_t* q, const scalar_t* x, int64_t k, float qmax, bool portable) {
#ifdef __AVX512F__
  if (!portable) {
    __m512 mx = _mm512_setzero_ps();
    for (int64_t i = 0; i < k; i += 16)
      mx = _mm512_max_ps(mx, _mm512_abs_ps(cpu_vec::load(x + i, cpu_vec::lanes(k - i))));
    const float s = std::max(_mm512_reduce_max_ps(mx), kTiny) / qmax;
    const __m512 sv = _mm512_set1_ps(s);
    for (int64_t i = 0; i < k; i += 16) {
      const __mmask16 m = cpu_vec::lanes(k - i);
      __m512 v = _mm512_div_ps(cpu_vec::load(x + i, m), sv);
      v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-128.f)), _mm512_set1_ps(127.f));
      _mm_mask_storeu_epi8(q + i, m, _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(v)));
    }
    return s;
  }
#endif
  float mx = 0.f;
  for (int64_t i = 0; i < k; ++i) mx = std::max(mx, std::fabs(static_cast<float>(x[i])));
  const float s = std::max(mx, kTiny) / qmax;
  for (int64_t i = 0; i < k; ++i) {
    const float v = std::nearbyint(static_cast<float>(x[i]) / s);  // half to even, as torch
    q[i] = static_cast<int8_t>(std::min(std::max(v, -128.f), 127.f));
  }
  return s;
}

void scaled_int8_quant(at::Tensor& out, at::Tensor& scale, const at::Tensor& input, double qmax,
                       bool portable) {
  check_float_rows(input, "input");
  const int64_t t = input.size(0), k = input.size(1);
  TORCH_CHECK(out.scalar_type() == at::kChar && out.sizes() == input.sizes() &&
                  out.is_contiguous(),
              "out must be a contiguous int8 tensor shaped like input ", input.sizes());
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.numel() == t && scale.is_contiguous(),
              "scale must be a contiguous float32 tensor with one value per row (", t, ")");
  float* s = scale.data_ptr<float>();
  int8_t* q = out.data_ptr<int8_t>();
  dispatch_float_bf16(input.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* x = input.data_ptr<scalar_t>();
    const int64_t ld = input.stride(0);
    const float qm = static_cast<float>(qmax);
    at::parallel_for(0, t, std::max<int64_t>(1, kElemsPerTask / k), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r)
        s[r] = quant_row<scalar_t>(q + r * k, x + r * ld, k, qm, portable);
    });
  });
}

// ---- epilogue of one row ------------------------------------------------------------------------
template <typename scalar_t, typename bias_t>
void epilogue_row(scalar_t* y, const int32_t* acc, float xs, const float* ws, bool ws_per_col,
                  const bias_t* bias, int64_t n, bool portable) {
#ifdef __AVX512F__
  if (!portable) {
    const __m512 xv = _mm512_set1_ps(xs), w1 = _mm512_set1_ps(ws[0]);
    for (int64_t o = 0; o < n; o += 16) {
      const __mmask16 m = cpu_vec::lanes(n - o);
      __m512 v = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(m, acc + o));
      v = _mm512_mul_ps(_mm512_mul_ps(v, xv), ws_per_col ? _mm512_maskz_loadu_ps(m, ws + o) : w1);
      if (bias != nullptr) v = _mm512_add_ps(v, cpu_vec::load(bias + o, m));
      cpu_vec::store(y + o, v, m);
    }
    return;
  }
#endif
  for (int64_t o = 0; o < n; ++o) {
    float v = static_cast<float>(acc[o]) * xs * ws[ws_per_col ? o : 0];
    if (bias != nullptr) v += static_cast<float>(bias[o]);
    y[o] = static_cast<scalar_t>(v);
  }
}

void int8_scaled_mm_epilogue(at::Tensor& out, const at::Tensor& acc, const at::Tensor& x_scale,
                             const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                             bool portable) {
  check_float_rows(out, "out");
  TORCH_CHECK(out.is_contiguous(), "out must be contiguous");
  const int64_t t = out.size(0), n = out.size(1);
  TORCH_CHECK(acc.scalar_type() == at::kInt && acc.sizes() == out.sizes() && acc.is_contiguous(),
              "acc must be a contiguous int32 tensor shaped like out ", out.sizes(), ", got ",
              acc.scalar_type(), " ", acc.sizes());
  TORCH_CHECK(x_scale.scalar_type() == at::kFloat && x_scale.numel() == t &&
                  x_scale.is_contiguous(),
              "x_scale must be float32 with one value per row (", t, ")");
  TORCH_CHECK(w_scale.scalar_type() == at::kFloat &&
                  (w_scale.numel() == n || w_scale.numel() == 1) && w_scale.is_contiguous(),
              "w_scale must be float32 with one value per column (", n, ") or one in all");
  if (bias) {
    TORCH_CHECK(bias->numel() == n && bias->is_contiguous() && bias->dim() == 1,
                "bias must be a contiguous [", n, "] tensor");
    TORCH_CHECK(bias->scalar_type() == at::kFloat || bias->scalar_type() == at::kBFloat16,
                "bias dtype must be float32 or bfloat16, got ", bias->scalar_type());
  }
  const int32_t* a = acc.data_ptr<int32_t>();
  const float* xs = x_scale.data_ptr<float>();
  const float* ws = w_scale.data_ptr<float>();
  const bool per_col = w_scale.numel() == n && n != 1;
  const int64_t grain = std::max<int64_t>(1, kElemsPerTask / n);
  dispatch_float_bf16(out.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    scalar_t* y = out.data_ptr<scalar_t>();
    auto run = [&](auto bias_tag, const void* bias_ptr) {
      using bias_t = decltype(bias_tag);
      const bias_t* bp = static_cast<const bias_t*>(bias_ptr);
      at::parallel_for(0, t, grain, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r)
          epilogue_row<scalar_t, bias_t>(y + r * n, a + r * n, xs[r], ws, per_col, bp, n,
                                         portable);
      });
    };
    if (bias && bias->scalar_type() == at::kBFloat16)
      run(BFloat16{}, bias->data_ptr());
    else
      run(float{}, bias ? bias->data_ptr() : nullptr);
  });
}

// The whole layer in one call: quantize x, `at::_int_mm` (oneDNN's VNNI GEMM), epilogue. At a
// decode step's few rows the three Python-level calls and their tensors cost as much as the math.
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& w_t, const at::Tensor& w_scale,
                       const std::optional<at::Tensor>& bias, double qmax) {
  check_float_rows(x, "x");
  TORCH_CHECK(w_t.scalar_type() == at::kChar && w_t.dim() == 2 && w_t.size(0) == x.size(1),
              "w_t must be int8 [K, N] with K = x's ", x.size(1), " columns, got ",
              w_t.scalar_type(), " ", w_t.sizes());
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(at::kChar));
  at::Tensor x_scale = at::empty({x.size(0), 1}, x.options().dtype(at::kFloat));
  scaled_int8_quant(q, x_scale, x, qmax, false);
  const at::Tensor acc = at::_int_mm(q, w_t);
  at::Tensor y = at::empty({x.size(0), w_t.size(1)}, x.options());
  int8_scaled_mm_epilogue(y, acc, x_scale, w_scale, bias, false);
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vllm_mini_C, m) {
  m.def(
      "scaled_int8_quant(Tensor(a!) out, Tensor(b!) scale, Tensor input, float qmax=127.0, "
      "bool portable=False) "
      "-> ()");
  m.def(
      "int8_scaled_mm_epilogue(Tensor(a!) out, Tensor acc, Tensor x_scale, Tensor w_scale, "
      "Tensor? bias, bool portable=False) -> ()");
  m.def(
      "int8_linear(Tensor x, Tensor w_t, Tensor w_scale, Tensor? bias, float qmax=127.0) -> "
      "Tensor");
}

TORCH_LIBRARY_IMPL(vllm_mini_C, CPU, m) {
  m.impl("scaled_int8_quant", &scaled_int8_quant);
  m.impl("int8_scaled_mm_epilogue", &int8_scaled_mm_epilogue);
  m.impl("int8_linear", &int8_linear);
}
